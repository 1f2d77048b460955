"""The sliver pass of the surface mesher (stimsim.head.meshers.sliver): its shape measure against the
mesh checks' element quality, and what it may and may not change."""

from __future__ import annotations

import numpy as np
import pytest

from stimsim.head.meshers import _sliver_kernels as k
from stimsim.head.meshers.sliver import MIN_DIHEDRAL_DEG, MIN_RADIUS_RATIO, perturb_slivers, surface_normals
from stimsim.mesh.checks import element_quality
from stimsim.mesh.model import Mesh


def _delaunay(n=400, seed=0):
    """A Delaunay mesh of random points in a cube: plenty of slivers (Delaunay does not avoid them);
    tags 1 inside a ball of radius 0.3, 2 elsewhere (so there is an inner surface too)."""
    from scipy.spatial import Delaunay

    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 10, (n, 3))
    tets = Delaunay(pts).simplices.astype(np.int64)
    m = Mesh(pts, tets, np.ones(len(tets), int))
    neg = m.signed_volumes_mm3 < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    cen = pts[tets].mean(1)
    tags = np.where(np.linalg.norm(cen - 5, axis=1) < 3, 1, 2)
    return pts, tets, tags


def test_shape_measure_is_the_mesh_checks_quality():
    pts, tets, tags = _delaunay()
    e = element_quality(Mesh(pts, tets, tags))
    ref = np.minimum(e["min_dihedral_deg"] / MIN_DIHEDRAL_DEG, e["radius_ratio"] / MIN_RADIUS_RATIO)
    q = k.shapes(pts, tets, 1.0, MIN_DIHEDRAL_DEG, MIN_RADIUS_RATIO)
    np.testing.assert_allclose(q, ref, rtol=1e-9, atol=1e-12)
    # against the orientation: flagged as -1
    assert (k.shapes(pts, tets, -1.0, MIN_DIHEDRAL_DEG, MIN_RADIUS_RATIO) == -1.0).all()


def test_pass_improves_shapes_and_keeps_surfaces():
    pts, tets, tags = _delaunay()
    q0 = k.shapes(pts, tets, 1.0, MIN_DIHEDRAL_DEG, MIN_RADIUS_RATIO)
    assert (q0 < 1).sum() > 50  # random Delaunay: many poor tetrahedra to start with
    cap = 0.05
    x, info = perturb_slivers(pts, tets, tags, max_move_mm=cap)
    q1 = k.shapes(x, tets, 1.0, MIN_DIHEDRAL_DEG, MIN_RADIUS_RATIO)
    assert info["poor_before"] == (q0 < 1).sum() and info["poor_after"] == (q1 < 1).sum()
    assert info["poor_after"] < 0.7 * info["poor_before"]
    assert (q1 > 0).all() and info["inverted_after"] == 0  # nothing turned over
    assert q1.min() > 10 * q0.min()  # the worst element is much better
    # away from the surfaces the nodes move freely: most poor tetrahedra there are fixed
    on, normal = surface_normals(pts, tets, tags)
    inner = ~on[tets].any(axis=1)
    assert ((q1 < 1) & inner).sum() < 0.5 * ((q0 < 1) & inner).sum()
    # surface nodes (the cube's faces, the ball's tag boundary) move at most `cap` along their
    # normal and 3 cap in all; the input is left alone
    shift = x - pts
    assert np.abs(np.einsum("ij,ij->i", shift, normal))[on].max() <= cap + 1e-12
    assert np.linalg.norm(shift[on], axis=1).max() <= 3 * cap + 1e-12
    assert not np.shares_memory(x, pts)
    # the volume of each tag hardly changes
    v0 = np.bincount(tags, weights=Mesh(pts, tets, tags).volumes_mm3)
    v1 = np.bincount(tags, weights=Mesh(x, tets, tags).volumes_mm3)
    np.testing.assert_allclose(v1[1:], v0[1:], rtol=0.02)


def test_surface_normals_of_a_cube_point_outwards():
    pts, tets, tags = _delaunay()
    on, normal = surface_normals(pts, tets, np.ones(len(tets), int))
    hull = on & (np.linalg.norm(normal, axis=1) > 0)
    assert hull.sum() > 20
    # outward: away from the cube's centre
    assert (np.einsum("ij,ij->i", normal[hull], pts[hull] - 5.0) > 0).mean() > 0.95


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_either_orientation(sign):
    pts, tets, tags = _delaunay(200, seed=3)
    if sign < 0:
        tets = tets[:, [0, 2, 1, 3]]
    x, info = perturb_slivers(pts, tets, tags, max_move_mm=0.05)
    assert info["poor_after"] < info["poor_before"] and info["inverted_after"] == 0
