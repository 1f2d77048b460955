"""Layer thickness along rays (stimsim.head.meshers.thickness.ray_thickness) against analytic shells."""

import numpy as np
import pytest

from stimsim.head.meshers.thickness import ray_directions, ray_thickness, ray_thickness_summary


def _shells(voxel_mm: float, outer_shift_mm: float = 0.0):
    """Brain (tag 2) r < 40, CSF to 43, bone to 48 (its outer sphere moved by ``outer_shift_mm`` along
    +x), scalp to 55 (mm), on a grid whose voxel centres do not fall on the spheres' centre."""
    n = int(round(130 / voxel_mm))
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -65.0 + 0.37 * voxel_mm
    x, y, z = (np.arange(n, dtype=np.float32) * voxel_mm + np.float32(affine[0, 3]) for _ in range(3))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    r2 = x * x + y * y + z * z
    tags = np.zeros((n, n, n), np.int8)
    tags[r2 < 55 ** 2] = 5
    tags[(x - outer_shift_mm) ** 2 + y * y + z * z < 48 ** 2] = 4
    tags[r2 < 43 ** 2] = 3
    tags[r2 < 40 ** 2] = 2
    return tags, affine


def _exit_distance(d: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Distance along unit rays ``d`` from ``centre`` to a sphere of ``radius`` about the origin (centre inside)."""
    b = d @ centre
    return -b + np.sqrt(b * b - (centre @ centre - radius ** 2))


def test_directions_cover_the_sphere_evenly():
    d = ray_directions(2000)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.abs(d.mean(axis=0)).max() < 1e-3  # balanced
    # each octant gets its eighth
    octant = (d[:, 0] > 0) * 4 + (d[:, 1] > 0) * 2 + (d[:, 2] > 0)
    counts = np.bincount(octant, minlength=8)
    assert counts.min() > 0.95 * 250 and counts.max() < 1.05 * 250


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_concentric_shells_read_their_thickness(voxel_mm):
    tags, affine = _shells(voxel_mm)
    dirs = ray_directions(500)
    centre = np.array([1.3, -2.1, 0.7])  # off the spheres' centre: the analytic lengths differ per ray
    bone, csf = (ray_thickness([tags], affine, layer, inner, outer, centre, dirs)[0]
                 for layer, inner, outer in ((4, (1, 2, 3), (5,)), (3, (1, 2), (4, 5))))
    want_bone = _exit_distance(dirs, centre, 48) - _exit_distance(dirs, centre, 43)
    want_csf = _exit_distance(dirs, centre, 43) - _exit_distance(dirs, centre, 40)
    for got, want in ((bone, want_bone), (csf, want_csf)):
        assert np.isfinite(got).all()
        err = got - want
        assert abs(np.median(err)) <= 0.3 * voxel_mm
        assert np.percentile(np.abs(err), 95) <= 1.0 * voxel_mm


def test_eccentric_bone_thickness_follows_each_ray():
    """The bone's outer sphere moved 4 mm along +x: from 1 mm (-x) to 9 mm (+x) thick, read per ray."""
    tags, affine = _shells(1.0, outer_shift_mm=4.0)
    # a calcification inside the brain (bone-tagged, as segmentations have them) and a CSF pocket in
    # the brain along the same rays: neither is part of the skull layer
    x = np.arange(tags.shape[0]) + affine[0, 3]
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    tags[(X ** 2 + Y ** 2 + (Z - 20) ** 2) < 6 ** 2] = 4
    tags[(X ** 2 + Y ** 2 + (Z - 32) ** 2) < 3 ** 2] = 3
    dirs = ray_directions(800)
    got = ray_thickness([tags], affine, 4, (1, 2, 3), (5,), np.zeros(3), dirs)[0]
    b = dirs @ np.array([4.0, 0, 0])  # the outer sphere about (4, 0, 0): |t d - s| = 48
    want = (b + np.sqrt(b * b - (16 - 48 ** 2))) - 43
    assert want.min() < 2 and want.max() > 8
    ok = np.isfinite(got)
    assert ok.mean() > 0.99
    assert np.percentile(np.abs(got[ok] - want[ok]), 95) <= 1.0
    assert np.corrcoef(got[ok], want[ok])[0, 1] > 0.97


def test_summary_pairs_the_rays():
    tags, affine = _shells(1.0)
    same = ray_thickness_summary(tags, tags.copy(), affine, 4, (1, 2, 3), (5,), n_rays=400)
    assert same["paired_median"] == 0 and same["paired_abs_p90"] == 0 and same["rays"] == 400
    np.testing.assert_allclose(same["centre_mm"], 0, atol=0.1)
    thicker, _ = _shells(1.0)
    x = np.arange(tags.shape[0]) + affine[0, 3]
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    thicker[(r >= 48) & (r < 50)] = 4  # bone 2 mm thicker outside
    grown = ray_thickness_summary(tags, thicker, affine, 4, (1, 2, 3), (5,), n_rays=400)
    assert 1.5 <= grown["paired_median"] <= 2.5 and 1.5 <= grown["paired_mean"] <= 2.5
    assert grown["mesh_on_grid"][1] - grown["labels"][1] == pytest.approx(grown["paired_median"], abs=0.5)
    # CSF where the labels have none: the brain touching the bone reads 0, not nan
    no_csf = tags.copy()
    no_csf[no_csf == 3] = 2
    s = ray_thickness_summary(tags, no_csf, affine, 3, (1, 2), (4, 5), n_rays=200)
    assert s["rays"] == 200 and s["mesh_on_grid"] == [0.0, 0.0, 0.0] and 2 <= s["labels"][1] <= 4


def test_rays_that_leave_the_grid_or_meet_no_inner_tissue_are_not_measured():
    tags, affine = _shells(1.0)
    cut = tags.copy()
    cut[:, :, :60] = 0  # the lower half cut off: rays downwards end on background, no layer there
    dirs = ray_directions(400)
    bone = ray_thickness([cut], affine, 4, (1, 2, 3), (5,), np.zeros(3), dirs)[0]
    assert np.isfinite(bone[dirs[:, 2] > 0.2]).all()
    assert (bone[dirs[:, 2] < -0.2] == 0).all()  # the ray ends on background right after the brain
    outside = ray_thickness([tags], affine, 4, (1, 2, 3), (5,), np.array([0, 0, 60.0]), dirs)[0]
    assert np.isnan(outside).mean() > 0.4  # from above the head most rays meet no brain
    with pytest.raises(ValueError, match="one grid"):
        ray_thickness([tags, tags[:-1]], affine, 4, (1, 2, 3), (5,), np.zeros(3), dirs)
    with pytest.raises(ValueError, match="intracranial"):
        ray_thickness_summary(np.full((5, 5, 5), 5, np.int8), np.full((5, 5, 5), 5, np.int8), np.eye(4), 4,
                              (1, 2, 3), (5,))


def test_summary_pairs_rays_measured_in_both_and_reads_the_upper_half():
    """0.5 mm voxels (the centre goes through the affine).  The "mesh": bone 2 mm thinner below the
    centre, 1 mm thicker above it, and bone from z = 20 mm and the CSF to the grid's edge, where rays leave
    the grid inside the layer (not measured: nan, and left out of both volumes' figures)."""
    tags, affine = _shells(0.5)
    x = (np.arange(tags.shape[0]) * 0.5 + affine[0, 3]).astype(np.float32)
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    z = np.broadcast_to(x[None, None, :], tags.shape)
    reshaped = tags.copy()
    reshaped[(z < 0) & (r >= 46) & (r < 48)] = 5
    reshaped[(z >= 0) & (r >= 48) & (r < 49)] = 4
    mesh = reshaped.copy()
    mesh[(z > 20) & (r >= 43)] = 4
    dirs = ray_directions(600)
    s = ray_thickness_summary(tags, mesh, affine, 4, (1, 2, 3), (5,), n_rays=600)
    np.testing.assert_allclose(s["centre_mm"], 0.0, atol=0.1)
    lab, msh = ray_thickness([tags, mesh], affine, 4, (1, 2, 3), (5,), s["centre_mm"], dirs)
    assert np.isfinite(lab).all()
    lost = ~np.isfinite(msh)
    assert 100 < lost.sum() < 300 and (dirs[lost, 2] > 0.3).all()  # the block's rays, nothing else
    both = ~lost
    assert s["rays"] == both.sum()
    np.testing.assert_allclose(s["labels"], np.percentile(lab[both], [10, 50, 90]))
    np.testing.assert_allclose(s["mesh_on_grid"], np.percentile(msh[both], [10, 50, 90]))
    # the lost rays are in the first volume now: the second one's figures leave them out too
    swapped = ray_thickness_summary(mesh, reshaped, affine, 4, (1, 2, 3), (5,), n_rays=600)
    kept = ray_thickness([reshaped], affine, 4, (1, 2, 3), (5,), swapped["centre_mm"], dirs)[0][both]
    np.testing.assert_allclose(swapped["mesh_on_grid"], np.percentile(kept, [10, 50, 90]))
    up = both & (dirs[:, 2] > 0)
    np.testing.assert_allclose(s["upper"]["mesh_on_grid"], np.percentile(msh[up], [10, 50, 90]))
    assert 0.5 <= s["upper"]["mesh_on_grid"][1] - s["upper"]["labels"][1] <= 1.5  # 1 mm thicker above
    d = msh[both] - lab[both]
    assert np.median(d[dirs[both, 2] < -0.1]) == pytest.approx(-2.0, abs=0.5)
    assert s["paired_mean"] == pytest.approx(d.mean()) and s["paired_median"] == pytest.approx(np.median(d))
    assert s["paired_abs_p90"] == pytest.approx(np.percentile(np.abs(d), 90)) and s["paired_abs_p90"] >= 1.5


def test_rays_where_the_labels_do_not_nest_the_layers_are_flagged_and_left_out_of_nested():
    """Scalp voxels between the CSF and the bone over a cap (as Colin27's labels have them), and an air
    pocket inside the bone over another: along those rays the labels' first bone run is not the skull's
    thickness.  The rays through them are not nested; the nested figures leave them out."""
    tags, affine = _shells(1.0)
    x = np.arange(tags.shape[0]) + affine[0, 3]
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    r = np.sqrt(X ** 2 + Y ** 2 + Z ** 2)
    cap = Z > 0.9 * r  # within ~26 deg of +z
    tags[cap & (r >= 43) & (r < 44.5)] = 5  # scalp under the bone
    pocket = -X > 0.9 * r  # within ~26 deg of -x
    tags[pocket & (r >= 44.5) & (r < 46.5)] = 0  # air inside the bone
    cyst = Y > 0.9 * r  # within ~26 deg of +y
    tags[cyst & (r >= 50) & (r < 52)] = 3  # CSF-tagged voxels in the scalp: an inner tissue past the end
    dirs = ray_directions(800)
    got, nested = ray_thickness([tags], affine, 4, (1, 2, 3), (5,), np.zeros(3), dirs, return_nested=True)
    near_cap, near_pocket, near_cyst = dirs[:, 2] > 0.92, -dirs[:, 0] > 0.92, dirs[:, 1] > 0.92
    away = (dirs[:, 2] < 0.85) & (-dirs[:, 0] < 0.85) & (dirs[:, 1] < 0.85)
    assert not nested[0, near_cap | near_pocket | near_cyst].any()
    assert nested[0, away].all()
    assert np.all(np.abs(got[0, near_cyst] - 5.0) <= 1.0)  # the bone itself reads right there
    assert (got[0, near_cap] <= 0.5).all()  # the first bone run: none before the scalp voxels
    # the "mesh": 5 mm of bone everywhere; over the nested rays it matches the labels
    mesh, _ = _shells(1.0)
    s = ray_thickness_summary(tags, mesh, affine, 4, (1, 2, 3), (5,), n_rays=800)
    assert s["rays"] == 800 and abs(s["nested"]["rays"] - nested[0].sum()) <= 3  # centred on the centroid
    assert s["nested"]["labels"][0] >= 4.0 and abs(s["nested"]["paired_median"]) <= 0.25
    assert abs(s["nested"]["paired_mean"]) <= 0.1 < s["paired_mean"] - 0.2


def test_rays_through_a_hole_in_the_labels_layer_are_left_out_of_present():
    """A hole in the labels' skull over a cap (scalp voxels where the bone would be) and a "mesh" that
    closes it with 2 mm of bone: the rays through the hole are nested (nothing past the end) but the
    labels have no bone along them.  The ``present`` figures leave them out (the mesh then matches
    the labels); the nested ones keep them (the mesh reads thicker there)."""
    from stimsim.head.meshers.thickness import ray_thickness_summary

    mesh, affine = _shells(1.0)
    x = np.arange(mesh.shape[0]) + affine[0, 3]
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    r = np.sqrt(X ** 2 + Y ** 2 + Z ** 2)
    hole = Z > 0.9 * r  # within ~26 deg of +z
    tags = mesh.copy()
    tags[hole & (mesh == 4)] = 5
    mesh[hole & (mesh == 4) & (r >= 46)] = 5  # the "mesh" closes the hole with thinner bone
    s = ray_thickness_summary(tags, mesh, affine, 4, (1, 2, 3), (5,), n_rays=800)
    through = s["nested"]["rays"] - s["present"]["rays"]
    assert 20 <= through <= 120, through  # the rays through the cap (~5 % of them)
    assert s["nested"]["paired_mean"] > 0.05
    assert abs(s["present"]["paired_mean"]) <= 0.05 and abs(s["present"]["paired_median"]) <= 0.25
    assert s["present"]["labels"][0] >= 4.0


def test_nearest_point_thickness_paired_by_place():
    """The labels' skull 2 mm thicker over the lower half, a "mesh" (its tags on the same grid) with it
    2 mm thicker over the upper half instead: the pooled percentiles are the same, the paired ones read
    -2 mm below and +2 mm above.  The same tags with specks of bone in the scalp read 0 everywhere."""
    from stimsim.head.meshers.thickness import thickness_percentiles
    from stimsim.mesh import Mesh

    tags, affine = _shells(1.0)
    x = np.arange(tags.shape[0]) + affine[0, 3]
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    r = np.sqrt(X ** 2 + Y ** 2 + Z ** 2)
    labels, mesh = tags.copy(), tags.copy()
    labels[(Z <= 0) & (r >= 48) & (r < 50)] = 4
    mesh[(Z > 0) & (r >= 48) & (r < 50)] = 4
    dummy = Mesh(np.eye(4, 3) * 60.0, np.array([[0, 1, 2, 3]]), np.array([5]))  # no bone faces: "mesh" unused
    t = thickness_percentiles(dummy, labels, affine, 4, 3, 5, mesh_on_grid=mesh)
    assert all(abs(a - b) <= 0.5 for a, b in zip(t["labels"], t["mesh_on_grid"])), t  # pooled: alike
    assert t["paired_on_grid"][0] <= -1.5 and t["paired_on_grid"][2] >= 1.5, t
    specks = labels.copy()  # the same tags with two bone specks in the scalp, 2-3 mm out: extra
    # outer-boundary points no labels' point is nearest to (paired by index, every point after them
    # would be paired with another place)
    specks[(np.abs(X - 30) < 1) & (np.abs(Y) < 1) & (np.abs(Z - 41) < 1)] = 4
    specks[(np.abs(X + 40) < 1) & (np.abs(Y - 5) < 1) & (np.abs(Z + 33) < 1)] = 4
    same = thickness_percentiles(dummy, labels, affine, 4, 3, 5, mesh_on_grid=specks)
    assert same["paired_on_grid"] == [0.0, 0.0, 0.0]
