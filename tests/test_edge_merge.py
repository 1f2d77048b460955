"""Short surface edges merged before TetGen (stimsim.head.meshers.edge_merge, mesher surf-6.5)."""

import numpy as np
import pytest
from synthetic_heads import simnibs_balls

pytest.importorskip("skimage")

from stimsim.head.meshers.edge_merge import _fan_overlaps  # noqa: E402
from stimsim.head.meshers.surface import collapse_short_edges, intersecting_triangles  # noqa: E402


def _wavy_ball(n=48, radius=16.0):
    """A marching-cubes surface of a bumpy ball (voxel 1 mm): many tiny triangles near grid points."""
    from skimage.measure import marching_cubes

    g = np.indices((n, n, n)).astype(float) - (n / 2 - 0.7)
    phi = np.sqrt((g ** 2).sum(0)) - radius + 1.5 * np.sin(g[0] / 3.0) * np.cos(g[1] / 4.0)
    v, f, _, _ = marching_cubes(phi, 0.0)
    return v.astype(float), f.astype(np.int64)


def _edges(f):
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)


def _volume(v, f):
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->", a, np.cross(b, c))) / 6.0


@pytest.fixture(scope="module")
def ball():
    return _wavy_ball()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_merges_short_edges_keeps_a_closed_uncrossed_surface(ball, backend):
    v, f = ball
    min_len = 0.45
    e0, _ = _edges(f)
    short0 = np.sum(np.linalg.norm(v[e0[:, 0]] - v[e0[:, 1]], axis=1) < min_len)
    v2, f2, merged, kept = collapse_short_edges(v, f, min_len, backend=backend)
    e, count = _edges(f2)
    short = np.sum(np.linalg.norm(v2[e[:, 0]] - v2[e[:, 1]], axis=1) < min_len)
    assert short0 > 200 and merged > 0.5 * short0 and short < 0.05 * short0, (short0, merged, short)
    # a closed 2-manifold of the same genus: every edge on two triangles, V - E + F unchanged
    assert np.all(count == 2)
    assert len(v2) - len(e) + len(f2) == len(v) - len(e0) + len(f) == 2
    assert len(v2) == len(v) - merged and kept.sum() == len(v2)
    # the enclosed volume is kept (each merge moves its point along the fan's normal to keep it)
    assert _volume(v2, f2) == pytest.approx(_volume(v, f), rel=1e-6)
    assert not len(intersecting_triangles(v2, f2))
    # no triangle turned over: every triangle's normal still points away from the ball's centre
    c = v2[f2].mean(axis=1) - (48 / 2 - 0.7)
    n = np.cross(v2[f2[:, 1]] - v2[f2[:, 0]], v2[f2[:, 2]] - v2[f2[:, 0]])
    side = np.sign((c * n).sum(1))
    assert abs(side.sum()) == len(side)


def test_numba_and_python_merge_the_same(ball):
    v, f = ball
    a = collapse_short_edges(v, f, 0.45, backend="numba")
    b = collapse_short_edges(v, f, 0.45, backend="numpy")
    assert a[2] == b[2] and np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0], rtol=0, atol=1e-12)


def test_no_merge_that_pinches_a_surface():
    """A tetrahedron's surface: merging any edge would leave two triangles on one face (the vertices
    opposite it have three triangles each), so nothing is merged."""
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    v2, f2, merged, _ = collapse_short_edges(v, f, 0.5)
    assert merged == 0 and np.array_equal(f2, f) and np.array_equal(v2, v)


def _fan(angles_deg, tilt=0.0):
    """A fan around the origin: triangle i spans directions angles[i] -> angles[i + 1] (unit length,
    raised by ``tilt`` along z), vertices numbered around it."""
    a = np.radians(np.asarray(angles_deg, float))
    pts = np.column_stack([np.cos(a), np.sin(a), np.full(len(a), tilt)])
    m = len(a) - 1
    u, w = pts[:-1], pts[1:]
    fan = np.column_stack([u, w, np.cross(u, w)])
    ends = np.column_stack([np.arange(m), np.arange(1, m + 1)]).astype(np.int64)
    return fan, ends, m


def test_fan_overlap():
    # a disc in six triangles (closed: the last vertex is the first)
    fan, ends, m = _fan([0, 60, 120, 180, 240, 300, 360])
    ends[-1, 1] = 0
    assert not _fan_overlaps(fan, ends, m)
    # the same turning on past a full turn: the eighth triangle lies over the first
    fan, ends, m = _fan([0, 60, 120, 180, 240, 300, 360, 400])
    assert _fan_overlaps(fan, ends, m)
    # two triangles sharing only the centre, their planes crossing through both of their angles
    u1, w1 = np.array([1.0, -0.5, 0.0]), np.array([1.0, 0.5, 0.0])
    u2, w2 = np.array([1.0, 0.0, -0.5]), np.array([1.0, 0.0, 0.5])
    fan = np.array([np.concatenate([u1, w1, np.cross(u1, w1)]), np.concatenate([u2, w2, np.cross(u2, w2)])])
    assert _fan_overlaps(fan, np.array([[0, 1], [2, 3]]), 2)
    # ... and tilted apart (the second turned to the other side): they meet only at the centre
    u2, w2 = np.array([-1.0, 0.0, -0.5]), np.array([-1.0, 0.0, 0.5])
    fan[1] = np.concatenate([u2, w2, np.cross(u2, w2)])
    assert not _fan_overlaps(fan, np.array([[0, 1], [2, 3]]), 2)


def test_no_merge_across_a_ring_that_bounds_no_face():
    """A double triangular prism whose middle ring has a short edge: its ends share a third neighbour
    (the ring's third vertex) besides the two opposite vertices, so merging it would leave an edge on
    four triangles (the link condition); nothing is merged."""
    def ring(z, r=1.0):
        t = np.radians([90, 210, 330])
        return np.column_stack([r * np.cos(t), r * np.sin(t), np.full(3, z)])

    mid = ring(0.0)
    mid[1] = mid[0] + 0.3 * (mid[1] - mid[0]) / np.linalg.norm(mid[1] - mid[0])
    v = np.vstack([ring(1.0), mid, ring(-1.0)])
    f = [[0, 1, 2], [6, 8, 7]]
    for lo, hi in ((0, 3), (3, 6)):
        for i in range(3):
            j = (i + 1) % 3
            f += [[lo + i, hi + i, hi + j], [lo + i, hi + j, lo + j]]
    f = np.array(f)
    c, n = v[f].mean(1), np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    out = (c * n).sum(1) < 0
    f[out] = f[out][:, ::-1]
    for backend in ("numba", "numpy"):
        v2, f2, merged, _ = collapse_short_edges(v, f, 0.5, backend=backend)
        _, count = _edges(f2)
        assert merged == 0 and np.all(count == 2)


def test_merges_never_make_triangles_cross_or_overlap():
    """Random star-shaped closed surfaces (convex hulls of points on a sphere, each pushed in or out):
    after merging their shortest 30 % of edges no two triangles cross and no two sharing a vertex
    overlap (several of these made crossings before the re-planning, or overlaps through a shared
    vertex before the test of those)."""
    from scipy.spatial import ConvexHull

    from stimsim.head.meshers.surface import _touching_overlaps

    checked = 0
    for seed in range(150, 230):
        rng = np.random.default_rng(seed)
        p = rng.normal(size=(rng.integers(20, 80), 3))
        p /= np.linalg.norm(p, axis=1)[:, None]
        f = ConvexHull(p).simplices.copy()
        c, n = p[f].mean(1), np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
        f[(c * n).sum(1) < 0] = f[(c * n).sum(1) < 0][:, ::-1]
        v = p * np.exp(rng.normal(0, 0.5, len(p)))[:, None]
        every = np.ones(len(f), bool)
        if len(intersecting_triangles(v, f)) or len(_touching_overlaps(v, f, every)):
            continue
        checked += 1
        e, _ = _edges(f)
        v2, f2, merged, _ = collapse_short_edges(v, f, float(np.quantile(np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1), 0.3)))
        _, count = _edges(f2)
        assert np.all(count == 2), seed
        assert not len(intersecting_triangles(v2, f2)), seed
        assert not len(_touching_overlaps(v2, f2, np.ones(len(f2), bool))), seed
    assert checked >= 20


def test_tetgen_refusing_merged_surfaces_gets_the_unmerged_ones(monkeypatch):
    """If TetGen finds an intersection in the merged surfaces, the mesher meshes the surfaces as they
    were before merging (its later retries put marching-cubes points back, which are free of
    crossings only on the unmerged triangles)."""
    pytest.importorskip("tetgen")
    from stimsim.head.meshers import make_head_mesh, tetgen_worker

    vol = simnibs_balls()
    calls = []
    real = tetgen_worker.tetrahedralize

    def refuse_first(verts, *args, **kwargs):
        calls.append(len(verts))
        if len(calls) == 1:
            raise RuntimeError("The input surface mesh contain self-intersections.")
        return real(verts, *args, **kwargs)

    monkeypatch.setattr(tetgen_worker, "tetrahedralize", refuse_first)
    mesh, info = make_head_mesh(vol, np.eye(4), "simnibs", method="surface", element_size_mm=4.0, progress=False,
                                cache=False, return_info=True)
    m = info.mesher
    assert len(calls) == 2 and m.get("merges_undone") and m["short_edges_merged"] == 0
    assert sum(n for _, n in m["surface_triangles"].values()) > 0
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    voxels = np.bincount(vol.ravel(), minlength=6)
    assert np.all(np.abs(v[1:6] / voxels[1:6] - 1) < 0.05), v[1:6] / voxels[1:6]
