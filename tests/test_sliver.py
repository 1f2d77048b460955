"""The sliver pass of the surface mesher (stimsim.head.meshers.sliver): its shape measure against the
mesh checks' element quality, and what it may and may not change."""

from __future__ import annotations

import numpy as np
import pytest

from stimsim.head.meshers import _sliver_kernels as k
from stimsim.head.meshers.sliver import MIN_DIHEDRAL_DEG, MIN_RADIUS_RATIO, perturb_slivers
from stimsim.mesh.checks import element_quality
from stimsim.mesh.model import TET_FACES, Mesh


def _delaunay(n=400, seed=0):
    """A Delaunay mesh of random points in a cube: plenty of slivers (Delaunay does not avoid them);
    tags 1 inside a ball of radius 3, 2 elsewhere (so there is an inner surface too)."""
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


def _shape(x, tets, sign=1.0):
    return k.shapes(np.ascontiguousarray(x, float), np.ascontiguousarray(tets, np.int64), sign, MIN_DIHEDRAL_DEG,
                    MIN_RADIUS_RATIO)


def _surface_faces(tets, tags):
    """Faces on the boundary or between two tags, found here by sorting all faces (not the pass's code)."""
    f = np.concatenate([tets[:, list(face)] for face in TET_FACES])
    owner = np.tile(np.arange(len(tets)), 4)
    key = np.sort(f, axis=1)
    _, inv, count = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    first = {}
    surface = []
    for i, (g, c) in enumerate(zip(inv, count[inv])):
        if c == 1:
            surface.append(f[i])
        elif g in first:
            if tags[owner[first[g]]] != tags[owner[i]]:
                surface.append(f[i])
        else:
            first[g] = i
    return np.array(surface)


def test_shape_measure_is_the_mesh_checks_quality():
    pts, tets, tags = _delaunay()
    e = element_quality(Mesh(pts, tets, tags))
    ref = np.minimum(e["min_dihedral_deg"] / MIN_DIHEDRAL_DEG, e["radius_ratio"] / MIN_RADIUS_RATIO)
    np.testing.assert_allclose(_shape(pts, tets), ref, rtol=1e-9, atol=1e-12)
    assert (_shape(pts, tets, -1.0) == -1.0).all()  # against the orientation: flagged as -1


def test_pass_improves_shapes_and_keeps_surfaces():
    pts, tets, tags = _delaunay()
    q0 = _shape(pts, tets)
    assert (q0 < 1).sum() > 50  # random Delaunay: many poor tetrahedra to start with
    cap = 0.05
    x, info = perturb_slivers(pts, tets, tags, max_move_mm=cap)
    q1 = _shape(x, tets)
    assert info["poor_before"] == (q0 < 1).sum() and info["poor_after"] == (q1 < 1).sum()
    assert info["poor_after"] < 0.7 * info["poor_before"]
    assert (q1 > 0).all() and info["inverted_after"] == 0  # nothing turned over
    assert q1.min() > 10 * q0.min()  # the worst element is much better
    # every node on a surface face (the cube's sides, the ball's tag boundary) stays within `cap` of
    # the plane of each such face around it, and within 3 cap of where it was
    f = _surface_faces(tets, tags)
    p = pts[f]
    unit = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    unit /= np.linalg.norm(unit, axis=1)[:, None]
    shift = x - pts
    for c in range(3):
        assert np.abs(np.einsum("ij,ij->i", shift[f[:, c]], unit)).max() <= cap + 1e-12
    on = np.unique(f)
    assert np.linalg.norm(shift[on], axis=1).max() <= 3 * cap + 1e-12
    assert np.linalg.norm(shift[on], axis=1).max() > 0.5 * cap  # surface nodes did move (slide)
    # away from the surfaces the nodes move freely: most poor tetrahedra there are fixed
    inner = ~np.isin(tets, on).any(axis=1)
    assert ((q1 < 1) & inner).sum() < 0.5 * ((q0 < 1) & inner).sum()
    assert not np.shares_memory(x, pts)
    v0 = np.bincount(tags, weights=Mesh(pts, tets, tags).volumes_mm3)
    v1 = np.bincount(tags, weights=Mesh(x, tets, tags).volumes_mm3)
    np.testing.assert_allclose(v1[1:], v0[1:], rtol=0.02)


def test_no_new_inverted_tetrahedra():
    """A mesh that already has inverted tetrahedra: the pass may not turn another one over."""
    rng = np.random.default_rng(20)
    for seed in range(12):
        pts, tets, tags = _delaunay(300, seed=seed)
        pts = pts.copy()
        inner = np.flatnonzero(np.all((pts > 2) & (pts < 8), axis=1))
        for v in rng.choice(inner, 3, replace=False):
            pts[v] += rng.normal(0, 1.5, 3)  # far enough to turn some tetrahedra over
        q0 = _shape(pts, tets)
        x, info = perturb_slivers(pts, tets, tags, max_move_mm=0.05)
        q1 = _shape(x, tets)
        assert set(np.flatnonzero(q1 < 0)) <= set(np.flatnonzero(q0 < 0)), seed
        assert info["inverted_after"] == int((q1 < 0).sum())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_either_orientation(sign):
    pts, tets, tags = _delaunay(200, seed=3)
    if sign < 0:
        tets = tets[:, [0, 2, 1, 3]]
    x, info = perturb_slivers(pts, tets, tags, max_move_mm=0.05)
    assert info["poor_after"] < info["poor_before"] and info["inverted_after"] == 0


@pytest.mark.parametrize("n_neg", [0, 1, 2, 3])
def test_orientation_is_the_majority_of_a_few_tetrahedra(n_neg):
    """Three flat-ish tetrahedra side by side, n_neg of them negatively ordered: the pass follows the
    majority (as the mesh checks do) and reports the others as inverted, moving nothing there."""
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.3, 0.3, 0.02]], float)
    pts = np.concatenate([base + [3 * i, 0, 0] for i in range(3)])
    tets = np.arange(12).reshape(3, 4)
    tets[:n_neg] = tets[:n_neg][:, [0, 2, 1, 3]]
    x, info = perturb_slivers(pts, tets, np.ones(3, int), max_move_mm=0.05)
    expected_inverted = n_neg if n_neg <= 1 else 3 - n_neg
    assert info["inverted_after"] == expected_inverted


@pytest.mark.parametrize("ball_tag, cube_tag, sign", [(1, 2, 1.0), (2, 1, 1.0), (-1, 0, 1.0), (1, 2, -1.0)])
def test_swept_volume_is_put_back_on_each_surface(ball_tag, cube_tag, sign):
    """restore_interface_volumes: nodes of the ball's surface pushed out by up to 0.04 mm (as the pass
    does across a thin layer) are moved back along the surface's normals until the ball holds its
    volume again, with no tetrahedron left poorer, no node off its faces' planes by more than the
    bound; a surface the pass did not move (the cube's sides) stays.  The ball's tag above or below
    the cube's, tags -1 and 0 (no value stands for the outside), tetrahedra of either orientation."""
    from stimsim.head.meshers.sliver import restore_interface_volumes
    from stimsim.head.meshers.topology import tet_neighbors

    pts, tets, tags = _delaunay(800, seed=5)
    tags = np.where(tags == 1, ball_tag, cube_tag)
    if sign < 0:
        tets = tets[:, [0, 2, 1, 3]]
    f = _surface_faces(tets, tags)
    ball = np.unique(f[np.linalg.norm(pts[f].mean(1) - 5, axis=1) < 4.5])  # nodes on the ball's surface
    rng = np.random.default_rng(1)
    x = pts.copy()
    radial = (pts[ball] - 5) / np.linalg.norm(pts[ball] - 5, axis=1)[:, None]
    x[ball] += rng.uniform(0.0, 0.04, len(ball))[:, None] * radial
    q = _shape(x, tets, sign)

    def ball_volume(nodes):
        return Mesh(nodes, tets, tags).volumes_mm3[tags == ball_tag].sum()

    pushed = ball_volume(x) - ball_volume(pts)
    assert pushed > 0.5  # mm3: enough to see
    out, q1, swept, left = restore_interface_volumes(x, pts, tets, tags, tet_neighbors(tets), q, sign, 0.05, 0.15)
    assert swept == pytest.approx(pushed, rel=0.05)
    back = ball_volume(out) - ball_volume(pts)
    assert abs(back) < 0.02 * pushed and left < 0.02 * swept, (pushed, back, left)
    np.testing.assert_array_equal(q1, _shape(out, tets, sign))
    assert not ((q1 < 1) & (q1 < q - 1e-12)).any()
    side = np.setdiff1d(np.unique(f), ball)
    np.testing.assert_array_equal(out[side], x[side])
    p = pts[f]
    unit = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    unit /= np.linalg.norm(unit, axis=1)[:, None]
    for c in range(3):
        assert np.abs(np.einsum("ij,ij->i", (out - pts)[f[:, c]], unit)).max() <= 0.05 + 1e-12


def _interfaces(tets, tags):
    """The faces on the boundary or between two tags, each with the tag on its side (a set)."""
    from stimsim.head.meshers.topology import tet_neighbors

    nb = tet_neighbors(tets)
    out = set()
    for k in range(4):
        other = nb[:, k]
        cut = (other < 0) | (tags[np.maximum(other, 0)] != tags)
        f = np.sort(np.delete(tets[cut], k, axis=1), axis=1)
        out |= set(map(tuple, np.column_stack([f, tags[cut]]).tolist()))
    return out


def _conforming(tets, sign=1.0):
    """Every face in at most two tetrahedra, and a face of two with opposite orientations in them
    (the faces of a tetrahedron a b c d with positive volume, outward: b c d, a d c, a b d, a c b)."""
    t = tets if sign > 0 else tets[:, [1, 0, 2, 3]]
    f = np.concatenate([t[:, [1, 2, 3]], t[:, [0, 3, 2]], t[:, [0, 1, 3]], t[:, [0, 2, 1]]])
    order = np.argsort(f, axis=1)
    parity = (order[:, 0] > order[:, 1]).astype(int) + (order[:, 0] > order[:, 2]) + (order[:, 1] > order[:, 2])
    key, inv, count = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    odd = np.bincount(inv, weights=parity % 2, minlength=len(key))
    return count.max() <= 2 and bool(np.all(odd[count == 2] == 1))


@pytest.mark.parametrize("seed, sign", [(0, 1.0), (1, 1.0), (2, 1.0), (0, -1.0)])
def test_flips_remove_poor_tetrahedra_and_keep_every_surface(seed, sign):
    """flip_slivers on a Delaunay mesh of random points (tags: a ball in a cube; its mirror image: every
    tetrahedron negative): fewer tetrahedra below the bounds, the worst no worse, none turned over or
    flat, a conforming mesh, every tissue's volume to 1e-9, and every boundary or interface face (with
    its tag) exactly as it was; the nodes are not moved."""
    from stimsim.head.meshers.sliver import flip_slivers

    pts, tets, tags = _delaunay(600, seed=seed)
    pts = pts * [sign, 1.0, 1.0]
    q0 = _shape(pts, tets, sign)
    assert _conforming(tets, sign) and (q0 > 0).all()
    new_tets, new_tags, info = flip_slivers(pts, tets, tags)
    q1 = _shape(pts, new_tets, sign)
    assert info["poor_before"] == int((q0 < 1).sum()) and info["poor_after"] == int((q1 < 1).sum())
    assert info["flips_3_2"] > 0 and info["flips_4_4"] > 0 and info["poor_after"] < info["poor_before"]
    assert (q1 > 0).all() and q1.min() >= q0.min() and _conforming(new_tets, sign)
    v0 = np.bincount(tags, weights=Mesh(pts, tets, tags).volumes_mm3)
    v1 = np.bincount(new_tags, weights=Mesh(pts, new_tets, new_tags).volumes_mm3)
    np.testing.assert_allclose(v1, v0, rtol=1e-9)
    assert _interfaces(new_tets, new_tags) == _interfaces(tets, tags)
    assert len(new_tets) == len(tets) - info["flips_3_2"]  # 3 -> 2, 4 -> 4


def test_flips_leave_rings_of_several_tags_alone():
    """Every tetrahedron its own tag, so that every ring around an edge holds several: nothing may be
    flipped (it would move an interface); with one tag the same mesh has flips."""
    from stimsim.head.meshers.sliver import flip_slivers

    pts, tets, _ = _delaunay(400, seed=4)
    assert sum(flip_slivers(pts, tets, np.ones(len(tets), int))[2][k] for k in ("flips_3_2", "flips_4_4")) > 0
    tags = np.arange(len(tets))
    new_tets, new_tags, info = flip_slivers(pts, tets, tags)
    assert info["flips_3_2"] + info["flips_4_4"] == 0
    np.testing.assert_array_equal(new_tets, tets)


def test_flips_on_a_jittered_grid_turn_nothing_over():
    """A Delaunay mesh of a grid jittered by 1e-10 (nearly flat tetrahedra everywhere, exactly flat
    ones avoided): a flip whose new tetrahedron is turned over by less than the volume tolerance
    would still sum to the ring's volume; the orientation test refuses it (the mesh stays
    conforming, no tetrahedron turned)."""
    from scipy.spatial import Delaunay

    from stimsim.head.meshers.sliver import flip_slivers

    rng = np.random.default_rng(2)
    pts = np.stack(np.meshgrid(*[np.arange(8.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = pts + rng.normal(0, 1e-10, pts.shape)
    tets = Delaunay(pts).simplices.astype(np.int64)
    neg = Mesh(pts, tets, np.ones(len(tets), int)).signed_volumes_mm3 < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    assert _conforming(tets)
    new_tets, _, info = flip_slivers(pts, tets, np.ones(len(tets), int))
    assert _conforming(new_tets)
    assert (Mesh(pts, new_tets, np.ones(len(new_tets), int)).signed_volumes_mm3 > 0).all()
