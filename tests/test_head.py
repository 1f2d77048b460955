"""Real heads: label maps, meshing a synthetic label volume, lesions, EEG positions, Colin27."""

from __future__ import annotations

import numpy as np
import pytest

from stimsim.errors import MeshError, ProtocolError
from stimsim.head.labels import LABEL_MAPS, apply_label_map, label_map, read_label_map
from synthetic_heads import nested_balls

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
    with pytest.raises(MeshError, match="bad.tsv:1: label map: unknown tissue 'brainz'") as err:
        read_label_map(bad)
    assert "conductivities" not in str(err.value)  # (the field of the protocols' tissue names, not this file's)


def test_apply_label_map_rejects_unknown_labels():
    vol = np.array([[[0, 1], [2, 7]]])
    with pytest.raises(MeshError, match="labels 7 occur"):
        apply_label_map(vol, LABEL_MAPS["colin27"])
    assert apply_label_map(np.array([[[0, 1], [2, 5]]]), LABEL_MAPS["colin27"]).tolist() == [[[0, 5], [4, 1]]]


# ---- synthetic nested spheres --------------------------------------------------------------------
def _spheres(n=44, radii=(20.0, 17.0, 15.0, 12.0, 8.0)):
    """Colin27-style labels: scalp 1, skull 2, CSF 3, GM 4, WM 5 as nested balls (1 mm voxels)."""
    return nested_balls(n, radii)


@pytest.fixture(scope="module")
def sphere_head(tmp_path_factory):
    import os

    os.environ["STIMSIM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from stimsim.head.meshers import make_head_mesh

    vol = _spheres()
    mesh, info = make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=1.5, progress=False,
                                return_info=True)
    return vol, mesh, info


def test_sphere_head_volumes_quality_connectivity(sphere_head):
    from stimsim.head.meshers import quality_summary
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
    from stimsim.head.meshers import make_head_mesh, quality_summary

    vol = _spheres()[:, :, 12:]
    mesh, info = make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=1.5, progress=False,
                                cache=False, return_info=True)
    q = quality_summary(mesh, info.voxel_volume_mm3)
    assert q["n_inverted"] == 0 and q["min_dihedral_deg"] > 1.0, q["min_dihedral_deg"]
    assert mesh.nodes[:, 2].min() > -1.0  # nothing below the cut
    for tag in (3, 4):
        assert q["connectivity"][tag]["pieces"] == 1, q["connectivity"]


def test_mesh_cache_and_world_frame(sphere_head, tmp_path):
    from stimsim.head.meshers import make_head_mesh

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


@pytest.mark.skipif(not __import__("stimsim.head.meshers.surface", fromlist=["available"]).available(),
                    reason="tetgen / scikit-image not installed")
def test_the_cache_tells_apart_heads_that_differ_only_under_a_lesion(tmp_path, monkeypatch):
    """The surface mesher builds its surfaces from the tissue under a lesion, so two heads the same but
    under the lesion are two meshes: the cache key held the tags with the lesion written in, and gave
    the second head the first one's mesh."""
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path))
    from stimsim.head.meshers import make_head_mesh

    vol = _spheres(56, (26.0, 23.0, 21.0, 18.0, 12.0))  # (colin27 map: 5 white matter ... 1 scalp)
    lesion = np.zeros(vol.shape, bool)
    lesion[27:34, 24:32, 24:32] = True  # white and grey matter
    other = vol.copy()
    other[lesion] = 4  # grey matter under all of it
    kw = {"method": "surface", "lesion": lesion, "lesion_tag": 11, "progress": False, "return_info": True}
    first, a = make_head_mesh(vol, np.eye(4), "colin27", **kw)
    second, b = make_head_mesh(other, np.eye(4), "colin27", **kw)
    assert not b.from_cache and a.cache_file != b.cache_file
    again, c = make_head_mesh(other, np.eye(4), "colin27", **kw)
    assert c.from_cache and c.cache_file == b.cache_file and again.n_tets == second.n_tets


def test_grey_matter_inside_the_white_matter_is_refused():
    """A label map with white and grey matter swapped: the head's outside nests, so the outer-surface test
    passed it, and the mesher gave the grey matter two pieces and the white matter -8 % (an independent
    tester).  Refused before meshing, naming the swap; the heads as labelled pass."""
    from stimsim.head.meshers import make_head_mesh

    vol = _spheres(40, (18.0, 16.0, 14.0, 12.0, 9.0))  # colin27 map: 4 grey matter, 5 white matter
    swapped = vol.copy()
    swapped[vol == 4], swapped[vol == 5] = 5, 4
    with pytest.raises(MeshError, match="grey matter lies inside the white matter.*swapped"):
        make_head_mesh(swapped, np.eye(4), "colin27", method="lattice", element_size_mm=2.0, progress=False, cache=False)
    make_head_mesh(vol, np.eye(4), "colin27", method="lattice", element_size_mm=2.0, progress=False, cache=False)
    # a brain of white matter only with a lesion (tag 11, brain for the layers) inside: not grey matter
    from stimsim.head.meshers.core import check_layers_nest

    tags = apply_label_map(vol, label_map("colin27"))
    tags[tags == 2] = 1
    tags[18:22, 18:22, 18:22] = 11
    check_layers_nest(tags, np.ones(3))


def test_lesion_changes_tags(sphere_head):
    from stimsim.head.meshers import make_head_mesh

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
    not __import__("stimsim.head.meshers.surface", fromlist=["available"]).available(),
    reason="tetgen / scikit-image not installed"))]


@pytest.mark.parametrize("method", _METHODS)
@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 10, 10), np.uint8), "no voxel maps"),
    (np.full((6, 6, 6), 0.5), "not integers"),
    (np.zeros((4, 4, 4, 2), np.uint8), "3-D volume"),
    (np.full((6, 6, 6), 9, np.uint8), "labels 9 occur"),
])
def test_bad_label_volumes(bad, match, method):
    from stimsim.head.meshers import make_head_mesh

    with pytest.raises(MeshError, match=match):
        make_head_mesh(bad, np.eye(4), "colin27", method=method, progress=False, cache=False)


@pytest.mark.parametrize("method", _METHODS)
def test_oblique_affine_meshed_as_rotated_sheared_and_lesion_grid_rejected(method):
    """Labels on a rotated (oblique) grid give the mesh of the same labels on an axis-aligned grid,
    rotated: the same tetrahedra and tags, nodes moved by the rotation.  A sheared grid, whose voxels
    are not boxes, and a lesion on another grid are refused."""
    from scipy.spatial.transform import Rotation

    from stimsim.head.meshers import make_head_mesh

    vol = _spheres(28, (12, 10, 8, 6.5, 4))
    zooms = np.array([1.1, 1.1, 1.3])  # not cubes either
    straight = np.diag([*zooms, 1.0])
    straight[:3, 3] = [-11.0, 4.0, 30.0]
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_rotvec([0.2, -0.35, 0.5]).as_matrix()
    turn[:3, 3] = [5.0, -2.0, 1.5]
    kw = {"method": method, "progress": False, "cache": False, "element_size_mm": 4.0 if method == "surface" else 2.0}
    ref = make_head_mesh(vol, straight, "colin27", **kw)
    for rot in (turn, turn @ np.diag([1.0, -1.0, 1.0, 1.0])):  # a rotation; with a reflection (det < 0)
        mesh = make_head_mesh(vol, rot @ straight, "colin27", **kw)
        assert mesh.n_tets == ref.n_tets and (mesh.signed_volumes_mm3 > 0).all()
        np.testing.assert_allclose(mesh.nodes, ref.nodes @ rot[:3, :3].T + rot[:3, 3], atol=1e-9)
        np.testing.assert_array_equal(np.sort(mesh.tets, axis=1), np.sort(ref.tets, axis=1))  # reoriented if det < 0
        np.testing.assert_array_equal(mesh.tet_tags, ref.tet_tags)
        np.testing.assert_allclose(mesh.signed_volumes_mm3, ref.signed_volumes_mm3, rtol=1e-9)
    shear = straight.copy()
    shear[0, 1] = 0.3
    with pytest.raises(MeshError, match="shears the voxel grid"):
        make_head_mesh(vol, shear, "colin27", **kw)
    broken = straight.copy()
    broken[1, 3] = np.nan  # a header's NaN: named as such (it read "got shape (4, 4)")
    with pytest.raises(MeshError, match="NaN or infinite"):
        make_head_mesh(vol, broken, "colin27", **kw)
    with pytest.raises(MeshError, match="grid"):
        make_head_mesh(vol, np.eye(4), "colin27", lesion=np.ones((5, 5, 5), bool), **kw)
    fuzzy = np.full(vol.shape, 0.5)  # a lesion probability map: the fix is a threshold
    with pytest.raises(MeshError, match="lesion: values are not 0 / 1.*threshold"):
        make_head_mesh(vol, straight, "colin27", lesion=fuzzy, **kw)


def test_mesh_command_writes_and_fails_cleanly(tmp_path, monkeypatch):
    nib = pytest.importorskip("nibabel")
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path / "cache"))
    from stimsim.cli.head import mesh_command
    from stimsim.mesh import read_mesh

    p = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(_spheres(24, (10, 9, 8, 6, 4)), np.eye(4)), str(p))
    out = tmp_path / "head.msh"
    # 1.5 mm: at 2 mm the lattice mesher loses 93 % of this 2 mm thick grey matter shell, which the
    # post-mesh volume check refuses (exit 2, tests/test_mesh_guards.py)
    assert mesh_command(p, "colin27", out, 1.5, None, progress=False, method="lattice") == 0
    mesh, _ = read_mesh(out)
    assert mesh.n_tets > 100
    assert mesh_command(p, "roast", tmp_path / "x.stl", 2.0, None, progress=False) == 2
    assert not (tmp_path / "x.stl").exists()
    assert mesh_command(p, "colin27", tmp_path / "y.msh", 2.0, None, progress=False, method="delaunay") == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cache", "head.msh", "head.summary.json", "labels.nii.gz"]  # no temp files
    # its own output is replaced (from the cache here), also after another format beside it shared the
    # summary; a file stimsim did not write is not, nor one changed since, nor one a summary of
    # another mesh lies beside
    kw = {"progress": False, "method": "lattice"}
    assert mesh_command(p, "colin27", out.with_suffix(".vtu"), 1.5, None, **kw) == 0
    assert mesh_command(p, "colin27", out, 1.5, None, **kw) == 0
    assert mesh_command(p, "colin27", out.with_suffix(".vtu"), 1.5, None, **kw) == 0
    with open(out, "a") as fh:  # edited since (a user's own changes)
        fh.write("$Comments\nmine\n$EndComments\n")
    assert mesh_command(p, "colin27", out, 1.5, None, **kw) == 2
    assert out.read_bytes().endswith(b"mine\n$EndComments\n")
    mine = tmp_path / "mine.msh"
    mine.write_text("my own data\n")
    assert mesh_command(p, "colin27", mine, 1.5, None, **kw) == 2
    assert mine.read_text() == "my own data\n" and not (tmp_path / "mine.summary.json").exists()
    (tmp_path / "head.summary.json").rename(tmp_path / "mine.summary.json")  # ours, but of head.msh
    assert mesh_command(p, "colin27", mine, 1.5, None, **kw) == 2
    assert mine.read_text() == "my own data\n"


# ---- `stimsim mesh --method surface` on a synthetic head ----------------------------------------
# Colin27-style labels (1 scalp, 2 skull, 3 CSF, 4 GM, 5 WM) as concentric balls of head-like
# thicknesses (scalp 6, skull 6, CSF 3, GM 4 mm, WM radius 39 mm) on an 80^3 grid of 1.5 mm voxels
# centred on the world origin.
_SYN_N, _SYN_VOXEL, _SYN_RADII = 80, 1.5, (58.0, 52.0, 46.0, 43.0, 39.0)
_ANODE_DIR = np.array([np.sin(0.6), 0.0, np.cos(0.6)])
_CATHODE_DIR = np.array([-np.sin(0.6), 0.0, np.cos(0.6)])
_LESION_CENTRE, _LESION_RADIUS = 41.0 * _ANODE_DIR, 7.0  # in the cortex under the anode


def _synthetic_head():
    """(labels, affine, world coordinates of the voxel centres)."""
    n, z = _SYN_N, _SYN_VOXEL
    aff = np.diag([z, z, z, 1.0])
    aff[:3, 3] = -(n - 1) / 2 * z
    xyz = np.moveaxis(np.mgrid[:n, :n, :n] * z + aff[:3, 3, None, None, None], 0, -1)
    r = np.linalg.norm(xyz, axis=-1)
    vol = np.zeros((n, n, n), np.uint8)
    for lab, rad in enumerate(_SYN_RADII, 1):
        vol[r <= rad] = lab
    return vol, aff, xyz


def _ball(xyz, centre, radius):
    return np.linalg.norm(xyz - np.asarray(centre), axis=-1) <= radius


class _SynthHead:
    """NIfTI files of the synthetic head and the meshes ``stimsim mesh`` makes of them (memoised)."""

    def __init__(self, folder):
        nib = pytest.importorskip("nibabel")
        self.folder = folder
        self.vol, self.affine, self.xyz = _synthetic_head()
        self.labels = folder / "labels.nii.gz"
        nib.save(nib.Nifti1Image(self.vol, self.affine), str(self.labels))
        # a stroke cavity: a ball in the cortex, clipped to the intracranial space (CSF, GM, WM)
        self.lesion = _ball(self.xyz, _LESION_CENTRE, _LESION_RADIUS) & (self.vol >= 3)
        self.lesion_file = folder / "lesion.nii.gz"
        nib.save(nib.Nifti1Image(self.lesion.astype(np.uint8), self.affine), str(self.lesion_file))
        self._meshes = {}

    def cli(self, *args):
        from typer.testing import CliRunner

        from stimsim.cli import app

        return CliRunner().invoke(app, ["mesh", str(self.labels), "--labels", "colin27", *map(str, args)])

    def mesh_file(self, h: float, lesion: bool = False):
        key = (h, lesion)
        if key not in self._meshes:
            out = self.folder / f"head_h{h:g}{'_lesion' if lesion else ''}.msh"
            extra = ["--lesion", self.lesion_file] if lesion else []
            res = self.cli("--out", out, "--method", "surface", "--element-size", h, *extra)
            assert res.exit_code == 0, res.output
            self._meshes[key] = (out, res.output)
        return self._meshes[key]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    pytest.importorskip("tetgen")
    pytest.importorskip("skimage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STIMSIM_CACHE", str(tmp_path_factory.mktemp("synth_cache")))
        yield _SynthHead(tmp_path_factory.mktemp("synth"))


def _tdcs(mesh_file):
    """1 mA tDCS, 20 mm discs on the scalp 0.6 rad either side of the vertex (anode over the lesion)."""
    from stimsim.protocol.models import TESProtocol
    from stimsim.simulation import simulate

    r = _SYN_RADII[0]
    protocol = TESProtocol.model_validate({
        "kind": "tdcs", "head": str(mesh_file),
        "electrodes": [
            {"name": "anode", "position": (r * _ANODE_DIR).tolist(), "current_mA": 1.0, "shape": "disc",
             "diameter_mm": 20},
            {"name": "cathode", "position": (r * _CATHODE_DIR).tolist(), "current_mA": -1.0, "shape": "disc",
             "diameter_mm": 20},
        ],
    })
    res = simulate(protocol)
    for name, want in (("anode", 1e-3), ("cathode", -1e-3)):
        assert abs(res.electrode_currents_A[name] / want - 1) < 1e-6
    return res


def _weighted_percentile(values, weights, q):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q / 100.0 * cum[-1])])


def _mean_magnE(res, select):
    """Volume-weighted mean |E| of the elements ``select(distance from the lesion centre)`` inside the
    skull (centroid within the CSF's outer radius; whatever their tag, which the lesion changes)."""
    cen = res.mesh.centroids
    k = select(np.linalg.norm(cen - _LESION_CENTRE, axis=1)) & (np.linalg.norm(cen, axis=1) < _SYN_RADII[2])
    v = res.mesh.volumes_mm3[k]
    return float((res.magnE[k] * v).sum() / v.sum())


def test_cli_mesh_surface_synthetic_head(synth):
    """`stimsim mesh --method surface`: every tissue, volumes within 5 % of the voxels, no inverted
    element, one face-connected piece per tissue, quality summary printed, no temp files."""
    from stimsim.head.meshers import quality_summary
    from stimsim.mesh import check_mesh, read_mesh

    out, output = synth.mesh_file(8.0)
    assert "method surface" in output and "tetrahedra; min dihedral" in output and "wrote" in output
    mesh, _ = read_mesh(out)
    check_mesh(mesh, known_tags={1, 2, 3, 4, 5})  # flat / inverted tets, one connected piece
    assert set(mesh.tissue_tags.tolist()) == {1, 2, 3, 4, 5}
    voxel = {t: float((synth.vol == lab).sum()) * _SYN_VOXEL ** 3
             for lab, t in ((1, 5), (2, 4), (3, 3), (4, 2), (5, 1))}
    q = quality_summary(mesh, voxel)
    assert q["n_inverted"] == 0 and (mesh.signed_volumes_mm3 > 0).all()
    for tag, err in q["volume_error_per_tag"].items():
        assert abs(err) < 0.05, (tag, q["volume_error_per_tag"])
    for tag, c in q["connectivity"].items():
        assert c["pieces"] == 1, (tag, q["connectivity"])
    assert not [f for f in synth.folder.iterdir() if ".tmp" in f.name]
    # bad lesion masks: a one-line error, nothing written
    nib = pytest.importorskip("nibabel")
    for name, img, match in (
            ("small.nii.gz", nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), synth.affine), "grid"),
            ("moved.nii.gz", nib.Nifti1Image(synth.lesion.astype(np.uint8), synth.affine @ np.diag([1, 1, 1.1, 1])),
             "affine differs")):
        nib.save(img, str(synth.folder / name))
        res = synth.cli("--out", synth.folder / "bad.msh", "--method", "surface", "--lesion", synth.folder / name)
        assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
    for size, match in (("0.1", "--surface-size must lie between"), ("inf", "--surface-size must be a positive size")):
        res = synth.cli("--out", synth.folder / "bad.msh", "--method", "surface", "--surface-size", size)
        assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
        assert res.output.count("error:") == 1
    assert not (synth.folder / "bad.msh").exists()


def test_mesh_method_auto_picks_surface(synth, monkeypatch, caplog):
    from stimsim.head.meshers import surface as surface_mesher
    from stimsim.head.meshers import resolve_method

    assert resolve_method("auto") == "surface"
    out, _ = synth.mesh_file(8.0)  # the same input through auto: the surface mesh, from the cache
    res = synth.cli("--out", synth.folder / "auto.msh", "--element-size", 8)
    assert res.exit_code == 0 and "method surface" in res.output and "from cache" in res.output, res.output
    assert (synth.folder / "auto.msh").read_bytes() == out.read_bytes()
    with pytest.raises(MeshError, match="method 'delaunay'"):
        resolve_method("delaunay")
    monkeypatch.setattr(surface_mesher, "available", lambda: False)
    with caplog.at_level("WARNING", logger="stimsim"):
        assert resolve_method("auto") == "lattice"
    assert "lattice mesher" in caplog.text and "CSF" in caplog.text  # names the accuracy trade-off
    with pytest.raises(MeshError, match="pip install tetgen"):
        resolve_method("surface")


def test_surface_mesh_convergence_tdcs(synth):
    """Two element sizes (8 mm: surfaces sampled every 3 voxels, 6 mm: every 2): the 99th
    percentile of |E| in grey matter agrees within 10 % (a mis-tagged or leaking layer, e.g. a
    hole in the skull or CSF, moves it by far more)."""
    p99 = []
    for h in (8.0, 6.0):
        res = _tdcs(synth.mesh_file(h)[0])
        gm = res.mesh.tet_tags == 2
        p99.append(_weighted_percentile(res.magnE[gm], res.mesh.volumes_mm3[gm], 99))
    assert 0.01 < p99[0] < 5.0
    assert abs(p99[1] / p99[0] - 1) < 0.10, p99


def test_surface_mesh_lesion_changes_field_locally(synth):
    """A CSF-filled cortical lesion (the --lesion mask, default tag 3 = CSF) under the anode."""
    from stimsim.mesh import read_mesh

    base = _tdcs(synth.mesh_file(8.0)[0])
    out, _ = synth.mesh_file(8.0, lesion=True)
    les = _tdcs(out)
    # the lesion is in the mesh: CSF grows by the lesion's former brain volume
    mesh, _ = read_mesh(out)
    csf = [m.volumes_mm3[m.tet_tags == 3].sum() for m in (base.mesh, mesh)]
    brain_lost = float((synth.lesion & (synth.vol >= 4)).sum()) * _SYN_VOXEL ** 3
    assert abs((csf[1] - csf[0]) / brain_lost - 1) < 0.10, (csf, brain_lost)
    # Near: in a ball of conductivity s_i in a medium s_o under a uniform field the field is
    # 3 s_o / (s_i + 2 s_o) of the unperturbed one: 0.37 for CSF (1.654 S/m) in GM (0.275), 0.19 in
    # WM (0.126).  About 3/4 of the mask was GM/WM, so the mean |E| over the mask should fall by
    # roughly half; the lesion is open to the outer CSF (not an isolated ball), so ask for a 15 %
    # drop only (the criterion is a measurable change, > 5 %).
    near = [_mean_magnE(r, lambda d: d <= _LESION_RADIUS) for r in (base, les)]
    assert near[1] < 0.85 * near[0], near
    # Far: outside, the ball adds a dipole field of at most (R/d)^3 = (7/40)^3 < 0.6 % of the field at
    # the lesion at d > 40 mm; the two meshes share their surfaces (the lesion only adds vertices
    # near it), so beyond that only discretisation noise differs: < 2 %.
    far = [_mean_magnE(r, lambda d: d > 40.0) for r in (base, les)]
    assert abs(far[1] / far[0] - 1) < 0.02, far


def test_surface_mesh_lesion_tags(synth):
    """--lesion-tag 11: the lesion keeps its own tag (a protocol sets its conductivity), with the
    mask's volume and place; a deep lesion with the default tag 3 stays a separate CSF piece (it is
    neither removed as an island nor joined to the outer CSF by a channel)."""
    from stimsim.head.meshers import make_head_mesh, quality_summary

    deep = _ball(synth.xyz, 20.0 * _ANODE_DIR, 5.0)
    kw = {"method": "surface", "element_size_mm": 8.0, "progress": False, "return_info": True}
    mesh, info = make_head_mesh(synth.vol, synth.affine, "colin27", lesion=synth.lesion, lesion_tag=11, **kw)
    assert set(mesh.tissue_tags.tolist()) == {1, 2, 3, 4, 5, 11}
    q = quality_summary(mesh, info.voxel_volume_mm3)
    assert all(abs(e) < 0.05 for e in q["volume_error_per_tag"].values()), q["volume_error_per_tag"]
    k = mesh.tet_tags == 11
    c = (mesh.centroids[k] * mesh.volumes_mm3[k, None]).sum(0) / mesh.volumes_mm3[k].sum()
    want = synth.xyz[synth.lesion].mean(0)
    assert np.linalg.norm(c - want) < _SYN_VOXEL, (c, want)

    mesh, info = make_head_mesh(synth.vol, synth.affine, "colin27", lesion=deep, **kw)
    q = quality_summary(mesh, info.voxel_volume_mm3)
    assert abs(q["volume_error_per_tag"][3]) < 0.05, q["volume_error_per_tag"]
    assert q["connectivity"][3]["pieces"] == 2, q["connectivity"]
    k = (mesh.tet_tags == 3) & (np.linalg.norm(mesh.centroids - 20.0 * _ANODE_DIR, axis=1) < 10.0)
    assert abs(mesh.volumes_mm3[k].sum() / (deep.sum() * _SYN_VOXEL ** 3) - 1) < 0.05


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
    from stimsim.head.meshers import make_head_mesh, quality_summary

    mesh, info = make_head_mesh(shared_data("heads/colin27/labels.nii.gz"), None, "colin27", method="lattice",
                                progress=False, return_info=True)
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


@pytest.mark.slow  # ~40 s on 2 cores
def test_colin27_surface_mesh_within_5_percent(shared_data, tmp_path, monkeypatch):
    """What `stimsim mesh` does by default (--method auto -> surface) meets issue 5 on Colin27."""
    pytest.importorskip("tetgen")
    pytest.importorskip("skimage")
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path))
    from stimsim.head.meshers import make_head_mesh, quality_summary

    mesh, info = make_head_mesh(shared_data("heads/colin27/labels.nii.gz"), None, "colin27", progress=False,
                                return_info=True)
    assert info.method == "surface"
    q = quality_summary(mesh, info.voxel_volume_mm3)
    assert set(mesh.tissue_tags.tolist()) == {1, 2, 3, 4, 5}
    assert q["n_inverted"] == 0 and mesh.n_tets <= 1_500_000
    assert all(abs(e) < 0.05 for e in q["volume_error_per_tag"].values()), q["volume_error_per_tag"]
    assert all(c["pieces"] == 1 for c in q["connectivity"].values()), q["connectivity"]


# ---- surface mesher (nested signed-distance surfaces + TetGen; optional dependencies) -----------
def test_surface_mesher_nested_spheres_tags_and_volumes():
    """Regions between the input surfaces get the tissue of their centroid majority: every layer
    present, volumes close to the voxel volumes, a cavity left out (the old hole seeds of
    tiny air pieces deleted the whole skull)."""
    pytest.importorskip("tetgen")
    pytest.importorskip("skimage")
    from stimsim.head.meshers import surface as sm
    from stimsim.head.meshers.core import air_cavities
    from stimsim.head.meshers.topology import signed_volumes

    vol = _spheres(n=48)
    tags = apply_label_map(vol, LABEL_MAPS["colin27"])
    tags[39:42, 22:25, 22:25] = 0  # a small air pocket in the skull band (r 15.5-17.5 mm)
    cav = air_cavities(tags)
    nodes, tets, ttags, info = sm.surface_mesh_from_tags(tags, cav, (1.0, 1.0, 1.0), 3.0, minratio=0,
                                                         surface_step=1, extra_switches="Y")
    v = signed_volumes(nodes, tets)
    assert set(np.unique(ttags).tolist()) == {1, 2, 3, 4, 5}
    assert (np.abs(v) > 0).all()
    for t, lab in ((5, 1), (4, 2), (3, 3), (2, 4), (1, 5)):
        vox = float((tags == t).sum())
        got = float(np.abs(v[ttags == t]).sum())
        assert abs(got / vox - 1) < 0.25, (t, got, vox)
