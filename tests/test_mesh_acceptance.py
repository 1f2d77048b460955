"""The surface mesher on label volumes of known geometry (issue 20's acceptance set): nested ellipsoids
with 2-4 mm shells at 1 and 0.5 mm voxels, a skull with a hole (a craniectomy), and two pieces of one
tissue one voxel apart.  Volumes against the analytic ones, layer thicknesses against the voxel
model's, element shape bounds, pieces."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tetgen")
pytest.importorskip("skimage")

OUTER_MM = np.array([40.0, 34.0, 30.0])  # the scalp's semi-axes
SHELLS_MM = (3.0, 2.0, 2.5, 3.0)  # scalp, bone, CSF, GM thickness along the axes; WM inside
TAGS = (5, 4, 3, 2, 1)


def _grid(voxel_mm: float, pad: int = 4):
    n = (2 * OUTER_MM / voxel_mm).astype(int) + 2 * pad
    c = (n - 1) / 2 * voxel_mm
    return np.stack(np.meshgrid(*[np.arange(k) * voxel_mm - cc for k, cc in zip(n, c)], indexing="ij"), -1)


def nested_ellipsoids(voxel_mm: float):
    """SimNIBS tags on a grid centred on the ellipsoids; returns (labels, affine, analytic volume per tag)."""
    g = _grid(voxel_mm)
    vol = np.zeros(g.shape[:3], np.int16)
    axes, inner = OUTER_MM.copy(), {}
    for i, tag in enumerate(TAGS):
        if i:
            axes = axes - SHELLS_MM[i - 1]
        vol[((g / axes) ** 2).sum(-1) <= 1] = tag
        inner[tag] = 4 / 3 * np.pi * np.prod(axes)
    analytic = {t: inner[t] - (inner[TAGS[i + 1]] if i + 1 < len(TAGS) else 0.0) for i, t in enumerate(TAGS)}
    return vol, np.diag([voxel_mm] * 3 + [1.0]), analytic


def _mesh(vol, affine, h=4.0, surface_size_mm=None):
    from stimsim.head.meshers import make_head_mesh

    return make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=h, progress=False, cache=False,
                          return_info=True, surface_size_mm=surface_size_mm)


def _check_shapes(mesh):
    from stimsim.mesh.checks import element_quality

    e = element_quality(mesh)
    assert e["min_dihedral_deg"].min() >= 5.0 - 1e-9, int(np.sum(e["min_dihedral_deg"] < 5))
    assert e["radius_ratio"].min() >= 0.1 - 1e-9, int(np.sum(e["radius_ratio"] < 0.1))


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_nested_ellipsoids(voxel_mm):
    from stimsim.head.meshers import tissue_connectivity
    from stimsim.head.meshers.thickness import thickness_percentiles

    vol, affine, analytic = nested_ellipsoids(voxel_mm)
    mesh, info = _mesh(vol, affine)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / analytic[tag] - 1) < 0.01, (tag, v[tag] / analytic[tag] - 1)
    _check_shapes(mesh)
    conn = tissue_connectivity(mesh)
    assert all(conn[t]["pieces"] == 1 for t in TAGS), conn
    for inner_tag, tag, outer_tag in ((3, 4, 5), (2, 3, 4)):  # the skull and the CSF layer
        t = thickness_percentiles(mesh, vol, affine, tag, inner_tag, outer_tag)
        # the shells are 2 and 2.5 mm along the axes, thinner (down to ~1.6 mm) in between
        assert 1.0 < t["labels"][1] < 3.0, t
        for a, g, b in zip(t["mesh"], t["mesh_on_grid"], t["labels"]):
            assert abs(a - b) <= 0.5, (tag, t)
            assert abs(g - b) <= 0.5, (tag, t)  # the mesh's tags on the label grid, the same estimator
        assert abs(t["paired_on_grid"][1]) <= 0.5, (tag, t)  # and place by place


def _spheres(voxel_mm: float, shells_mm, wm_radius_mm: float = 62.0, offset_vox: float = 0.31):
    """Nested spheres (SimNIBS tags) around white matter of ``wm_radius_mm``, with ``shells_mm`` (scalp,
    bone, CSF, grey matter) outside it, their centre off the grid by ``offset_vox``; returns
    (labels, affine, analytic volume per tag)."""
    radii = np.cumsum([wm_radius_mm, *shells_mm[::-1]])[::-1]  # scalp's outer radius first
    n = int(np.ceil(2 * radii[0] / voxel_mm)) + 8
    g = (np.indices((n, n, n)) - (n - 1) / 2 + offset_vox) * voxel_mm
    r = np.sqrt((g ** 2).sum(0))
    vol = np.zeros((n, n, n), np.uint8)
    for tag, radius in zip(TAGS, radii):
        vol[r <= radius] = tag
    ball = 4 / 3 * np.pi * radii ** 3
    analytic = {t: ball[i] - (ball[i + 1] if i + 1 < len(TAGS) else 0.0) for i, t in enumerate(TAGS)}
    return vol, np.diag([voxel_mm] * 3 + [1.0]), analytic


@pytest.mark.parametrize("voxel_mm, shells", [(1.0, (2.0, 2.0, 2.0, 2.0)), (1.0, (1.5, 4.0, 2.0, 3.0)),
                                              (1.0, (3.0, 1.5, 2.0, 3.0)), pytest.param(
                                                  0.5, (2.0, 2.0, 2.0, 2.0), marks=pytest.mark.slow)])
def test_thin_shells_keep_their_volume_at_the_default_size(voxel_mm, shells):
    """Nested spheres whose scalp, bone or grey matter is thin everywhere (1.5-2 mm), at the default
    8 mm elements: within 1 % of their voxel volumes, and of the analytic ones for the 2 mm shells.
    The minimum layer thicknesses of the default size (2 mm of scalp, 1.5 of bone and grey matter)
    made the 2 mm shells' scalp +9.1 % and bone -4.6 %, the 1.5 mm scalp +45 %; they are now lowered
    for a layer that thin nearly everywhere (surface._thin_layer_floors)."""
    from stimsim.head.meshers import make_head_mesh, tissue_connectivity

    vol, affine, analytic = _spheres(voxel_mm, shells)
    mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                return_info=True)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / info.expected_volume_mm3[tag] - 1) < 0.01, (tag, v[tag] / info.expected_volume_mm3[tag] - 1)
        if min(shells) >= 2.0:
            assert abs(v[tag] / analytic[tag] - 1) < 0.01, (tag, v[tag] / analytic[tag] - 1)
    lowered = set(info.mesher["thin_layers"])  # (2 mm of CSF: above 1.25 x its 1 mm minimum)
    assert {k for k, t in zip((1, 2, 4), shells[:2] + shells[3:]) if t <= 2.0} <= lowered, lowered
    assert not lowered & {k for k, t in zip((1, 2, 3, 4), shells) if t >= 4.0 or k == 3}, lowered
    assert all(c["pieces"] == 1 for c in tissue_connectivity(mesh).values())
    _check_shapes(mesh)


@pytest.mark.parametrize("voxel_mm", [1.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_one_mm_layers_keep_their_volume_at_the_default_size(voxel_mm):
    """Scalp, bone, CSF and grey matter each 1 mm thick everywhere, at the default 8 mm elements:
    every tissue within 1 % of its analytic volume.  It was scalp +11.8 %, CSF +12.5 % (their minimum
    thickness stopped at 1 mm) and bone +3.6 % (the sliver pass thickened thin layers: the surfaces
    before it held the bone to 0.1 %).  Such layers leave tetrahedra below the shape bounds (flat
    across 1 mm under 4 mm surface triangles): under 0.5 % of them, each listed in the mesh's
    info."""
    from stimsim.head.meshers import make_head_mesh, tissue_connectivity
    from stimsim.mesh.checks import POOR_LISTED, element_quality

    vol, affine, analytic = _spheres(voxel_mm, (1.0, 1.0, 1.0, 1.0))
    mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                return_info=True)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / analytic[tag] - 1) < 0.01, (tag, v[tag] / analytic[tag] - 1)
    assert set(info.mesher["thin_layers"]) == {1, 2, 3, 4}
    slivers = info.mesher["slivers"]
    assert slivers["volume_left_mm3"] < 0.05 * slivers["volume_swept_mm3"], slivers
    assert all(c["pieces"] == 1 for c in tissue_connectivity(mesh).values())
    e = element_quality(mesh)
    poor = (e["min_dihedral_deg"] < 5.0) | (e["radius_ratio"] < 0.1)
    assert poor.sum() < 0.005 * mesh.n_tets
    el = info.quality["elements"]
    assert el["poor_count"] == int(poor.sum()) and len(el["poor"]) == min(int(poor.sum()), POOR_LISTED)


@pytest.mark.parametrize("missing", [(3,), (4, 5), (4,), (5,)])
def test_a_layer_the_labels_do_not_have_is_not_made(missing):
    """Labels without CSF (a four-tissue segmentation), a brain without skull and scalp, no skull, no
    scalp: the tissues there keep their volumes and the missing one does not appear.  Before, a missing
    layer was still kept a minimum thickness thick (CSF made of grey matter and bone: bone -12 %
    on Colin27), and without bone or scalp TetGen refused the crossing surfaces."""
    vol, affine, analytic = nested_ellipsoids(1.0)
    gone = set(missing)
    # CSF -> grey matter, bone -> scalp (background where the scalp is missing too), scalp -> background
    into = {3: 2, 4: 0 if 5 in gone else 5, 5: 0}
    for tag in gone:
        vol[vol == tag] = into[tag]
        if into[tag]:
            analytic[into[tag]] += analytic[tag]
        del analytic[tag]
    mesh, info = _mesh(vol, affine)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    assert not set(np.unique(mesh.tet_tags)) & gone, np.unique(mesh.tet_tags)
    for tag, want in analytic.items():
        assert abs(v[tag] / want - 1) < 0.02, (tag, v[tag] / want - 1)
    _check_shapes(mesh)


def test_thick_slices_are_split_before_the_surfaces_are_sampled():
    """1 x 1 x 2 mm voxels (a scan with thick slices): the surface mesher splits each voxel in two
    along z, so that the surfaces are sampled every 4 mm along every axis, not every 8 mm along z."""
    from stimsim.head.meshers import tissue_connectivity
    from stimsim.head.meshers.core import slice_split

    assert slice_split([1, 1, 2], 4).tolist() == [1, 1, 2] and slice_split([1, 1.2, 1], 4).tolist() == [1, 1, 1]
    # never finer than the finest axis (that would change the sampling step): 3.2 / 0.9 -> 3 voxels
    assert slice_split([0.9, 0.9, 3.2], 4).tolist() == [1, 1, 3] and slice_split([1, 1, 1.5], 4).tolist() == [1, 1, 1]
    # finer voxels are coarsened to a quarter of the sampling (1 mm here) anyway: split to that only
    assert slice_split([0.5, 0.5, 1.0], 8).tolist() == [1, 1, 1] and slice_split([0.5, 0.5, 2.0], 8).tolist() == [1, 1, 2]
    vol, affine, _ = nested_ellipsoids(1.0)
    thick = np.ascontiguousarray(vol[:, :, ::2])
    affine = affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    mesh, info = _mesh(thick, affine, h=8.0)  # the default size: surfaces every 4 mm
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        want = np.count_nonzero(thick == tag) * 2.0
        assert abs(v[tag] / want - 1) < 0.02, (tag, v[tag] / want - 1)
    _check_shapes(mesh)
    conn = tissue_connectivity(mesh)
    assert all(conn[t]["pieces"] == 1 for t in TAGS), conn
    # the mesh lies where the voxels are (the split keeps each voxel's centre)
    lo, hi = mesh.nodes.min(axis=0), mesh.nodes.max(axis=0)
    np.testing.assert_allclose((lo + hi) / 2, [(n - 1) / 2 * z for n, z in zip(thick.shape, (1, 1, 2))], atol=1.0)


def test_a_head_cut_by_the_field_of_view_is_reported(caplog):
    """Bone, CSF or brain on a face of the volume (the scan cut the head there) is named in the log and
    in the mesh's info by the world direction of that face; the inferior face (the neck) is not."""
    import logging

    from stimsim.head.meshers.core import cut_faces

    vol, affine, _ = nested_ellipsoids(1.0)
    assert cut_faces(vol, affine) == {}
    top = np.ascontiguousarray(vol[:, :, : vol.shape[2] // 2 + 10])  # cut 10 mm above the centre
    assert cut_faces(top, affine) == {"superior": [1, 2, 3, 4]}
    flipped = affine @ np.diag([1.0, -1.0, 1.0, 1.0])  # the same cut seen from a grid whose j runs posterior
    assert cut_faces(top, flipped) == {"superior": [1, 2, 3, 4]}
    assert cut_faces(np.ascontiguousarray(top[:, :, ::-1]), affine) == {}  # the same cut at the bottom: a neck
    scalp_only = vol.copy()
    scalp_only[:, :, -3:] = np.where(vol[:, :, -3:] > 0, 5, 0)
    scalp_only[:, :, -1] = 5  # scalp (a flat cut through it) alone is not reported
    assert cut_faces(scalp_only, affine) == {}
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        mesh, info = _mesh(top, affine, h=8.0)
    assert info.cut_faces == {"superior": [1, 2, 3, 4]}
    assert any("superior face" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("voxel_mm,fill,h", [(1.0, 5, 4.0), (0.5, 5, 4.0), (1.0, 3, 4.0), (0.5, 5, 8.0), (1.0, 5, 8.0)])
def test_skull_with_a_hole_keeps_the_hole(voxel_mm, fill, h):
    """A 12 mm craniectomy on top (bone -> scalp, or -> CSF: a fluid-filled defect): the hole stays
    open, the bone one piece and within 2 % of its voxel volume, the other tissues within 3 % (the
    nested layers alone put a 0.75 mm bone sheet across it).  At the default 8 mm on 0.5 mm voxels
    too (surf-6.16 left bone centred 1.4 mm inside the hole's rim there)."""
    from stimsim.head.meshers import tissue_connectivity

    vox = voxel_mm
    vol, affine, _ = nested_ellipsoids(vox)
    g = _grid(vox)
    hole = (np.hypot(g[..., 0], g[..., 1]) < 6.0) & (g[..., 2] > 0)
    vol[hole & (vol == 4)] = fill
    mesh, _ = _mesh(vol, affine, h=h)
    c = mesh.centroids - (np.array(vol.shape) - 1) / 2 * vox
    bone = mesh.tet_tags == 4
    assert not np.any(bone & (np.hypot(c[:, 0], c[:, 1]) < 5.0) & (c[:, 2] > 0)), "bone across the hole"
    assert tissue_connectivity(mesh)[4]["pieces"] == 1
    vv = np.bincount(vol.ravel(), minlength=6) * vox ** 3
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    assert abs(v[4] / vv[4] - 1) < 0.02
    for tag in (1, 2, 3, 5):
        assert abs(v[tag] / vv[tag] - 1) < 0.03, (tag, v[tag] / vv[tag] - 1)
    _check_shapes(mesh)


@pytest.mark.parametrize("voxel_mm,holes,radius_mm", [(1.0, 30, 3.5), (0.5, 60, 2.0)])
def test_a_skull_with_many_holes_keeps_every_tissue_volume(voxel_mm, holes, radius_mm):
    """A skull with tens of holes 4-7 mm across (bone -> scalp; 6-10 % of the bone) at the default
    8 mm: every tissue within 1 % of its voxels.  The volume calibration counts the sheet the defect
    rule re-tags by the share of each voxel it covers (surf-6.17): counted by voxel centres, with the
    one-voxel defect distance, the bone came out -1.5 % on 1 mm voxels."""
    vol, affine, _ = nested_ellipsoids(voxel_mm)
    g = _grid(voxel_mm)
    r2 = (g ** 2).sum(-1)
    rng = np.random.default_rng(3)
    for _ in range(holes):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        along = g @ u
        across2 = r2 - along ** 2  # squared distance from the hole's axis
        vol[(along > 0) & (across2 < radius_mm ** 2) & (vol == 4)] = 5
    mesh, _ = _mesh(vol, affine, h=8.0)
    vv = np.bincount(vol.ravel(), minlength=6) * voxel_mm ** 3
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / vv[tag] - 1) < 0.01, (tag, v[tag] / vv[tag] - 1)


@pytest.mark.parametrize("vox,h", [(1.0, 4.0), (1.0, 8.0), (0.5, 8.0)])
def test_csf_only_inside_the_brain_is_meshed_without_a_shell(caplog, vox, h):
    """Labels with a ventricle as CSF but no CSF around the brain (a segmentation that labels the
    ventricles only): said before meshing, and meshed as a tissue of the brain's layer.  No CSF
    shell around the brain (before: a shell of the layer's minimum thickness, CSF +839 %, which the
    volume check refused), the ventricle within 5 % of its voxels and in place, bone and the brain
    within 2 %."""
    import logging

    from stimsim.head.meshers.core import csf_inside_brain_only

    vol, affine, _ = nested_ellipsoids(vox)
    assert not csf_inside_brain_only(vol)
    vol[vol == 3] = 2
    assert not csf_inside_brain_only(vol)  # no CSF at all: nothing to say (it is meshed without)
    g = _grid(vox)
    ventricle = ((g / np.array([8.0, 5.0, 4.0])) ** 2).sum(-1) <= 1
    vol[ventricle] = 3  # in the white matter
    assert csf_inside_brain_only(vol)
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        mesh, info = _mesh(vol, affine, h=h)
    assert any("CSF lies only inside the brain" in r.getMessage() for r in caplog.records)
    vv = np.bincount(vol.ravel(), minlength=6) * vox ** 3
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    assert abs(v[3] / vv[3] - 1) < 0.05, v[3] / vv[3] - 1
    for tag in (1, 2, 4, 5):
        assert abs(v[tag] / vv[tag] - 1) < 0.02, (tag, v[tag] / vv[tag] - 1)
    c = mesh.centroids - (np.array(vol.shape) - 1) / 2 * vox
    csf = mesh.tet_tags == 3
    near = ((c / np.array([10.0, 7.0, 6.0])) ** 2).sum(-1) <= 1  # the ventricle and 2 mm around it
    assert mesh.volumes_mm3[csf & ~near].sum() < 0.02 * vv[3]
    _check_shapes(mesh)


def test_a_skull_defect_over_a_brain_without_csf():
    """A 36 mm craniectomy on labels without CSF: the sheet the nested layers put across it becomes
    grey matter inside the brain's voxels (not CSF), and the calibration counts it there (before: grey
    matter +0.52 %, twice what CSF gets with every layer present)."""
    vol, affine, _ = nested_ellipsoids(1.0)
    vol[vol == 3] = 2
    g = _grid(1.0)
    vol[(np.hypot(g[..., 0], g[..., 1]) < 18.0) & (g[..., 2] > 0) & (vol == 4)] = 5
    mesh, info = _mesh(vol, affine)
    assert info.mesher["bone_defect_tets"] > 0 and 3 not in mesh.tet_tags
    vv = np.bincount(vol.ravel(), minlength=6)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    assert abs(v[2] / vv[2] - 1) < 0.004, v[2] / vv[2] - 1
    for tag in (1, 4, 5):
        assert abs(v[tag] / vv[tag] - 1) < 0.02, (tag, v[tag] / vv[tag] - 1)


def _two_boxes(voxel_mm: float, gap_mm: float, angles_deg=(0.0, 0.0), inner_tag: int = 2):
    """Two 15 mm boxes of ``inner_tag`` (grey matter in CSF; white matter: in grey matter) ``gap_mm``
    apart, their common axis turned by ``angles_deg`` (about z, then y) against the voxel grid."""
    from scipy import ndimage as ndi

    n = int(round(56 / voxel_mm)) + 1
    g = (np.mgrid[:n, :n, :n] - (n - 1) / 2) * voxel_mm
    x, y, z = g
    a, b = np.radians(angles_deg)
    x, y = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    x, z = np.cos(b) * x + np.sin(b) * z, -np.sin(b) * x + np.cos(b) * z
    r = np.sqrt((g ** 2).sum(0))
    vol = np.zeros((n, n, n), np.int16)
    vol[r <= 27] = 5
    vol[r <= 24] = 4
    vol[r <= 22] = 3
    if inner_tag == 1:
        vol[(np.abs(x) < 19) & (np.abs(y) < 10) & (np.abs(z) < 10)] = 2
    box = (np.abs(y) < 7.5) & (np.abs(z) < 7.5)
    vol[box & (x < -gap_mm / 2) & (x > -gap_mm / 2 - 15)] = inner_tag
    vol[box & (x > gap_mm / 2) & (x < gap_mm / 2 + 15)] = inner_tag
    # the two pieces do not touch, not even at a corner
    assert ndi.label(vol == inner_tag, structure=np.ones((3, 3, 3)))[1] == 2
    return vol, np.diag([voxel_mm] * 3 + [1.0])


@pytest.mark.parametrize("voxel_mm,gap_mm,angles,h,inner_tag", [
    (1.0, 1.0, (0, 0), 3.0, 2), (1.0, 2.0, (0, 0), 3.0, 2), (1.0, 1.0, (0, 0), 8.0, 2),
    (1.0, 2.5, (30, 20), 8.0, 2), (0.5, 0.5, (0, 0), 8.0, 2), (0.5, 1.0, (30, 20), 8.0, 2),
    (0.5, 0.5, (0, 0), 4.0, 2), (1.0, 1.0, (0, 0), 4.0, 1)])
def test_pieces_a_voxel_or_two_apart_stay_apart(voxel_mm, gap_mm, angles, h, inner_tag):
    """Two grey-matter pieces with CSF between them (or two white-matter pieces in grey matter), one
    voxel and more apart, along the grid or oblique, at the default 8 mm elements (surfaces every 4 mm:
    no sample fell in a 1 mm gap, and marching cubes joined an oblique 2.5 mm one through a cube's
    diagonal): two pieces, not bridged; the tissue between them one piece; every tissue within 1 % of
    its voxel volume (the calibration gives back what widening the gap took from its banks).  The
    white-matter case at 4 mm: its 2.5 mm grey-matter cover is thinner than the 4 mm sub-grid of the
    default size, which cannot then give the white matter its volume back (-12 %)."""
    from stimsim.head.meshers import tissue_connectivity

    vol, affine = _two_boxes(voxel_mm, gap_mm, angles, inner_tag)
    mesh, _ = _mesh(vol, affine, h=h)
    conn = tissue_connectivity(mesh)
    assert conn[inner_tag]["pieces"] == 2, conn
    assert conn[inner_tag + 1]["pieces"] == 1, conn
    vv = np.bincount(vol.ravel(), minlength=6) * voxel_mm ** 3
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in np.flatnonzero(vv[1:]) + 1:
        # the two boxes (6.75 cm^3, a seventh of it carved at the gap and given back): 1.5 %
        assert abs(v[tag] / vv[tag] - 1) < (0.015 if tag == inner_tag else 0.01), (tag, v[tag] / vv[tag] - 1)
    # and each piece keeps its own volume (the calibration could give one's loss to the other)
    from scipy import ndimage as ndi

    lab, _ = ndi.label(vol == inner_tag, structure=np.ones((3, 3, 3)))
    centre = np.asarray(vol.shape, float) @ affine[:3, :3].T / 2 - 0.5 * np.diag(affine)[:3]
    side = (mesh.centroids - centre) @ _axis(angles) > 0
    for piece in (1, 2):
        ijk = np.argwhere(lab == piece) @ affine[:3, :3].T - centre
        voxel_side = bool(np.mean(ijk @ _axis(angles)) > 0)
        mesh_mm3 = float(mesh.volumes_mm3[(mesh.tet_tags == inner_tag) & (side == voxel_side)].sum())
        assert abs(mesh_mm3 / (len(ijk) * voxel_mm ** 3) - 1) < 0.03, (piece, mesh_mm3, len(ijk) * voxel_mm ** 3)


def _axis(angles_deg):
    """The boxes' common axis in the grid frame (the inverse of _two_boxes' rotation applied to x)."""
    a, b = np.radians(angles_deg)
    # x' = cos b (cos a x + sin a y) + sin b z
    return np.array([np.cos(b) * np.cos(a), np.cos(b) * np.sin(a), np.sin(b)])


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_thin_white_matter_fins_keep_their_volume(voxel_mm):
    """White matter as a core with 1.5 mm fins every 6 mm (gyri) at the default 8 mm element size
    (surfaces on a 4 mm sub-grid): every tissue within 3 % of its voxel volume.  The smoothed
    distance field is flatter than a distance across thin fins, so a volume calibration that takes
    the surface area for dV/dlevel overshoots (it gave white matter +114 % here)."""
    vol, affine, _ = nested_ellipsoids(voxel_mm)
    g = _grid(voxel_mm)
    core = ((g / np.array([14.0, 18.0, 12.0])) ** 2).sum(-1) <= 1
    fins = np.abs(((g[..., 0] + 3) % 6) - 3) < 0.75
    vol[(vol == 1) & ~(core | fins)] = 2
    mesh, _ = _mesh(vol, affine, h=8.0)
    vv = np.bincount(vol.ravel(), minlength=6) * voxel_mm ** 3
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / vv[tag] - 1) < 0.03, (tag, v[tag] / vv[tag] - 1)


@pytest.mark.parametrize("voxel_mm,h,shells", [(1.0, 4.0, (3, 1, 1, 3)), (1.0, 4.0, (3, 1, 2, 3)),
                                               (0.5, 4.0, (3, 1, 1, 3))])
def test_a_closed_skull_one_voxel_thick_stays_closed(voxel_mm, h, shells):
    """Bone one voxel (1 mm: two at 0.5 mm) thick under thin CSF (scalp, bone, CSF, GM shells in mm):
    the thickness rules push the bone sheet up to ~1.5 mm off the bone voxels, which must not read as
    a skull defect (no bone re-tagged, no scalp touching CSF or brain).  Bone thinner than the
    minimum thickness (0.75 mm, x2 at 8 mm elements) is thickened to it."""
    from stimsim.head.meshers.topology import tet_neighbors

    g = _grid(voxel_mm)
    vol = np.zeros(g.shape[:3], np.int16)
    axes = OUTER_MM.copy()
    for i, tag in enumerate(TAGS):
        if i:
            axes = axes - shells[i - 1]
        vol[((g / axes) ** 2).sum(-1) <= 1] = tag
    mesh, info = _mesh(vol, np.diag([voxel_mm] * 3 + [1.0]), h=h)
    assert info.mesher["bone_defect_tets"] == 0
    nb = tet_neighbors(mesh.tets)
    tt = mesh.tet_tags
    other = np.where(nb >= 0, tt[np.maximum(nb, 0)], 0)
    assert not np.any((tt[:, None] == 5) & np.isin(other, (1, 2, 3))), "scalp touches CSF or brain"


def test_surface_size_sets_the_surface_sampling():
    """``surface_size_mm`` is the spacing of the surfaces' sampling: at the same element size, 2 mm
    surfaces have about half the edge of the default 4 mm ones (h / 2), and the volumes stay right;
    values outside half a voxel .. twice the element size, or with the lattice mesher, are refused."""
    from stimsim.errors import MeshError
    from stimsim.head.meshers import make_head_mesh

    vol, affine, analytic = nested_ellipsoids(1.0)
    edges = {}
    for size in (None, 2.0):
        mesh, info = _mesh(vol, affine, h=8.0, surface_size_mm=size)
        assert info.mesher["surface_size_mm"] == (4.0 if size is None else size)
        v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
        for tag in TAGS:
            assert abs(v[tag] / analytic[tag] - 1) < 0.02, (size, tag, v[tag] / analytic[tag] - 1)
        f = mesh.boundary_faces  # the head's outer surface
        p = mesh.nodes[f]
        edges[size] = float(np.linalg.norm(p - np.roll(p, 1, axis=1), axis=2).mean())
    assert 0.6 * 4.0 < edges[None] < 1.4 * 4.0, edges
    assert 1.6 < edges[None] / edges[2.0] < 2.4, edges
    for bad in (0.2, 40.0, float("nan")):
        with pytest.raises(MeshError, match="surface_size_mm must lie between"):
            make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=8.0, surface_size_mm=bad,
                           progress=False, cache=False)
    with pytest.raises(MeshError, match="option of method='surface'"):
        make_head_mesh(vol, affine, "simnibs", method="lattice", surface_size_mm=4.0, progress=False, cache=False)


@pytest.mark.slow
def test_labelled_three_layer_sphere_as_accurate_as_gmsh_with_the_same_nodes():
    """Issue 20's acceptance set-up: the 85/90/95 mm sphere as 1 mm labels through the surface mesher, tDCS
    with point electrodes, relative L2 error of E in the inner ball against the analytic solution, at most
    that of the gmsh sphere with (within 5 %) the same number of nodes.  Both with sizes about uniform, as
    gmsh makes them: surfaces sampled at the element size (4 mm).  At the default grading (surfaces at
    half the element size, sizes growing inwards) the labelled sphere spends its nodes on the surfaces and
    is less accurate per node (5.6 against 3.4 %; docs/meshing.md)."""
    from stimsim.analytic import rel_l2, tdcs_sphere_efield
    from stimsim.mesh.sphere import make_sphere_mesh
    from stimsim.protocol import validate_protocol
    from stimsim.simulation import simulate

    radii, sigma = (85.0, 90.0, 95.0), (1.0, 0.01, 1.0)
    n = 2 * 99 + 1
    ax = np.arange(n) - 99.0
    r = np.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    vol = np.zeros((n, n, n), np.int16)
    for tag, radius in zip((5, 4, 3), radii[::-1]):
        vol[r <= radius] = tag
    affine = np.eye(4)
    affine[:3, 3] = -99.0
    labelled, _ = _mesh(vol, affine, h=4.0, surface_size_mm=4.0)
    cathode = 95 * np.array([-np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4)])
    protocol = validate_protocol({"kind": "tdcs", "conductivities": dict(zip((3, 4, 5), sigma)), "electrodes": [
        {"name": "a", "position": [95, 0, 0], "current_mA": 1.0},
        {"name": "c", "position": cathode.tolist(), "current_mA": -1.0}]})

    def error(mesh):
        res = simulate(protocol, mesh=mesh)
        sel = mesh.tet_tags == 3
        pts = mesh.centroids[sel]
        # a centroid just outside r = 85 (the labelled surface is not the exact sphere) is compared with
        # the inner ball's field, its own tissue's
        pts = pts * np.minimum(1.0, (radii[0] - 1e-6) / np.linalg.norm(pts, axis=1))[:, None]
        el = np.array([mesh.nodes[e.center_node] for e in res.electrodes])
        return rel_l2(res.E[sel], tdcs_sphere_efield(pts, el, [1e-3, -1e-3], list(radii), list(sigma)))

    size = 4.0
    for _ in range(4):
        reference = make_sphere_mesh(radii, element_size_mm=size)
        if abs(reference.n_nodes / labelled.n_nodes - 1) < 0.05:
            break
        size *= (reference.n_nodes / labelled.n_nodes) ** (1 / 3)
    assert abs(reference.n_nodes / labelled.n_nodes - 1) < 0.05
    e_label, e_gmsh = error(labelled), error(reference)
    assert 0.0 < e_gmsh < 0.06  # the reference set-up itself is sound
    assert e_label <= e_gmsh, (e_label, e_gmsh)


def test_air_cavities_in_the_skull_stay_holes_and_the_bone_keeps_its_volume():
    """Sinus-like air pockets (background enclosed by bone) are meshed as holes, and the bone around them
    keeps its voxel volume: the scalp's and bone's outer surfaces are calibrated to enclose the cavities
    too (without that the bone here came out short by the cavities' 3.7 % of its volume)."""
    n, c = 104, 51.5
    g = np.indices((n, n, n)).transpose(1, 2, 3, 0) - c
    r = np.linalg.norm(g, axis=-1)
    vol = np.zeros((n, n, n), np.int16)
    for tag, radius in ((5, 48.0), (4, 44.0), (3, 30.0), (2, 27.0), (1, 23.0)):
        vol[r <= radius] = tag
    # ten air balls of 6 mm radius in the middle of the 14 mm skull
    k = np.arange(10) + 0.5
    polar, azimuth = np.arccos(1 - 2 * k / 10), np.pi * (1 + 5 ** 0.5) * k
    centres = 37.0 * np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], 1)
    for p in centres:
        vol[np.linalg.norm(g - p, axis=-1) <= 6.0] = 0
    vv = np.bincount(vol.ravel(), minlength=6).astype(float)
    assert 0.03 < (vv[0] - np.count_nonzero(r > 48.0)) / vv[4] < 0.05  # the cavities: ~4 % of the bone
    mesh, _ = _mesh(vol, np.eye(4), h=4.0)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / vv[tag] - 1) < 0.03, (tag, v[tag] / vv[tag] - 1)
    cen = mesh.centroids - c
    assert np.linalg.norm(cen[:, None, :] - centres[None], axis=-1).min() > 3.0  # no tetrahedron inside a cavity


@pytest.mark.slow
def test_colin27_white_matter_split_at_the_midline_stays_two_pieces():
    """A real head: Colin27's white matter cut at the midline by one voxel of grey matter (the corpus
    callosum) is two pieces 1 mm apart; at the default 8 mm elements the mesh keeps them two (surf-6.1
    joined them), with every tissue within 3 % of its voxel volume."""
    import nibabel as nib

    from conftest import shared_file
    from stimsim.head import apply_label_map, label_map
    from stimsim.head.meshers import tissue_connectivity

    img = nib.load(str(shared_file("heads/colin27/labels.nii.gz")))
    tags = apply_label_map(np.asarray(img.dataobj), label_map("colin27"))
    x0 = int(round(np.linalg.inv(img.affine)[0, 3]))  # the voxel plane x = 0 mm
    sheet = tags[x0] == 1
    tags[x0][sheet] = 2
    from scipy import ndimage as ndi

    lab, _ = ndi.label(tags == 1, structure=np.ones((3, 3, 3)))
    assert np.count_nonzero(np.bincount(lab.ravel())[1:] >= 500) == 2  # two pieces (and a few specks)
    mesh, _ = _mesh(tags, img.affine, h=8.0)
    assert tissue_connectivity(mesh)[1]["pieces"] == 2
    vv = np.bincount(tags.ravel(), minlength=6)[1:6].astype(float)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)[1:6]
    assert np.all(np.abs(v / vv - 1) < 0.03), v / vv - 1


@pytest.mark.slow
def test_a_lesion_adds_few_tetrahedra_below_the_bounds():
    """A 54 mL subcortical lesion in Colin27 (grey and white matter within 24 mm of a point in the right
    hemisphere): its free vertices once sat 0.6 mm from 4 mm surface triangles and left flat
    tetrahedra (103 below the bounds, 35 without the lesion); kept a quarter of a surface cell away
    (surf-6.17) the lesion adds at most half as many again, and keeps its voxel volume within 2 %."""
    import nibabel as nib

    from conftest import shared_file
    from stimsim.head import apply_label_map, label_map
    from stimsim.head.meshers import make_head_mesh
    from stimsim.mesh.checks import element_quality

    img = nib.load(str(shared_file("heads/colin27/labels.nii.gz")))
    tags = apply_label_map(np.asarray(img.dataobj), label_map("colin27"))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in tags.shape], indexing="ij"), -1)
    xyz = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    lesion = (np.linalg.norm(xyz - np.array([25.0, -5.0, 10.0]), axis=-1) < 24.0) & np.isin(tags, (1, 2))
    assert lesion.sum() > 40_000

    def poor(mesh):
        e = element_quality(mesh)
        return int(np.sum((e["min_dihedral_deg"] < 5) | (e["radius_ratio"] < 0.1)))

    kw = dict(method="surface", element_size_mm=8.0, progress=False, cache=False)
    plain = make_head_mesh(tags, img.affine, "simnibs", **kw)
    mesh = make_head_mesh(tags, img.affine, "simnibs", lesion=lesion, lesion_tag=11, **kw)
    assert poor(mesh) <= 1.5 * poor(plain) + 5, (poor(mesh), poor(plain))
    v = mesh.volumes_mm3[mesh.tet_tags == 11].sum()
    assert abs(v / (lesion.sum() * abs(np.linalg.det(img.affine[:3, :3]))) - 1) < 0.02


@pytest.mark.slow
def test_fairing_folds_no_triangle_over():
    """Fairing (surf-6.3) moves vertices away from other surfaces, where the untangling does not look
    before TetGen: on a folded synthetic head (grey matter in 6 mm folds, surfaces every 2 mm) it made
    6 self-crossing triangles and a second TetGen run before folded triangles were undone.  Every faired
    surface must be free of self-crossings and of triangles turned further from the field's normal."""
    import stimsim.head.meshers.surface as surface

    n, radius = 133, 60.0
    g = (np.indices((n, n, n)).transpose(1, 2, 3, 0) - (n - 1) / 2).astype(float)
    r = np.linalg.norm(g, axis=-1) + 1e-9
    polar, azimuth = np.arccos(np.clip(g[..., 2] / r, -1, 1)), np.arctan2(g[..., 1], g[..., 0])
    vol = np.zeros((n, n, n), np.int16)
    for tag, rad in ((5, radius), (4, 55.0), (3, 50.0)):
        vol[r <= rad] = tag
    folds = 44 + 3 * np.sin(8 * polar) * np.sin(8 * azimuth) + 1.5 * np.cos(11 * azimuth)
    vol[r <= folds] = 2
    vol[r <= folds - 6] = 1
    faired = []
    fair = surface._fair_surface

    def recording(v, f, phi, free, zooms, pad, rounds, band_mm):
        out = fair(v, f, phi, free, zooms, pad, rounds, band_mm)
        faired.append((v, out, f, phi, zooms, pad))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(surface, "_fair_surface", recording)
        _, info = _mesh(vol, np.eye(4), h=8.0, surface_size_mm=2.0)
    assert len(faired) >= 4
    for before, after, f, phi, zooms, pad in faired:
        assert not len(surface.intersecting_triangles(after, f))
        worse = surface._facing(after, f, phi, zooms, pad) < np.minimum(0.5, surface._facing(before, f, phi, zooms, pad))
        assert not worse.any(), int(worse.sum())
    assert info.mesher["relax_vertices_put_back"] == 0 and not info.mesher.get("relax_fallback")


def test_thin_layer_floors_follow_the_layers_median():
    """surface._thin_layer_floors on exact signed distances of nested spheres: a layer thin everywhere
    gets 0.8 x its thickness (at least THIN_LAYER_FLOOR_MM), times the retry's
    scale and never above its floor; thick layers and layers that share a surface keep theirs; where
    the layer is missing (a defect) it does not count."""
    from stimsim.head.meshers.surface import THIN_LAYER_RATIO, _thin_layer_floors

    n = 90
    r = np.sqrt(((np.indices((n, n, n)) - (n - 1) / 2 + 0.3) ** 2).sum(0))
    radii = {1: 40.0, 2: 38.0, 3: 32.0, 4: 30.0, 5: 29.2}  # scalp 2 mm, bone 6, CSF 2, GM 0.8
    phis = {k: (r - radius).astype(np.float32) for k, radius in radii.items()}
    tk = {1: 2.0, 2: 1.5, 3: 1.0, 4: 1.5}
    out = _thin_layer_floors(phis, tk, set(), 1.0, (1.0, 1.0, 1.0))
    assert out[1] == pytest.approx(2.0 / THIN_LAYER_RATIO, abs=0.06)  # 2 mm of scalp: 1.6
    assert out[2] == 1.5 and out[3] == 1.0  # 6 mm of bone, 2 mm of CSF: kept
    assert out[4] == 0.75  # 0.8 mm of grey matter: 0.64 -> its scale-1 floor
    retry = _thin_layer_floors(phis, {k: 1.5 * v for k, v in tk.items()}, set(), 1.5, (1.0, 1.0, 1.0))
    assert retry[1] == pytest.approx(1.5 * out[1], rel=1e-6) and retry[4] == pytest.approx(1.125)
    assert _thin_layer_floors(phis, tk, {1, 4}, 1.0, (1.0, 1.0, 1.0)) == tk  # absent or shared
    # 1 mm of CSF everywhere: 0.8; 0.5 mm: its floor, 0.5 mm
    thin_csf = {**phis, 4: phis[3] + np.float32(1.0), 5: phis[3] + np.float32(1.8)}
    assert _thin_layer_floors(thin_csf, tk, set(), 1.0, (1.0, 1.0, 1.0))[3] == pytest.approx(0.8, abs=0.06)
    thinner = {**phis, 4: phis[3] + np.float32(0.5), 5: phis[3] + np.float32(1.3)}
    assert _thin_layer_floors(thinner, tk, set(), 1.0, (1.0, 1.0, 1.0))[3] == 0.5
    # half the scalp gone (the bone's surface there): still its 2 mm where it is
    holed = dict(phis)
    holed[1] = np.where(np.indices((n, n, n))[2] > n // 2, phis[2], phis[1])
    assert _thin_layer_floors(holed, tk, set(), 1.0, (1.0, 1.0, 1.0))[1] == pytest.approx(out[1], abs=0.06)


def test_work_on_two_threads_gives_what_one_thread_gives(monkeypatch):
    """The mesher's label and signed-distance steps run on two threads (topology.on_threads): the jobs
    share nothing, so a head meshed with them sequentially, in the calling thread, comes out the same
    node for node; and on_threads hands back each job's result under its key, raises a job's error,
    and on one core, or for a grid too large for a second thread's arrays, runs everything in the
    calling thread."""
    import threading

    from stimsim.head.meshers import core, surface, topology

    vol, affine, _ = _spheres(1.0, (2.0, 2.0, 2.0, 2.0), wm_radius_mm=28.0)
    c = vol.shape[0] // 2
    vol[c, c, c] = vol[c + 6, c, c] = 2  # grey-matter islands in the white matter
    vol[c, c + 6, c:c + 2] = 4  # and one of bone
    threaded, info = _mesh(vol, affine)
    assert info.islands_reassigned_voxels == {2: 2, 4: 2}
    ran_in = set()

    def one_thread(jobs, voxels=0):
        ran_in.add(threading.get_ident())
        return {key: fn(*args) for key, (fn, *args) in jobs.items()}

    monkeypatch.setattr(surface, "on_threads", one_thread)
    monkeypatch.setattr(core, "on_threads", one_thread)
    sequential, info = _mesh(vol, affine)
    assert ran_in == {threading.get_ident()} and info.islands_reassigned_voxels == {2: 2, 4: 2}
    np.testing.assert_array_equal(threaded.nodes, sequential.nodes)
    np.testing.assert_array_equal(threaded.tets, sequential.tets)
    np.testing.assert_array_equal(threaded.tet_tags, sequential.tet_tags)

    jobs = {k: (pow, k, 2) for k in range(7)}
    assert topology.on_threads(jobs) == {k: k * k for k in range(7)}
    with pytest.raises(ZeroDivisionError):
        topology.on_threads({"ok": (pow, 2, 2), "bad": (divmod, 1, 0)})
    seen = []
    topology.on_threads({k: (lambda: seen.append(threading.get_ident()),) for k in range(3)},
                        topology.THREADS_MAX_VOXELS + 1)  # a grid too large for a second thread's copies
    assert seen == [threading.get_ident()] * 3
    seen = []
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    topology.on_threads({k: (lambda: seen.append(threading.get_ident()),) for k in range(3)})
    assert seen == [threading.get_ident()] * 3


@pytest.mark.parametrize("shells, h", [((3.0, 0.75, 2.0, 2.0), None), ((3.0, 2.0, 2.0, 0.75), None),
                                       ((3.0, 0.5, 2.0, 2.0), None),
                                       pytest.param((3.0, 2.0, 0.5, 2.0), 4.0, marks=pytest.mark.slow)])
def test_sub_millimetre_layers_keep_their_volume(shells, h):
    """A layer thinner than a millimetre everywhere (one or one and a half 0.5 mm voxels): the floors
    of the thin layers' minimum thicknesses were those of 1 mm voxels (0.75 mm of bone), so a 0.75 mm
    skull came out +9.7 % at the default size and a 0.5 mm one +65 % at any element size, the check's
    advice (a smaller element size) included.  Now the floors scale with the voxels (0.75 mm layers
    keep their volume under the default 4 mm surface cells, and 0.5 mm ones at 4 mm elements), and a
    layer one voxel thick nearly everywhere gets surfaces every 4 voxels at the default size (under
    4 mm cells it came out +20 %)."""
    from stimsim.head.meshers import make_head_mesh, tissue_connectivity

    vol, affine, analytic = _spheres(0.5, shells, wm_radius_mm=36.0)
    mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=h, progress=False,
                                cache=False, return_info=True)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / info.expected_volume_mm3[tag] - 1) < 0.015, (tag, v[tag] / info.expected_volume_mm3[tag] - 1)
    assert all(c["pieces"] == 1 for c in tissue_connectivity(mesh).values())
    e = info.quality["elements"]
    assert e["poor_count"] < 0.002 * mesh.n_tets, e["poor_count"]
    one_voxel = [k for k, t in zip((1, 2, 3, 4), shells) if t <= 0.5]
    assert info.mesher.get("one_voxel_layers", []) == (one_voxel if h is None else []), info.mesher
    if one_voxel and h is None:
        assert info.mesher["surface_size_mm"] == 2.0


def test_thin_layer_floors_scale_with_the_voxels_and_one_voxel_layers_are_found():
    """The floors' scale is the voxel size within 0.5-1 mm; a layer is one voxel thick nearly everywhere
    on the synthetic shells, on none of Colin27's layers (its CSF: 12 % of its voxels touch bone and
    grey matter both), and on none after the voxels are split in eight."""
    from stimsim.head import apply_label_map, label_map
    from stimsim.head.meshers.core import one_voxel_layers
    from stimsim.head.meshers.surface import thin_layer_floor_scale

    assert [thin_layer_floor_scale(v) for v in (0.3, 0.5, 0.7, 1.0, 2.0, float("nan"))] == [0.5, 0.5, 0.7, 1.0, 1.0, 1.0]
    for shells, want in (((3.0, 0.5, 2.0, 2.0), [2]), ((0.5, 2.0, 2.0, 0.5), [1, 4]), ((3.0, 1.0, 2.0, 2.0), [])):
        vol, _, _ = _spheres(0.5, shells, wm_radius_mm=20.0)
        assert one_voxel_layers(vol) == want, shells
    import nibabel as nib

    from conftest import shared_file

    tags = apply_label_map(np.asarray(nib.load(str(shared_file("heads/colin27/labels.nii.gz"))).dataobj),
                           label_map("colin27"))
    assert one_voxel_layers(tags) == []
    vol, _, _ = _spheres(1.0, (1.0, 1.0, 1.0, 1.0), wm_radius_mm=20.0)
    assert one_voxel_layers(vol) == [1, 2, 3, 4]  # (on 1 mm voxels the default cells hold them: not used)


def test_a_large_head_with_a_one_voxel_layer_is_warned_not_refined(monkeypatch, caplog):
    """On a head of more labelled voxels than ONE_VOXEL_LAYER_MAX_VOXELS (a whole 0.5 mm head with 2 mm
    surfaces took 165 s and 4.2 GB) the surfaces keep the default sampling, and the log names the
    layer and the option that keeps its volume."""
    import logging

    import stimsim.head.meshers.core as core
    from stimsim.head.meshers import make_head_mesh

    monkeypatch.setattr(core, "ONE_VOXEL_LAYER_MAX_VOXELS", 1000)
    vol, affine, _ = _spheres(0.5, (3.0, 0.5, 2.0, 2.0), wm_radius_mm=36.0)
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                    return_info=True, check=False)
    assert "one_voxel_layers" not in info.mesher and info.mesher["surface_size_mm"] == 4.0
    assert any("bone" in r.getMessage() and "--surface-size 2" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("centre_mm, radius_mm", [(28.0, 16.5), (0.0, 6.2)])
def test_a_lesion_leaves_no_specks_of_the_tissue_around_it(centre_mm, radius_mm):
    """A lesion ball in the white matter (the labels' white matter around it one piece): the tetrahedra
    its staircase cut off the white matter, touching it only at edges or corners, were pieces of their
    own (an independent tester: 3 pieces around a 1 mL lesion, 21 around a 50 mL one); now such specks
    are lesion, and every tissue is one piece, the lesion within 1 % of its voxels."""
    from scipy import ndimage as ndi

    from stimsim.head.meshers import make_head_mesh, tissue_connectivity

    vol, affine, _ = _spheres(1.0, (3.0, 3.0, 2.0, 3.0), wm_radius_mm=45.0)
    g = (np.indices(vol.shape) - (np.array(vol.shape)[:, None, None, None] - 1) / 2 + 0.31) * 1.0
    lesion = np.sqrt((g[0] - centre_mm) ** 2 + g[1] ** 2 + g[2] ** 2) <= radius_mm
    assert ndi.label((vol == 1) & ~lesion, structure=np.ones((3, 3, 3)))[1] == 1
    mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", lesion=lesion, lesion_tag=11,
                                progress=False, cache=False, return_info=True)
    conn = tissue_connectivity(mesh)
    assert all(c["pieces"] == 1 for c in conn.values()), conn
    v = mesh.volumes_mm3[mesh.tet_tags == 11].sum()
    assert abs(v / info.expected_volume_mm3[11] - 1) < 0.01, v / info.expected_volume_mm3[11] - 1


def test_a_piece_the_labels_have_apart_is_not_taken_for_a_speck():
    """The lesion speck rule leaves alone a piece of tissue that the labels (outside the lesion) have
    apart from the tissue's main piece: spared white matter inside a lesion mask, a ventricle's horn."""
    from stimsim.head.meshers.surface import _own_label_piece

    tags = np.full((12, 12, 12), 2, np.uint8)  # grey matter around
    tags[1:6, 1:11, 1:11] = 1  # the white matter's main piece
    tags[9:11, 5:7, 5:7] = 1  # a small piece of its own
    lesion = np.zeros(tags.shape, bool)
    lesion[7:12, 3:9, 3:9] = True
    lesion[9:11, 5:7, 5:7] = False  # spared by the mask
    cen = np.array([[3.0, 5.0, 5.0], [9.6, 5.4, 5.5], [7.0, 4.0, 4.0]])  # in the main piece, the own one, the lesion
    own = _own_label_piece(np.arange(3), np.arange(3), 1, tags, lesion, cen, np.ones(3), 3)
    assert own.tolist() == [False, True, False]


def _head_spheres(voxel_mm: float = 1.0):
    """(labels, affine, grid mm) of nested spheres the size of a head: scalp 55, bone 50, CSF 45, grey
    matter 42, white matter 35 mm in radius (a skull of 141 mL)."""
    n = int(2 * 59 / voxel_mm)
    c = (n - 1) / 2 * voxel_mm
    g = np.stack(np.meshgrid(*[np.arange(n) * voxel_mm - c] * 3, indexing="ij"), -1)
    r = np.linalg.norm(g, axis=-1)
    vol = np.zeros(r.shape, np.uint8)
    for tag, radius in ((5, 55.0), (4, 50.0), (3, 45.0), (2, 42.0), (1, 35.0)):
        vol[r <= radius] = tag
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -c
    return vol, affine, g


@pytest.mark.parametrize("flap_mm,kerf_mm", [(10.0, 2.0), (8.5, 4.0), (6.5, 3.0)])
def test_a_bone_flap_cut_free_stays_bone(flap_mm, kerf_mm, caplog):
    """A replaced craniotomy flap: a disc of the skull cut free by a kerf of scalp, 1.1-1.6 mL, under
    2 % of the skull (a tester's 5.9 mL flap on Colin27, 1.2 %): it is its own piece of bone in the
    labels, not a speck, and stays bone (before: an island of the label clean-up and of the
    tetrahedra's pieces, made scalp and CSF: 3 % and 0 % of it bone, bone -1.2 and -0.8 %).  One
    under 1 mL (0.66 mL) still goes, with a warning naming it (before: in silence)."""
    import logging

    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(1.0)
    rho = np.hypot(g[..., 0], g[..., 1])
    flap = (vol == 4) & (rho <= flap_mm) & (g[..., 2] > 0)
    kerf = (vol == 4) & (rho > flap_mm) & (rho <= flap_mm + kerf_mm) & (g[..., 2] > 0)
    vol[kerf] = 5
    assert 500 < flap.sum() < 0.02 * np.count_nonzero(vol == 4)
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        mesh, info = _mesh(vol, affine, h=8.0)
    warned = [r.getMessage() for r in caplog.records if "apart from its main piece" in r.getMessage()]
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    if flap.sum() < 1000:
        assert len(warned) == 1 and "bone (tag 4)" in warned[0] and f"{flap.sum()} mm^3" in warned[0], warned
        return
    assert not warned, warned
    assert np.mean(on_grid[flap] == 4) > 0.8, np.mean(on_grid[flap] == 4)  # (measured 0.89-0.90)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n = np.bincount(vol.ravel(), minlength=6)
    for tag in (1, 2, 3, 4, 5):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)


def test_a_small_hole_and_a_kerf_through_the_skull_stay_open():
    """A 4 mm hole through a 5 mm skull (oblique to the grid) and a 3 mm kerf around a replaced flap,
    1 mm voxels, the default 8 mm elements: the mesh's bone covers under 40 % of the hole's voxels
    within 1 mm of its axis and under 25 % of the kerf's middle third (surf-6.22: 75 % and 31 %;
    measured 19 % and 19 %: the defect rule took the bone's normal over half a millimetre, which leans
    onto the hole's wall where the surfaces dip into it, and counted the voxels along the wall as
    bone); a 6 mm hole has no bone within 2 mm of its axis; every tissue within 1 % of its voxels."""
    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(1.0)
    r = np.linalg.norm(g, axis=-1)

    def along_across(u):
        u = np.asarray(u, float) / np.linalg.norm(u)
        along = g @ u
        return along, np.sqrt(np.maximum(r ** 2 - along ** 2, 0.0))

    along, across = along_across((0.0, 0.0, 1.0))
    hole6 = (vol == 4) & (along > 0) & (across < 3.0)
    core6 = hole6 & (across < 2.0)
    along, across = along_across((1.0, 0.3, 0.2))
    hole4 = (vol == 4) & (along > 0) & (across < 2.0)
    core4 = hole4 & (across < 1.0)
    along, across = along_across((0.2, 1.0, -0.5))
    kerf = (vol == 4) & (along > 0) & (across > 12.0) & (across <= 15.0)
    core_kerf = kerf & (across > 13.0) & (across <= 14.0)
    vol[hole6 | hole4 | kerf] = 5
    mesh, _ = _mesh(vol, affine, h=8.0)
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    assert np.mean(on_grid[core6] == 4) < 0.1, np.mean(on_grid[core6] == 4)
    assert np.mean(on_grid[core4] == 4) < 0.4, np.mean(on_grid[core4] == 4)
    assert np.mean(on_grid[core_kerf] == 4) < 0.25, np.mean(on_grid[core_kerf] == 4)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n = np.bincount(vol.ravel(), minlength=6)
    for tag in (1, 2, 3, 4, 5):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)
    _check_shapes(mesh)


@pytest.mark.parametrize("strand_y", [(-1.01, 1.01), (0.0, 1.0)])
def test_a_flap_held_by_a_thin_strand_of_bone_stays_joined_to_the_skull(strand_y):
    """A flap cut free by an 8 mm kerf but for a strand of bone 2 (or 1) voxels wide and 1 thick across
    it (a hinge; Colin27 scaled to 75 % has such strands at its skull base): the labels' bone is one
    piece (26-connected), and so is the mesh's, joined at the strand.  With surf-6.23's defect rule
    alone the tetrahedra across the strand, centred past its voxels' faces, were re-tagged scalp and
    the flap came apart (2 pieces); joined back through any re-tagged tetrahedra, the 1-voxel strand's
    chain closed the kerf 110 deg round from it (0.57 % of the kerf's middle more than 6 mm from the
    strand bone; measured 0.05 % with the chain drawn to the labels' bone)."""
    from scipy import ndimage as ndi

    from stimsim.head.meshers import tissue_connectivity
    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(1.0)
    r = np.linalg.norm(g, axis=-1)
    rho = np.hypot(g[..., 0], g[..., 1])
    kerf = (vol == 4) & (rho > 12.0) & (rho <= 20.0) & (g[..., 2] > 0)
    strand = (kerf & (g[..., 1] > strand_y[0]) & (g[..., 1] < strand_y[1]) & (g[..., 0] > 0)
              & (np.abs(r - 47.5) < 0.51))
    vol[kerf & ~strand] = 5
    assert ndi.label(vol == 4, np.ones((3, 3, 3)))[1] == 1
    mesh, info = _mesh(vol, affine, h=8.0)
    assert tissue_connectivity(mesh)[4]["pieces"] == 1, info.mesher.get("bone_rejoined_tets")
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    away = kerf & ~strand & (np.hypot(g[..., 0] - 16.0, g[..., 1]) > 6.0) & (rho > 14.0) & (rho < 18.0)
    assert np.mean(on_grid[away] == 4) < 0.002, np.mean(on_grid[away] == 4)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n = np.bincount(vol.ravel(), minlength=6)
    for tag in (1, 2, 3, 4, 5):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)


def test_a_large_piece_the_surfaces_cannot_keep_goes_to_the_tissue_around_it(caplog):
    """A 1.5 mL ball of bone inside the white matter: the nested surfaces have no bone there (the CSF's
    mask is filled), so the label clean-up gives it the white matter, as any island; kept as bone in
    the labels, the mesh had it half CSF (a shell the grey matter's surface made around it) and the
    skull's surfaces moved out to hold its volume.  It is warned about (a tester's bone fragments in
    the scalp went in silence)."""
    import logging

    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(1.0)
    ball = np.linalg.norm(g, axis=-1) <= 7.0
    vol[ball] = 4
    assert ball.sum() > 1000
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        mesh, info = _mesh(vol, affine, h=8.0)
    assert any("1 piece of bone (tag 4) apart from its main piece (1.47 mL)" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    assert np.mean(on_grid[ball] == 1) > 0.95
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    skull = np.count_nonzero((vol == 4) & ~ball)
    assert abs(v[4] / skull - 1) < 0.005, v[4] / skull - 1  # the skull holds its own volume only


@pytest.mark.parametrize("tag,radius_mm,volume_tol", [(9, 6.0, 0.03), (9, 8.0, 0.01), (9, 12.0, 0.01),
                                                      (3, 12.0, None)])
def test_a_ventricle_or_haemorrhage_in_the_white_matter_keeps_its_volume(tag, radius_mm, volume_tol):
    """A ball of CSF (a ventricle) or blood (a haemorrhage) inside the white matter: the grey matter's
    minimum thickness put a sheet of grey matter on its wall, half of it in the ball (blood -39 % and
    -24 % for 2.1 and 7.2 mL, 61 % and 76 % of its voxels in the mesh; a tester's 24 mL haemorrhage on
    Colin27 -5.9 %); that sheet now takes what the labels hold there, white matter or the ball's layer
    (95 % and 96 % of the voxels; no grey matter in the ball).  By the shares of its sample points, not
    its centre: the sheet is one tetrahedron thick, and by their centres the tetrahedra went whole to
    the ball (blood +7.4, +5.9 and +2.5 % for 0.9, 2.2 and 7.2 mL; then +1.8, +1.1 and +0.5 %).  And the
    ball's walls keep their own volume through the surfaces' relaxation (they grew 8-10 %; measured
    now -2.8, -0.9 and +0.3 %: under 1 mL, the few tetrahedra inside it decide)."""
    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(1.0)
    ball = np.linalg.norm(g - [0.0, 5.0, 3.0], axis=-1) <= radius_mm
    vol[ball] = tag
    mesh, info = _mesh(vol, affine, h=8.0)
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    assert np.mean(on_grid[ball] == tag) > 0.9, np.mean(on_grid[ball] == tag)
    assert np.count_nonzero(on_grid[ball] == 2) < 0.01 * ball.sum()
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=10)
    n = np.bincount(vol.ravel(), minlength=10)
    for t in (1, 2, 3, 4, 5):
        assert abs(v[t] / n[t] - 1) < 0.01, (t, v[t] / n[t] - 1)
    if volume_tol is not None:
        assert abs(v[tag] / n[tag] - 1) < volume_tol, v[tag] / n[tag] - 1


def test_a_small_piece_of_a_surface_keeps_its_own_volume_through_the_relaxation():
    """A surface of two pieces, a large sphere and a small one (a ventricle's wall) whose relaxation
    grew them by 1 % and 8 %: each gets back its own marching-cubes volume (one shift of the whole
    surface gave the small one almost nothing back)."""
    from skimage.measure import marching_cubes

    from stimsim.head.meshers.surface import _keep_enclosed_volume, _piece_volumes

    g = np.indices((90, 90, 90)).astype(float)
    phi = np.linalg.norm(g - 44.5, axis=0) - 35.0
    small = np.linalg.norm(g - np.array([10.2, 10.3, 79.6])[:, None, None, None], axis=0) - 5.0
    verts, faces = [], []
    for field in (phi, small):
        v, f, _, _ = marching_cubes(field, 0.0)
        faces.append(f + sum(len(x) for x in verts))
        verts.append(v)
    v_mc, f = np.concatenate(verts), np.concatenate(faces)
    piece = np.repeat([0, 1], [len(verts[0]), len(verts[1])])
    centres = np.array([[44.5] * 3, [10.2, 10.3, 79.6]])
    grown = centres[piece] + (v_mc - centres[piece]) * np.where(piece == 0, 1.01 ** (1 / 3), 1.08 ** (1 / 3))[:, None]
    want = _piece_volumes(v_mc, f, piece)
    assert abs(_piece_volumes(grown, f, piece)[1] / want[1] - 1.08) < 0.005  # (the set-up)
    kept = _piece_volumes(_keep_enclosed_volume(grown, f, v_mc, max_move=1.0), f, piece)
    assert np.allclose(kept, want, rtol=0.002), (kept, want)


@pytest.mark.parametrize("contact", ["edge", "corner"])
def test_small_boxes_touching_at_an_edge_or_a_corner_keep_their_volume(contact):
    """Two 12 mm boxes of grey matter in the CSF that share only a voxel edge or a corner, at the default
    size (surfaces every 4 mm, three cells across a box): within 0.5 % of their voxels (a tester's
    case: +1.5 % and +1.2 %; the relaxation grew them 7 % and the marching cubes' level kept off the
    sub-grid points 1.1 %, which the volume kept through the relaxation now gives back)."""
    n = 77
    idx = np.indices((n, n, n))
    r = np.sqrt((((idx - (n - 1) / 2)) ** 2).sum(0))
    vol = np.zeros((n, n, n), np.uint8)
    vol[r <= 36] = 5
    vol[r <= 33] = 4
    vol[r <= 30] = 3
    c, side = n // 2, 12
    i, j, k = idx
    a = (i >= c - side) & (i < c) & (j >= c - side) & (j < c) & (k >= c - side // 2) & (k < c + side // 2)
    z0 = c + side // 2 - (1 if contact == "edge" else 0)
    b = (i >= c) & (i < c + side) & (j >= c) & (j < c + side) & (k >= z0) & (k < z0 + side)
    vol[a | b] = 2
    mesh, _ = _mesh(vol, np.eye(4), h=8.0)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n_vox = np.bincount(vol.ravel(), minlength=6)
    for tag in (2, 3, 4, 5):
        assert abs(v[tag] / n_vox[tag] - 1) < 0.005, (tag, v[tag] / n_vox[tag] - 1)
    _check_shapes(mesh)


@pytest.mark.parametrize("tag,radius_mm", [(9, 6.0), (3, 8.0)])
def test_a_ball_the_labels_have_apart_from_the_csf_gets_no_channel_to_it(tag, radius_mm):
    """A 0.9 mL ball of blood or a 2.2 mL ball of CSF deep in the white matter that the labels have apart from the CSF
    around the brain: no CSF is carved from it through the white and grey matter (the ventricles' join
    made a 0.8 mL channel, 372 white-matter voxels 11-28 mm from the ball; CSF +0.9 %, white matter
    -0.4 %).  Ventricles the labels join to the CSF are still joined (test_sulcal_csf)."""
    import scipy.ndimage as ndi

    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(1.0)
    ball = np.linalg.norm(g - [0.0, 5.0, 3.0], axis=-1) <= radius_mm
    vol[ball] = tag
    mesh, info = _mesh(vol, affine, h=8.0)
    assert info.mesher["csf_channel_tets"] == 0
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    deep = (ndi.distance_transform_edt(vol == 1) > 3.0) & ~ndi.binary_dilation(ball, iterations=3)
    assert np.count_nonzero(deep & (on_grid == 3)) == 0


def test_a_ventricle_the_labels_join_to_the_csf_is_joined():
    """A 2.2 mL ball of CSF in the white matter that the labels join to the CSF around the brain by a
    channel one voxel wide (an aqueduct, which the 4 mm surfaces close) is joined in the mesh: the
    CSF one piece, through a chain of tetrahedra (the counterpart of the test above)."""
    from stimsim.head.meshers import tissue_connectivity

    vol, affine, g = _head_spheres(1.0)
    ball = np.linalg.norm(g - [0.0, 5.0, 3.0], axis=-1) <= 8.0
    c = np.round(np.array(vol.shape) / 2 - 0.5).astype(int)
    j, k = c[1] + 5, c[2] + 3
    channel = np.zeros(vol.shape, bool)
    channel[c[0]:, j, k] = True
    vol[(ball | channel) & (vol <= 2)] = 3
    mesh, info = _mesh(vol, affine, h=8.0)
    assert info.mesher["csf_channel_tets"] > 0
    assert tissue_connectivity(mesh)[3]["pieces"] == 1


@pytest.mark.parametrize("voxel_mm,lesion", [(1.0, False), (0.5, False), (1.0, True)])
def test_bone_apart_from_the_skull_outside_it_stays_bone(voxel_mm, lesion, caplog):
    """A piece of bone apart from the skull and outside it (a mandible, 1.4 mL, in a chin of scalp 8 mm
    below the skull, on its lower face) is meshed as bone inside the scalp's layer: as an island of the bone's layer it
    went to the scalp (a SAMSEG head's mandible, 3.7 and 3.5 mL, all scalp, bone -0.9 %).  The same on
    0.5 mm labels, meshed on a 1 mm copy, and with a lesion over half of it (the half left, 0.7 mL, is
    bone too: it was found on the lesioned labels, too small)."""
    import logging

    from stimsim.head.meshers import make_head_mesh
    from stimsim.mesh.voxelize import tet_values_on_grid

    n = int(round(132 / voxel_mm))
    c = (n - 1) / 2
    g = np.stack(np.meshgrid(*[(np.arange(n) - c) * voxel_mm] * 3, indexing="ij"), -1)
    r = np.linalg.norm(g, axis=-1)
    vol = np.zeros(r.shape, np.uint8)
    vol[r <= 55.0] = 5
    vol[(np.abs(g[..., 0]) <= 30) & (np.abs(g[..., 1]) <= 20) & (g[..., 2] >= -64) & (g[..., 2] <= -30)] = 5  # a chin
    for tag, radius in ((4, 50.0), (3, 45.0), (2, 42.0), (1, 35.0)):
        vol[r <= radius] = tag
    jaw = (np.abs(g[..., 0]) <= 15) & (np.abs(g[..., 1]) <= 4) & (g[..., 2] >= -64) & (g[..., 2] <= -58)
    vol[jaw] = 4
    # ... and a voxel of bone in the air joined to its lower corner (a piece in no layer: it crashed)
    corner = np.array(np.nonzero(jaw)).max(axis=1) + 1
    vol[tuple(corner)] = 4
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -c * voxel_mm
    drawn = jaw & (g[..., 0] > 0) if lesion else None
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                    return_info=True, lesion=drawn, lesion_tag=11)
    assert "apart from its main piece" not in caplog.text
    assert info.mesher.get("label_grid_factors") == (None if voxel_mm == 1.0 else [2, 2, 2])
    assert info.mesher["user_tissues"]["pieces_elsewhere"] == [[4, 1]]
    assert set(np.unique(mesh.tet_tags)) == {1, 2, 3, 4, 5} | ({11} if lesion else set())
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    bone = jaw & ~drawn if lesion else jaw
    assert np.mean(on_grid[bone] == 4) > 0.8, np.unique(on_grid[bone], return_counts=True)
    error = info.quality["volume_error_per_tag"]
    assert max(abs(error[t]) for t in range(1, 6)) < 0.01, error
    assert not lesion or abs(error[11]) < 0.05, error  # (0.7 mL drawn across the chin's face)


@pytest.mark.parametrize("strand", [True, False])
def test_bone_the_labels_join_to_the_skull_below_it_stays_joined(strand):
    """A column of bone in the neck (1.9 mL, to the field of view's edge) hanging 4 mm below the skull
    on a strand one voxel thick: the mesh's skull is one piece, as the labels' (a tester's cropped
    SAMSEG head: 2.7 mL of bone at the field of view's lower edge cut off; here 2 pieces before).
    Without the strand the column is a piece of its own, in the mesh too."""
    from stimsim.head.meshers.topology import face_components, tet_neighbors
    from stimsim.mesh.voxelize import tet_values_on_grid

    n = 150
    c = (n - 1) / 2
    g = np.stack(np.meshgrid(*[np.arange(n) - c] * 3, indexing="ij"), -1)
    r = np.linalg.norm(g, axis=-1)
    vol = np.zeros(r.shape, np.uint8)
    vol[r <= 55.0] = 5
    vol[(np.hypot(g[..., 0], g[..., 1] + 5) <= 30) & (g[..., 2] <= -20)] = 5  # a neck
    for tag, radius in ((4, 50.0), (3, 45.0), (2, 42.0), (1, 35.0)):
        vol[r <= radius] = tag
    column = (np.hypot(g[..., 0] - 12, g[..., 1] + 5) <= 5.5) & (g[..., 2] <= -54)
    vol[column] = 4
    if strand:
        vol[(np.abs(g[..., 0] - 12.5) < 0.5) & (np.abs(g[..., 1] + 4.5) < 0.5) & (g[..., 2] > -55) & (r > 49)] = 4
    affine = np.eye(4)
    affine[:3, 3] = -c
    mesh, info = _mesh(vol, affine, h=8.0)
    tt = np.asarray(mesh.tet_tags)
    idx, pieces, lab = face_components(tt == 4, tet_neighbors(np.asarray(mesh.tets)), tt)
    size = np.bincount(lab, weights=np.asarray(mesh.volumes_mm3)[idx])
    assert np.count_nonzero(size >= 500) == (1 if strand else 2), size
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    assert np.mean(on_grid[column] == 4) > 0.8
    assert abs(info.quality["volume_error_per_tag"][4]) < 0.01


def _brain_with_a_piece_apart(tag):
    """Nested spheres with a ventricle, two sulci and a 1.4 mL ball of ``tag`` in the grey matter, 3-4 mm
    from the white matter and the CSF; returns (labels, affine, ball mask, white matter's main piece)."""
    vol, affine, g = _head_spheres()
    r = np.linalg.norm(g, axis=-1)
    vol[r <= 57.0] = 5
    for t, radius in ((4, 55.0), (3, 52.0), (2, 49.0), (1, 28.0)):
        vol[r <= radius] = t
    vol[r <= 8.0] = 3  # a ventricle
    for axis in (0, 1):  # two sulci 2 mm wide, away from the piece: their CSF is meshed inside the brain's layers
        vol[(np.abs(g[..., axis]) < 1.0) & (g[..., 2] < -5.0) & (r > 34.0) & (r <= 52.0)] = 3
    ball = np.linalg.norm(g - np.array([0.0, 0.0, 38.0]), axis=-1) <= 7.0
    vol[ball] = tag
    return vol, affine, ball, (r <= 27.0) & (r >= 10.0)


@pytest.mark.parametrize("tag", [1, 3])
def test_a_piece_of_a_mL_or_more_inside_the_brain_is_kept(tag, caplog):
    """A piece of white matter (or CSF) the labels keep apart inside the grey matter, over 1 mL
    (:data:`~stimsim.head.meshers.topology.ISLAND_KEPT_MM3`) but under 2 % of the tissue's main piece,
    stays that tissue: the tissues-inside-a-layer step took it for a speck (a tester's Colin27 with
    its cerebellar white matter cut off by grey matter: 5 mL, all grey matter in the mesh, in silence)."""
    vol, affine, ball, main = _brain_with_a_piece_apart(tag)
    mesh, info = _mesh(vol, affine, h=8.0)
    assert set(info.mesher["sub_tissues"]["layers"]) == {4, 5}  # (the step that took the piece for a speck)
    from stimsim.mesh.voxelize import tet_values_on_grid

    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    kept = float(np.mean(on_grid[ball] == tag))
    assert kept > 0.6, kept  # before: 0
    assert np.mean(on_grid[main] == 1) > 0.95
    if tag == 1:  # (the CSF ball is the CSF meshed inside the brain, which is no island anyway)
        (piece,) = info.mesher["pieces_apart"]
        assert piece["tag"] == 1 and abs(piece["mm3"] - ball.sum()) < 1 and abs(piece["share"] - kept) < 0.05
    assert "apart from its main piece" not in caplog.text


def test_a_piece_apart_the_mesh_loses_is_warned_about(monkeypatch, caplog, tmp_path):
    """The safety net: a piece of 1 mL or more that the mesh gives another tissue is named, with its
    place (as the tissues-inside-a-layer step did before surf-6.24, in silence).  A later call that reads
    the mesh from the cache says it again, and has the same mesher's report (it had none, and said
    nothing)."""
    from stimsim.head.meshers import make_head_mesh, sub_tissues

    monkeypatch.setattr(sub_tissues, "ISLAND_KEPT_MM3", np.inf)  # the step as it was: every small piece a speck
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path))
    vol, affine, ball, _ = _brain_with_a_piece_apart(1)
    said = f"{ball.sum() / 1000:.3g} mL piece of white_matter (tag 1) apart from its main piece"
    infos = []
    for _ in range(2):
        caplog.clear()
        mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=8.0, progress=False,
                                    return_info=True)
        infos.append(info)
        (piece,) = info.mesher["pieces_apart"]
        assert piece["share"] < 0.1
        centre = affine[:3, :3] @ np.argwhere(ball).mean(0) + affine[:3, 3]
        assert np.allclose(piece["at_mm"], centre, atol=0.1)
        assert caplog.text.count(said) == 1, caplog.text
        assert any(said in w for w in info.mesher["warnings"])
    assert [i.from_cache for i in infos] == [False, True]
    fresh, cached = infos[0].mesher, infos[1].mesher
    assert cached.keys() == fresh.keys()
    assert cached["layer_min_thickness_mm"] == pytest.approx(fresh["layer_min_thickness_mm"])  # (int keys again)


def test_ventricles_the_labels_keep_apart_are_not_joined_through_the_folds():
    """The folds' CSF, grown from the CSF next to it, is cut where it would join two pieces of the
    CSF's layer that the labels keep apart (a tester's 0.5 mm heads: ventricles 2.5 mm from any other
    CSF joined to the CSF around the brain, 0.5 mL of grey and white matter made CSF)."""
    from stimsim.head.meshers.topology import face_components, tet_neighbors

    vol, affine, g = _head_spheres()
    r = np.linalg.norm(g, axis=-1)
    vol[r <= 57.0] = 5
    for t, radius in ((4, 55.0), (3, 52.0), (2, 49.0), (1, 40.0)):
        vol[r <= radius] = t
    ventricle = r <= 10.0
    vol[ventricle] = 3
    for axis in (0, 1):  # two sulci 2 mm wide, down to 2 mm from the ventricle (no voxel of either touches)
        vol[(np.abs(g[..., axis]) < 1.0) & (g[..., 2] > 0) & (r > 12.0) & (r <= 52.0)] = 3
    mesh, info = _mesh(vol, affine, h=8.0)
    assert set(info.mesher["sub_tissues"]["layers"]) == {4, 5}  # (the folds' CSF is meshed inside the brain)
    tags = np.asarray(mesh.tet_tags)
    idx, n, lab = face_components(tags == 3, tet_neighbors(np.asarray(mesh.tets)), tags)
    size = np.sort(np.bincount(lab, weights=np.asarray(mesh.volumes_mm3)[idx]))[::-1]
    assert n >= 2, size  # before: one piece
    assert 0.8 < size[1] / ventricle.sum() < 1.3, size
    assert abs(info.quality["volume_error_per_tag"][3]) < 0.03


@pytest.mark.parametrize("voxel_mm", [0.5, 0.7])
def test_a_skull_one_voxel_thick_in_places_keeps_its_thickness_there(voxel_mm):
    """Head spheres (5 mm skull) whose skull is one voxel thick over a cap 60 degrees across (a temporal
    squama on fine labels), at the default size: along rays through the cap the mesh's bone (its tags
    on the label grid) is within 0.5 mm of the labels' (issue 20), the rest of the skull keeps its
    5 mm, every tissue is within 1 % of its voxels, and at most a few tetrahedra are below the shape
    bounds, all listed.  Before the bone's local
    minimum (surface._local_floors) the cap came out at the bone's 1.5 mm minimum: 0.5 mm voxels
    1.55 mm thick at the median (measured 0.5 now), 0.7 mm voxels ~1.5."""
    from stimsim.head.meshers.thickness import ray_directions, ray_thickness
    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, g = _head_spheres(voxel_mm)
    r = np.linalg.norm(g, axis=-1)
    cap = g[..., 0] > np.cos(np.radians(30)) * r
    vol[cap & (vol == 4) & (r > 45.0 + voxel_mm)] = 5
    del g, r
    mesh, info = _mesh(vol, affine, h=8.0)
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    d = ray_directions(6000)
    angle = np.degrees(np.arccos(np.clip(d[:, 0], -1, 1)))
    labels, meshed = ray_thickness([vol, on_grid], affine, 4, (3, 2, 1), (5,), np.zeros(3), d, step_vox=0.1)
    for rays, mm in ((angle < 20, None), (angle > 45, 5.0)):
        lab, msh = np.nanmedian(labels[rays]), np.nanmedian(meshed[rays])
        assert abs(msh - lab) <= 0.5, (voxel_mm, lab, msh)
        if mm is not None:
            assert abs(lab - mm) <= voxel_mm, lab
    assert np.nanpercentile(meshed[angle < 20], 90) <= np.nanpercentile(labels[angle < 20], 90) + 0.75
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n = np.bincount(vol.ravel(), minlength=6) * voxel_mm ** 3
    for tag in (1, 2, 3, 4, 5):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)
    assert 2 in info.mesher["thin_in_places"]
    # the cap's rim, where the skull steps from 5 mm to one voxel between 4 mm surface triangles, may
    # leave a tetrahedron or two below the shape bounds (0.7 mm: one, radius ratio 0.096): listed
    el = info.quality["elements"]
    assert el["poor_count"] <= 3 and len(el["poor"]) == el["poor_count"], el["poor_count"]
