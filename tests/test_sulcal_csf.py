"""CSF in the brain's folds (surf-6.9, ``sulcal_csf`` in stimsim/head/meshers/core.py): sulci narrower
than the surfaces can enter are meshed as CSF inside the brain's layers, so the grey-matter surface
encloses them and the CSF layer around the brain keeps its own thickness.  A "folded" phantom: nested
spheres whose grey matter (and the white matter under it) is cut by 2 mm slots of CSF; and one with
random sulci about 1.5 mm wide (:func:`random_folds`), whose walls get free vertices (surf-6.19)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("tetgen")
pytest.importorskip("skimage")

RADII_MM = {5: 55.0, 4: 50.0, 3: 45.0, 2: 42.0, 1: 35.0}  # scalp, bone, CSF, GM, WM: outer radius
SLOT_PLANES_MM = (-12.0, 0.0, 12.0)  # x = p and y = p, above z = -20 mm
SLOT_INNER_MM = 30.0  # the slots reach from the brain's surface down to this radius


def _nested_spheres(voxel_mm: float):
    """(labels, grid coordinates mm, radius mm, grid centre mm) of the spheres of RADII_MM."""
    n = int(2 * (RADII_MM[5] + 4) / voxel_mm)
    c = (n - 1) / 2 * voxel_mm
    g = np.stack(np.meshgrid(*[np.arange(n) * voxel_mm - c] * 3, indexing="ij"), -1)
    r = np.linalg.norm(g, axis=-1)
    vol = np.zeros(r.shape, np.int16)
    for tag in (5, 4, 3, 2, 1):
        vol[r <= RADII_MM[tag]] = tag
    return vol, g, r, c


def folded_brain(voxel_mm: float, width_mm: float = 2.0):
    """(labels, affine, slot mask, grid centre in mm) of the folded phantom."""
    vol, g, r, c = _nested_spheres(voxel_mm)
    slot = np.zeros(r.shape, bool)
    for ax in (0, 1):
        for p in SLOT_PLANES_MM:
            slot |= np.abs(g[..., ax] - p) < width_mm / 2
    slot &= (r > SLOT_INNER_MM) & (r <= RADII_MM[2]) & (g[..., 2] > -20)
    vol[slot] = 3
    return vol, np.diag([voxel_mm] * 3 + [1.0]), slot, np.full(3, c)


def _rays_clear_of_slots(n: int = 2000):
    """Directions whose rays cross the CSF layer (r 42-45 mm) at least 3 mm from every slot."""
    from stimsim.head.meshers.thickness import ray_directions

    d = ray_directions(n)
    ok = np.ones(len(d), bool)
    for r in np.linspace(SLOT_INNER_MM, RADII_MM[3], 16):
        p = d * r
        near = np.zeros(len(d), bool)
        for ax in (0, 1):
            for q in SLOT_PLANES_MM:
                near |= np.abs(p[:, ax] - q) < 3.0
        ok &= ~(near & (p[:, 2] > -23))
    return d[ok]


@pytest.mark.parametrize("voxel_mm,shift", [(1.0, 0), (0.5, 0), (0.5, 1)])
def test_the_folds_are_found_and_nothing_else(voxel_mm, shift):
    """``shift``: the grid cropped by that many voxels on every axis (a first version closed 0.5 mm
    labels in 2-voxel blocks: shifted by one voxel it found 42 % of the slots)."""
    import test_mesh_acceptance as acc

    from stimsim.head.meshers.core import sulcal_csf

    vol, _, slot, _ = folded_brain(voxel_mm)
    vol, slot = vol[shift:, shift:, shift:], slot[shift:, shift:, shift:]
    found = sulcal_csf(vol, [voxel_mm] * 3, 2.0)
    assert np.count_nonzero(found & slot) >= 0.9 * np.count_nonzero(slot)
    assert not np.any(found & ~slot)
    # a smooth (convex) brain has no folds: not one voxel
    ell, _, _ = acc.nested_ellipsoids(voxel_mm)
    assert not sulcal_csf(ell[shift:, shift:, shift:], [voxel_mm] * 3, 2.0).any()
    # a fissure wider than the closing's ball stays CSF around the brain, but for the concave corners
    # along its floor and where two cross (7 % of these 6 mm slots' voxels)
    wide, _, wslot, _ = folded_brain(voxel_mm, width_mm=6.0)
    assert np.count_nonzero(sulcal_csf(wide, [voxel_mm] * 3, 2.0) & wslot) < 0.1 * wslot.sum()


def test_lesion_voxels_and_the_volume_edge():
    """Voxels under a lesion are not sulcal CSF; a brain cut by the volume's edge gets no CSF added
    along the cut (the closing treats the outside as empty)."""
    from stimsim.head.meshers.core import sulcal_csf

    vol, _, slot, _ = folded_brain(1.0)
    lesion = np.zeros(vol.shape, bool)
    lesion[: vol.shape[0] // 2] = True
    found = sulcal_csf(vol, [1.0] * 3, 2.0, exclude=lesion)
    assert found.any() and not (found & lesion).any()
    # cut through the brain at z = 0 (half the grid): CSF against the cut face in a slab of the labels
    cut = vol[:, :, vol.shape[2] // 2:].copy()
    cut[:, :, :3][np.isin(cut[:, :, :3], (1, 2))] = 3  # brain at the face turned to CSF, between brain and edge
    found = sulcal_csf(cut, [1.0] * 3, 2.0)
    edge = np.zeros(cut.shape, bool)
    edge[:, :, :3] = True
    assert not (found & edge & ~slot[:, :, vol.shape[2] // 2:]).any()


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_folded_brain_keeps_the_csf_layer_and_every_volume(voxel_mm):
    """At the default element size (surfaces every 4 mm) the 2 mm slots are meshed as CSF inside the
    brain's layers: every tissue within 1 % of its voxel volume, the slots' voxels mostly CSF in the
    mesh, and the CSF layer around the brain as thick as the labels' along rays clear of the slots
    (without the folds' CSF the calibration puts their 21 mL into that layer: p50 +0.75, p90 +1.75
    mm, grey matter -2.2 %)."""
    from stimsim.head.meshers import make_head_mesh, tissue_connectivity
    from stimsim.head.meshers.thickness import ray_thickness
    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, slot, centre = folded_brain(voxel_mm)
    mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                return_info=True)
    assert info.mesher["sulcal_csf"]["radius_mm"] == pytest.approx(2.0)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n = np.bincount(vol.ravel(), minlength=6) * voxel_mm ** 3
    for tag in (1, 2, 3, 4, 5):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)
    # the shape bounds: at most a few exceptions, each listed with its place (issue 20 allows that;
    # the 0.5 mm phantom has had one tetrahedron at 4.1 deg)
    el = info.quality["elements"]
    assert el["poor_count"] <= 5 and len(el["poor"]) == el["poor_count"], el["poor_count"]
    assert all(len(e["at_mm"]) == 3 for e in el["poor"]), el["poor"][:1]
    # each tissue one piece: the folds' tetrahedra joined to the CSF around the brain, as the slots
    # are in the labels (chosen by their shares alone they broke into specks: Colin27's CSF in 325)
    assert all(c["pieces"] == 1 for c in tissue_connectivity(mesh).values()), tissue_connectivity(mesh)
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
    assert np.mean(on_grid[slot] == 3) > 0.5
    th = ray_thickness([vol, on_grid], affine, 3, (1, 2), (4, 5), centre, _rays_clear_of_slots())
    ok = np.isfinite(th).all(axis=0)
    assert ok.sum() > 200
    for q in (10, 50, 90):
        lab, msh = np.percentile(th[0, ok], q), np.percentile(th[1, ok], q)
        assert abs(msh - lab) <= 0.5, (q, lab, msh)


def test_a_lesion_in_a_fold_and_the_cache(tmp_path, monkeypatch):
    """A lesion (tag 11) over part of the slots keeps its tag and volume; the fold CSF elsewhere is
    still CSF; the cached mesh is the same mesh."""
    from stimsim.head.meshers import make_head_mesh

    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path))
    vol, affine, slot, _ = folded_brain(1.0)
    lesion = np.zeros(vol.shape, bool)
    i = np.argwhere(slot)
    centre = i[np.argmax(i[:, 2])]  # the top of a slot
    g = np.indices(vol.shape).transpose(1, 2, 3, 0)
    lesion[np.linalg.norm(g - centre, axis=-1) <= 6] = True
    kw = dict(method="surface", progress=False, lesion=lesion, lesion_tag=11, return_info=True)
    mesh, info = make_head_mesh(vol, affine, {i: i for i in range(6)}, **kw)
    les = mesh.volumes_mm3[mesh.tet_tags == 11].sum()
    assert abs(les / (np.count_nonzero(lesion & (vol > 0))) - 1) < 0.25
    assert info.mesher["sulcal_csf"]["voxel_mm3"] < np.count_nonzero(slot)
    csf = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=12)[3]
    assert abs(csf / np.count_nonzero((vol == 3) & ~lesion) - 1) < 0.01
    again, info2 = make_head_mesh(vol, affine, {i: i for i in range(6)}, **kw)
    assert info2.from_cache and np.array_equal(again.tet_tags, mesh.tet_tags)


def _brain_against_bone(voxel_mm: float, cap_deg: float = 35.0):
    """Nested spheres (RADII_MM, no folds) whose CSF is missing over a polar cap: there the grey
    matter reaches the bone, as over 10 % of Colin27's rays meet no CSF.  (labels, affine, centre)."""
    vol, g, r, c = _nested_spheres(voxel_mm)
    cap = g[..., 2] > r * np.cos(np.radians(cap_deg))
    vol[cap & (vol == 3)] = 2
    return vol, np.diag([voxel_mm] * 3 + [1.0]), np.full(3, c)


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_no_csf_sheet_where_the_brain_touches_the_bone(voxel_mm):
    """Nested layers keep the CSF at its minimum thickness (1 mm at the default size) where the labels
    have none; those tetrahedra take the tissue of their voxels (``_open_layer_gaps``): inside the cap
    (5 deg clear of its rim) at most a tenth of that sheet's volume is left, and every tissue is
    within 1 % of its voxels, the calibration allowing for them (without the re-tagging: 1.9 mL of
    CSF inside the cap, 1.3 times the sheet's estimate)."""
    from stimsim.head.meshers import make_head_mesh

    vol, affine, centre = _brain_against_bone(voxel_mm)
    mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                return_info=True)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    n = np.bincount(vol.ravel(), minlength=6) * voxel_mm ** 3
    for tag in (1, 2, 3, 4, 5):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)
    p = mesh.centroids - centre
    inner_cap = p[:, 2] > np.linalg.norm(p, axis=1) * np.cos(np.radians(30.0))
    sheet_mm3 = 2 * np.pi * (1 - np.cos(np.radians(30.0))) * RADII_MM[2] ** 2 * 1.0  # 1 mm over the cap
    left = mesh.volumes_mm3[inner_cap & (mesh.tet_tags == 3)].sum()
    assert left < 0.1 * sheet_mm3, (left, sheet_mm3)
    assert info.mesher["csf_gap_tets"] > 0


def test_a_csf_lesion_and_blood_in_the_folds():
    """A lesion tagged CSF (3) in the white matter, and one slot of blood (a sinus in a fissure): the
    lesion's tetrahedra are not the CSF layer's (counted so, they took the lesion's volume off the
    folds: CSF -8.9 %, grey matter +7.4 %), and the blood in the closing roams with the folds' CSF
    (enclosed by the grey-matter surface, only the CSF layer could take it: -31 % at 12 mm)."""
    from stimsim.head.meshers import make_head_mesh

    vol, affine, slot, centre = folded_brain(1.0)
    g = np.indices(vol.shape).transpose(1, 2, 3, 0) - centre
    blood = slot & (np.abs(g[..., 0] - SLOT_PLANES_MM[2]) < 1.0)
    vol[blood] = 9
    lesion = (np.linalg.norm(g - [0.0, 0.0, -10.0], axis=-1) <= 14.0) & (vol == 1)
    for h in (8.0, 12.0):
        mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=h, lesion=lesion,
                                    lesion_tag=3, progress=False, cache=False, return_info=True)
        assert info.mesher["sulcal_csf"]["blood_voxel_mm3"] > 0.9 * np.count_nonzero(blood)
        v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=10)
        n = np.bincount(vol.ravel(), minlength=10).astype(float)
        n[1] -= np.count_nonzero(lesion)
        n[3] += np.count_nonzero(lesion)
        for tag, tol in ((1, 0.02), (2, 0.02), (3, 0.02), (9, 0.05)):
            assert abs(v[tag] / n[tag] - 1) < tol, (h, tag, v[tag] / n[tag] - 1)


def random_folds(voxel_mm: float = 1.0, seed: int = 7):
    """(labels, affine, sulci) of nested spheres (scalp 5, bone 6 and CSF 2 mm thick under a 50 mm
    surface) whose grey matter is cut by sulci: sheets of CSF about 1.5 mm wide, where a smooth random
    field over the sphere (12 plane waves of 22 mm) is near zero, 12 mm deep; white matter more than
    3 mm below the brain's surface and 2.5 mm from any sulcus.  The grid is shifted off the centre."""
    from scipy import ndimage as ndi

    outer = 50.0
    n = int(np.ceil(2 * (outer + 4) / voxel_mm))
    c = (n - 1) / 2 * voxel_mm
    g = np.stack(np.meshgrid(*[np.arange(n) * voxel_mm - c] * 3, indexing="ij"), -1).reshape(-1, 3)
    g += [0.11, 0.27, -0.19]
    r = np.linalg.norm(g, axis=1)
    vol = np.zeros(len(g), np.uint8)
    for tag, depth in ((5, 0.0), (4, 5.0), (3, 11.0)):
        vol[r <= outer - depth] = tag
    brain = r <= outer - 13.0
    rng = np.random.default_rng(seed)
    u = g / np.maximum(r, 1e-9)[:, None] * outer
    f = np.zeros(len(g))
    for _ in range(12):
        k = rng.normal(size=3)
        f += np.cos(u @ (k * 2 * np.pi / 22.0 / np.linalg.norm(k)) + rng.uniform(0, 2 * np.pi))
    sulci = brain & (r > outer - 25.0) & (np.abs(f / np.sqrt(6.0)) < 0.25)
    vol[brain & ~sulci] = 2
    far = ndi.distance_transform_edt(~sulci.reshape(n, n, n), sampling=voxel_mm).ravel() > 2.5
    vol[(r <= outer - 16.0) & far] = 1
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -c
    return vol.reshape(n, n, n), affine, sulci.reshape(n, n, n)


def test_the_walls_of_narrow_folds_get_vertices():
    """Sulci about 1.5 mm wide, narrower than the 4 mm surface cells: with free vertices on their
    walls (surf-6.19) the tetrahedra follow them, and most of the folds' voxels are CSF in the mesh;
    without, the CSF took its volume in tetrahedra as wide as the cells, half of it on the grey
    matter beside the folds (the banks of a sulcus joined across it).  Every tissue within 1 % of its
    voxels, each one piece, the few tetrahedra below the shape bounds listed."""
    from stimsim.head.meshers import make_head_mesh, tissue_connectivity
    from stimsim.head.meshers.core import sulcal_csf
    from stimsim.mesh.voxelize import tet_values_on_grid

    vol, affine, _ = random_folds(1.0)
    fold = sulcal_csf(vol, [1.0] * 3, 2.0) & (vol == 3)
    assert fold.sum() > 20_000
    shares = {}
    for cell in (None, 0.0):  # the default, and without the vertices
        mesh, info = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                                    return_info=True,
                                    surface_options=None if cell is None else {"fold_point_cell": cell})
        on_grid = tet_values_on_grid(mesh, mesh.tet_tags, vol.shape, affine)
        shares[cell] = (np.mean(on_grid[fold] == 3), np.count_nonzero((on_grid == 3) & (vol == 2)) / fold.sum())
        if cell is None:
            assert info.mesher["fold_points"] > 1000
            v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
            n = np.bincount(vol.ravel(), minlength=6)
            for tag in (1, 2, 3, 4, 5):
                assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)
            assert all(c["pieces"] == 1 for c in tissue_connectivity(mesh).values())
            el = info.quality["elements"]
            assert el["poor_count"] <= 10 and len(el["poor"]) == el["poor_count"]  # (measured 0)
        else:
            assert "fold_points" not in info.mesher
    (with_in, with_out), (without_in, without_out) = shares[None], shares[0.0]
    assert with_in > 0.58 and with_out < 0.45, shares  # (measured 0.63 and 0.40)
    assert with_in - without_in > 0.1 and without_out - with_out > 0.1, shares  # (without: 0.45, 0.61)


def folded_field_errors(voxel_mm: float = 1.0, variants=None) -> dict:
    """The grey matter's E on :func:`random_folds` (+-1 mA point electrodes on top and on the side)
    against that of the labels' own voxel model (:func:`stimsim.mesh.voxelize.voxel_mesh`, six
    tetrahedra per voxel), each sampled at the grey-matter voxels' centres: {variant: (relative L2
    error, mean |E| ratio, tetrahedra, seconds to mesh)}.  ``variants``: {name: keywords of
    ``make_head_mesh``} (default: the mesher's default and without the folds' vertices).  The voxel
    model's own error: 5.7 % against its copy on 0.5 mm voxels, its mean |E| 2 % higher; on a
    labelled three-layer sphere its mean |E| is 10 % above the analytic one (the staircase), the
    surface mesh's 0.3 % below."""
    from stimsim.head.meshers import make_head_mesh
    from stimsim.protocol import validate_protocol
    from stimsim.simulation import simulate
    from stimsim.mesh.voxelize import tet_values_on_grid, voxel_mesh

    vol, affine, _ = random_folds(voxel_mm)
    variants = variants or {"default": {}, "no fold vertices": {"surface_options": {"fold_point_cell": 0.0}}}
    p = validate_protocol({"kind": "tdcs", "electrodes": [
        {"name": "a", "position": [0.0, 0.0, 50.0], "current_mA": 1.0},
        {"name": "c", "position": [47.5, 0.0, 15.5], "current_mA": -1.0}]})
    grey = vol == 2
    ref_mesh = voxel_mesh(vol, affine)
    ref = simulate(p, mesh=ref_mesh).E.reshape(6, -1, 3).mean(0)  # per voxel, in np.argwhere order
    del ref_mesh
    ref = ref[grey[vol > 0]]
    out = {}
    for name, opts in variants.items():
        t = time.perf_counter()
        mesh = make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                              **opts)
        t = time.perf_counter() - t
        e = simulate(p, mesh=mesh).E
        got = np.stack([tet_values_on_grid(mesh, e[:, k], vol.shape, affine)[grey] for k in range(3)], 1)
        err = float(np.sqrt(((got - ref) ** 2).sum() / (ref ** 2).sum()))
        ratio = float(np.linalg.norm(got, axis=1).mean() / np.linalg.norm(ref, axis=1).mean())
        out[name] = (err, ratio, mesh.n_tets, t)
    return out


@pytest.mark.slow
def test_vertices_on_the_folds_bring_the_field_closer_to_the_labels():
    """The grey matter's field against the labels' own voxel model (no analytic solution for folds):
    with the folds' vertices (surf-6.19) the error falls by at least a tenth (measured 0.332 -> 0.284;
    the voxel model itself is 5.7 % off its 0.5 mm copy)."""
    got = folded_field_errors(1.0)
    assert got["default"][0] < 0.9 * got["no fold vertices"][0], got


def test_fold_vertices_lie_on_the_folds_walls_one_per_cube():
    """``_interface_points`` with ``fold_tags``: vertices only on faces between a fold's stand-in and
    another tissue of the grey-matter layer (not where the fold meets the white matter, nor between
    grey matter and a lesion), one per cube whichever wall, every cube the walls cross given one; and
    none without ``fold_tags``."""
    from stimsim.head.meshers.surface import _interface_points

    n, spacing = 40, 3.0
    labels = np.full((n, n, n), 2, np.uint8)
    labels[:, :, :8] = 1  # white matter below
    labels[19, 4:36, 8:34] = 251  # a fold one voxel wide, down to the white matter
    labels[30:36, 30:36, 20:30] = 11  # a lesion in the grey matter
    pad, zooms = 3, np.ones(3)
    c = np.arange(-pad, n + pad) - (n - 1) / 2
    outer = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) - 100.0
    args = (labels, zooms, np.zeros(3), [outer], zooms, pad, spacing)
    assert len(_interface_points(*args, layers=())) == 0
    pts = _interface_points(*args, layers=(), fold_tags=[251], clearance=0.0)
    assert len(pts) > 20
    # each a face centre between the fold and grey matter (along x mostly; the fold's ends too)
    half = np.abs(pts - np.floor(pts) - 0.5) < 1e-9
    assert (half.sum(1) == 1).all()
    ax = np.argmax(half, axis=1)
    lo = np.rint(pts - 0.5 * half).astype(int)
    hi = lo + np.eye(3, dtype=int)[ax]
    pair = np.sort(np.stack([labels[tuple(lo.T)], labels[tuple(hi.T)]], 1), axis=1)
    assert (pair == [2, 251]).all(), np.unique(pair, axis=0)
    assert (ax == 0).mean() > 0.8
    cubes = [tuple(k) for k in np.floor(pts / spacing).astype(int)]
    assert len(set(cubes)) == len(cubes)  # one per cube, whichever wall
    # every column of cubes the fold's x walls cross (y, z) has a vertex, on one wall or the other
    walls = np.argwhere(labels[19] == 251)
    assert {(j, k) for _, j, k in cubes} >= {(int(j // spacing), int(k // spacing)) for j, k in walls}


def test_fold_vertices_keep_clear_of_the_folds_blood():
    """``avoid_tags`` (the folds' blood, 252): no fold vertex in a cube next to a face of it (vertices
    there broke a thin sheet of blood into pieces: a tester's 0.5 mm head 26 -> 169); without it some
    lie there.  And a spacing that is not a number of cells >= 0 is refused, naming the option."""
    from stimsim.head.meshers import make_head_mesh
    from stimsim.head.meshers.surface import _interface_points

    n, spacing = 40, 3.0
    labels = np.full((n, n, n), 2, np.uint8)
    labels[19, 4:36, 4:36] = 251
    labels[19, 4:12, 20:36] = 252  # blood in part of the fold
    pad, zooms = 3, np.ones(3)
    c = np.arange(-pad, n + pad) - (n - 1) / 2
    outer = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) - 100.0
    args = (labels, zooms, np.zeros(3), [outer], zooms, pad, spacing)
    kw = dict(layers=(), fold_tags=[251, 252], clearance=0.0)
    blood = np.argwhere(labels == 252)
    near = {tuple(q) for b in np.floor((blood + [[0.5, 0, 0]]) / spacing).astype(int)
            for q in b + np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)}
    near |= {tuple(q) for b in np.floor((blood - [[0.5, 0, 0]]) / spacing).astype(int)
             for q in b + np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)}
    cubes = lambda p: [tuple(k) for k in np.floor(p / spacing).astype(int)]  # noqa: E731
    free = _interface_points(*args, **kw)
    clear = _interface_points(*args, **kw, avoid_tags=[252])
    assert sum(k in near for k in cubes(free)) > 5
    assert not any(k in near for k in cubes(clear)) and len(clear) > 20
    vol, affine, _, _ = folded_brain(1.0)
    for bad in (-1.0, float("nan"), True, "3"):
        with pytest.raises(ValueError, match="fold_point_cell"):
            make_head_mesh(vol, affine, "simnibs", method="surface", progress=False, cache=False,
                           surface_options={"fold_point_cell": bad})


@pytest.mark.parametrize("centre_mm,radius_mm", [((0.0, 0.0, 35.0), 6.0), ((25.0, 0.0, 25.0), 7.0)])
def test_a_users_tissue_across_the_folds_is_meshed(centre_mm, radius_mm):
    """A user's tag (a tumour, a lesion drawn into the labels) over grey matter cut by narrow folds: its
    walls and the folds' get free vertices from two searches, which put some at the same points (a
    tester's 2 mL lesion on Colin27's cortex: 487 flat tetrahedra, the mesh refused; here 403-977).
    Every tissue within 1 % of its voxels, the tetrahedra within the shape bounds."""
    from stimsim.head.meshers import make_head_mesh

    vol, affine, sulci = random_folds(1.0)
    centre = np.linalg.solve(affine[:3, :3], np.asarray(centre_mm) - affine[:3, 3])
    ball = (np.linalg.norm(np.indices(vol.shape).transpose(1, 2, 3, 0) - centre, axis=-1) <= radius_mm) \
        & np.isin(vol, (1, 2))
    assert np.count_nonzero(ball & np.roll(sulci, 1, axis=0)) > 20  # the ball's walls meet the folds'
    vol[ball] = 11
    mesh, info = make_head_mesh(vol, affine, {t: t for t in range(12)}, method="surface", progress=False,
                                cache=False, return_info=True)
    assert info.mesher["fold_points"] > 1000 and info.mesher["user_tissue_points"] > 0
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=12)
    n = np.bincount(vol.ravel(), minlength=12)
    for tag in (1, 2, 3, 4, 5, 11):
        assert abs(v[tag] / n[tag] - 1) < 0.01, (tag, v[tag] / n[tag] - 1)
    assert info.quality["elements"]["poor_count"] <= 5  # (measured 0)
