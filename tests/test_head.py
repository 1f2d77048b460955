"""Real heads: label maps, meshing a synthetic label volume, lesions, EEG positions, Colin27."""

from __future__ import annotations

import numpy as np
import pytest

from stimsim.errors import MeshError, ProtocolError, StimsimError
from stimsim.head.labels import LABEL_MAPS, apply_label_map, label_map, read_label_map

pytest.importorskip("scipy")


# ---- label maps ---------------------------------------------------------------------------------
def test_builtin_label_maps():
    assert label_map("colin27") == {0: 0, 1: 5, 2: 4, 3: 3, 4: 2, 5: 1, 6: 0}
    assert label_map("ROAST")[6] == 0 and label_map("roast")[5] == 5
    assert label_map("simnibs")[10] == 10
    with pytest.raises(MeshError, match="neither a built-in"):
        label_map("freesurfer-aseg")


def test_label_map_tsv(tmp_path):
    p = tmp_path / "map.tsv"
    p.write_text("label\ttissue\n0\tbackground\n1\tscalp\n2\t4\n7\tgray matter  # comment\n9\tair\n")
    assert read_label_map(p) == {0: 0, 1: 5, 2: 4, 7: 2, 9: 0}
    assert label_map(str(p)) == read_label_map(p)
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tbrainz\n")
    with pytest.raises(MeshError, match="bad.tsv:1"):
        read_label_map(bad)


def test_apply_label_map_rejects_unknown_labels():
    vol = np.array([[[0, 1], [2, 7]]])
    with pytest.raises(MeshError, match="labels 7 occur"):
        apply_label_map(vol, LABEL_MAPS["colin27"])
    assert apply_label_map(np.array([[[0, 1], [2, 5]]]), LABEL_MAPS["colin27"]).tolist() == [[[0, 5], [4, 1]]]


# ---- synthetic nested spheres --------------------------------------------------------------------
def _spheres(n=44, radii=(20.0, 17.0, 15.0, 12.0, 8.0)):
    """Colin27-style labels: scalp 1, skull 2, CSF 3, GM 4, WM 5 as nested balls (1 mm voxels)."""
    c = (n - 1) / 2
    x, y, z = np.mgrid[:n, :n, :n] - c
    r = np.sqrt(x * x + y * y + z * z)
    vol = np.zeros((n, n, n), np.uint8)
    for lab, rad in enumerate(radii, 1):
        vol[r <= rad] = lab
    return vol


@pytest.fixture(scope="module")
def sphere_head(tmp_path_factory):
    import os

    os.environ["STIMSIM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from stimsim.head.meshing import make_head_mesh

    vol = _spheres()
    mesh, info = make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=1.5, progress=False,
                                return_info=True)
    return vol, mesh, info


def test_sphere_head_volumes_quality_connectivity(sphere_head):
    from stimsim.head.meshing import quality_summary
    from stimsim.mesh import check_mesh

    vol, mesh, info = sphere_head
    assert set(mesh.tissue_tags.tolist()) == {1, 2, 3, 4, 5}
    q = quality_summary(mesh, info.voxel_volume_mm3)
    assert q["n_inverted"] == 0
    check_mesh(mesh, known_tags={1, 2, 3, 4, 5})
    for tag, err in q["volume_error_per_tag"].items():
        assert abs(err) < 0.05, (tag, err, q["volume_mm3_per_tag"], info.voxel_volume_mm3)
    for tag in (3, 4):  # CSF and skull are single shells
        assert q["connectivity"][tag]["pieces"] == 1, q["connectivity"]


def test_head_cut_at_volume_edge_has_no_hull_slivers():
    """A head touching the edge of the volume (Colin27 is cut at the neck): the lattice goes
    beyond the volume so Qhull's flat hull tets stay outside the tissue; before snapping every
    tet is a BCC tet, after it no tet is near-flat (near-flat slivers stalled AMG-CG)."""
    from stimsim.head.meshing import make_head_mesh, quality_summary

    vol = _spheres()[:, :, 12:]
    mesh, info = make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=1.5, progress=False,
                                cache=False, return_info=True)
    q = quality_summary(mesh, info.voxel_volume_mm3)
    assert q["n_inverted"] == 0 and q["min_dihedral_deg"] > 1.0, q["min_dihedral_deg"]
    assert mesh.nodes[:, 2].min() > -1.0  # nothing below the cut
    for tag in (3, 4):
        assert q["connectivity"][tag]["pieces"] == 1, q["connectivity"]


def test_mesh_cache_and_world_frame(sphere_head, tmp_path):
    from stimsim.head.meshing import make_head_mesh

    vol, mesh, info = sphere_head
    assert info.cache_file
    again = make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=1.5, progress=False)
    assert again.n_tets == mesh.n_tets and np.allclose(again.nodes, mesh.nodes)
    # a left-handed affine with an offset: same mesh mirrored, all tets still positive
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (10.0, -5.0, 3.0)
    flipped = make_head_mesh(vol, aff, "colin27", method="lattice", element_size_mm=1.5, progress=False,
                             cache=False)
    assert (flipped.signed_volumes_mm3 > 0).all()
    assert np.allclose(flipped.nodes[:, 1].mean(), mesh.nodes[:, 1].mean() - 5.0, atol=1e-6)


def test_lesion_changes_tags(sphere_head):
    from stimsim.head.meshing import make_head_mesh

    vol, mesh, _ = sphere_head
    lesion = np.zeros(vol.shape, bool)
    lesion[24:30, 18:26, 18:26] = True  # inside WM/GM
    les = make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=1.5, lesion=lesion,
                         lesion_tag=11, progress=False, cache=False)
    assert 11 in les.tissue_tags
    v11 = les.volumes_mm3[les.tet_tags == 11].sum()
    assert abs(v11 / lesion.sum() - 1) < 0.25
    c = les.centroids[les.tet_tags == 11].mean(0)
    assert np.allclose(c, [26.5, 21.5, 21.5], atol=1.5)


_METHODS = ["lattice", pytest.param("surface", marks=pytest.mark.skipif(
    not __import__("stimsim.head.surface_mesher", fromlist=["available"]).available(),
    reason="tetgen / scikit-image not installed"))]


@pytest.mark.parametrize("method", _METHODS)
@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 10, 10), np.uint8), "no voxel maps"),
    (np.full((6, 6, 6), 0.5), "not integers"),
    (np.zeros((4, 4, 4, 2), np.uint8), "3-D volume"),
    (np.full((6, 6, 6), 9, np.uint8), "labels 9 occur"),
])
def test_bad_label_volumes(bad, match, method):
    from stimsim.head.meshing import make_head_mesh

    with pytest.raises(MeshError, match=match):
        make_head_mesh(bad, np.eye(4), "colin27", method=method, progress=False, cache=False)


@pytest.mark.parametrize("method", _METHODS)
def test_oblique_affine_and_lesion_grid_rejected(method):
    from stimsim.head.meshing import make_head_mesh

    vol = _spheres(20, (8, 7, 6, 5, 3))
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    kw = {"method": method, "progress": False, "cache": False}
    with pytest.raises(MeshError, match="oblique"):
        make_head_mesh(vol, aff, "colin27", **kw)
    with pytest.raises(MeshError, match="grid"):
        make_head_mesh(vol, np.eye(4), "colin27", lesion=np.ones((5, 5, 5), bool), **kw)


def test_mesh_command_writes_and_fails_cleanly(tmp_path, monkeypatch):
    nib = pytest.importorskip("nibabel")
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path / "cache"))
    from stimsim.head.cli import mesh_command
    from stimsim.mesh import read_mesh

    p = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(_spheres(24, (10, 9, 8, 6, 4)), np.eye(4)), str(p))
    out = tmp_path / "head.msh"
    assert mesh_command(p, "colin27", out, 2.0, None, progress=False, method="lattice") == 0
    mesh, _ = read_mesh(out)
    assert mesh.n_tets > 100
    assert mesh_command(p, "roast", tmp_path / "x.stl", 2.0, None, progress=False) == 2
    assert not (tmp_path / "x.stl").exists()
    assert mesh_command(p, "colin27", tmp_path / "y.msh", 2.0, None, progress=False, method="delaunay") == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cache", "head.msh", "labels.nii.gz"]  # no temp files


# ---- EEG positions --------------------------------------------------------------------------------
def test_read_elc_tsv_csv(shared_data):
    from stimsim.head.eeg import read_positions

    elc = read_positions(shared_data("heads/colin27/electrodes_1005.elc"))
    tsv = read_positions(shared_data("heads/colin27/electrodes_1005_projected.tsv"))
    assert len(elc) == 346 and "C3" in elc and "LPA" in elc
    assert set(tsv) == set(elc)
    d = np.linalg.norm(elc["Cz"] - tsv["Cz"])
    assert d < 5.0
    csv = read_positions(shared_data("caps/EEG10-10_UI_Jurak_2007.csv"))
    assert np.allclose(csv["Fp1"], [-29.2999, 81.5619, -8.5504], atol=1e-3)


def test_eeg_position_lookup_and_suggestion(tmp_path):
    from stimsim.head.eeg import eeg_position

    table = {"C3": np.array([1.0, 2, 3]), "Fp2": np.array([4.0, 5, 6])}
    assert eeg_position("c3", positions=table).tolist() == [1, 2, 3]
    with pytest.raises(ProtocolError, match="Did you mean 'C3'"):
        eeg_position("C33", positions=table)
    with pytest.raises(ProtocolError, match="no electrode positions"):
        eeg_position("C3", head="sphere")


def test_project_to_scalp(sphere3_mesh):
    from stimsim.head.eeg import project_to_scalp

    p = project_to_scalp(sphere3_mesh, [[0, 0, 120.0], [50, 0, 0]])
    r = np.linalg.norm(p, axis=1)
    assert np.allclose(r, 95.0, atol=1.0)
    assert np.allclose(p[0, :2], 0, atol=3.0)


# ---- embedded Colin27 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colin27():
    from importlib import resources
    from pathlib import Path

    from stimsim.mesh import read_mesh

    path = Path(str(resources.files("stimsim") / "data" / "colin27.msh.gz"))
    if not path.exists():
        pytest.skip("embedded colin27 mesh not built (python meshes/build_colin27.py)")
    mesh, _ = read_mesh(path)
    return mesh


def test_embedded_colin27_tissues_and_positions(colin27):
    from stimsim.head.eeg import eeg_position, head_positions

    assert set(colin27.tissue_tags.tolist()) == {1, 2, 3, 4, 5}
    assert (colin27.signed_volumes_mm3 > 0).all()
    pos = head_positions("colin27")
    assert len(pos) == 346
    c3 = eeg_position("c3")
    nodes = colin27.nodes[colin27.boundary_nodes]
    assert np.min(np.linalg.norm(nodes - c3, axis=1)) < 5.0
    assert c3[0] < 0 and eeg_position("Fp2")[1] > 50


@pytest.mark.slow
def test_tdcs_on_colin27(colin27):
    from stimsim.head.eeg import eeg_position
    from stimsim.protocol import load_protocol  # noqa: F401  (the protocol models)
    from stimsim.protocol.models import TESProtocol
    from stimsim.simulation import simulate

    c3, fp2 = eeg_position("C3"), eeg_position("Fp2")
    protocol = TESProtocol.model_validate({
        "kind": "tdcs", "head": "sphere",
        "electrodes": [
            {"name": "anode", "position": c3.tolist(), "current_mA": 1.0, "shape": "point"},
            {"name": "cathode", "position": fp2.tolist(), "current_mA": -1.0, "shape": "point"},
        ],
    })
    res = simulate(protocol, mesh=colin27)
    assert np.isfinite(res.E).all() and np.isfinite(res.potential_V).all()
    for name, want in (("anode", 1e-3), ("cathode", -1e-3)):
        assert abs(res.electrode_currents_A[name] / want - 1) < 0.01
    gm = res.magnE[res.mesh.tet_tags == 2]
    assert 0.01 < np.percentile(gm, 99) < 5.0


@pytest.fixture(scope="module")
def colin27_default(shared_data, tmp_path_factory):
    import os

    os.environ["STIMSIM_CACHE"] = str(tmp_path_factory.mktemp("c27cache"))
    from stimsim.head.meshing import make_head_mesh, quality_summary

    mesh, info = make_head_mesh(shared_data("heads/colin27/labels.nii.gz"), None, "colin27", progress=False,
                                return_info=True)
    return mesh, quality_summary(mesh, info.voxel_volume_mm3)


@pytest.mark.slow  # ~70 s on 2 cores
def test_colin27_default_mesh(colin27_default):
    mesh, q = colin27_default
    assert set(mesh.tissue_tags.tolist()) == {1, 2, 3, 4, 5}
    assert q["n_inverted"] == 0 and mesh.n_tets <= 1_500_000
    assert q["min_dihedral_deg"] > 0.5
    assert q["connectivity"][3]["pieces"] == 1
    assert q["connectivity"][4]["largest_fraction"] > 0.999
    # what mesher bcc-2 achieves (CSF +29 %, GM -10 %): a regression guard, not the goal
    assert all(abs(e) < 0.35 for e in q["volume_error_per_tag"].values()), q["volume_error_per_tag"]


@pytest.mark.slow
@pytest.mark.xfail(reason="issue 5 goal not met yet: the CSF closing layer is one element thick where "
                          "Colin27 grey matter touches the skull (CSF +29 %, GM -10 % at h 3.2)", strict=False)
def test_colin27_volumes_within_5_percent(colin27_default):
    _, q = colin27_default
    assert all(abs(e) < 0.05 for e in q["volume_error_per_tag"].values()), q["volume_error_per_tag"]


def test_errors_are_stimsim_errors():
    assert issubclass(MeshError, StimsimError)


# ---- surface mesher (nested signed-distance surfaces + TetGen; optional dependencies) -----------
def test_surface_mesher_nested_spheres_tags_and_volumes():
    """Regions between the input surfaces get the tissue of their centroid majority: every layer
    present, volumes close to the voxel volumes, a cavity left out (the old hole seeds of
    tiny air pieces deleted the whole skull)."""
    pytest.importorskip("tetgen")
    pytest.importorskip("skimage")
    from stimsim.head import surface_mesher as sm
    from stimsim.head.meshing import _cavities, _signed_volumes

    vol = _spheres(n=48)
    tags = apply_label_map(vol, LABEL_MAPS["colin27"])
    tags[39:42, 22:25, 22:25] = 0  # a small air pocket in the skull band (r 15.5-17.5 mm)
    cav = _cavities(tags)
    nodes, tets, ttags, info = sm.surface_mesh_from_tags(tags, cav, (1.0, 1.0, 1.0), 3.0, minratio=0,
                                                         surface_step=1, extra_switches="Y")
    v = _signed_volumes(nodes, tets)
    assert set(np.unique(ttags).tolist()) == {1, 2, 3, 4, 5}
    assert (np.abs(v) > 0).all()
    for t, lab in ((5, 1), (4, 2), (3, 3), (2, 4), (1, 5)):
        vox = float((tags == t).sum())
        got = float(np.abs(v[ttags == t]).sum())
        assert abs(got / vox - 1) < 0.25, (t, got, vox)
