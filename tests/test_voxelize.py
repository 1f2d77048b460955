"""stimsim.mesh.voxelize: per-tetrahedron values at voxel centres, checked against an independent
point location (scipy's Delaunay.find_simplex) and a box whose voxel count is known."""

import numpy as np
import pytest
from scipy.spatial import Delaunay

from stimsim.mesh import Mesh
from stimsim.mesh.voxelize import tet_values_on_grid


def _oriented(nodes, tets):
    a, b, c, d = (nodes[tets[:, i]] for i in range(4))
    neg = np.einsum("ij,ij->i", np.cross(b - a, c - a), d - a) < 0
    tets = tets.copy()
    tets[neg, 0], tets[neg, 1] = tets[neg, 1], tets[neg, 0].copy()
    return tets


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_delaunay_point_location_on_a_rotated_anisotropic_grid(seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-20, 20, (300, 3))
    tri = Delaunay(pts)
    tets = _oriented(pts, tri.simplices.astype(np.int64))
    mesh = Mesh(nodes=pts, tets=tets, tet_tags=np.ones(len(tets), np.int32))
    values = rng.integers(1, 1000, len(tets)).astype(np.int32)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag([0.9, 1.3, 0.7])
    affine[:3, 3] = rng.uniform(-2, 2, 3) - affine[:3, :3] @ np.full(3, 25.0)
    shape = (50, 50, 50)
    got = tet_values_on_grid(mesh, values, shape, affine)
    ijk = np.indices(shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    simplex = tri.find_simplex(world)
    want = np.where(simplex >= 0, values[np.maximum(simplex, 0)], 0).reshape(shape)
    inside = (simplex >= 0).sum()
    assert 1000 < inside < world.shape[0]  # the grid covers the mesh and more
    # a centre within rounding of a shared face may go to either neighbour: allow a handful
    assert np.count_nonzero(got != want) <= 3, np.count_nonzero(got != want)


def test_box_voxel_count_and_halves():
    # a 10 x 8 x 6 mm box of 6-tet cubes, tag 1 for x < 5 and 2 beyond
    g = np.stack(np.meshgrid(np.arange(11.0), np.arange(9.0), np.arange(7.0), indexing="ij"), -1)
    nodes = g.reshape(-1, 3)
    idx = np.arange(len(nodes)).reshape(g.shape[:3])
    cubes = []
    for i in range(10):
        for j in range(8):
            for k in range(6):
                c = [idx[i + a, j + b, k + d] for a in (0, 1) for b in (0, 1) for d in (0, 1)]
                cubes.append(c)
    cubes = np.array(cubes)
    # Kuhn split along the 0-7 diagonal (corner index = 4a + 2b + d)
    paths = [(1, 3), (1, 5), (2, 3), (2, 6), (4, 5), (4, 6)]
    tets = np.concatenate([np.stack([cubes[:, 0], cubes[:, p], cubes[:, q], cubes[:, 7]], 1) for p, q in paths])
    tets = _oriented(nodes, tets)
    mesh = Mesh(nodes=nodes, tets=tets, tet_tags=np.ones(len(tets), np.int32))
    tags = np.where(mesh.centroids[:, 0] < 5, 1, 2).astype(np.int16)
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = -1.13  # no voxel centre on a face of the box or of the halves
    got = tet_values_on_grid(mesh, tags, (30, 26, 22), affine)
    ijk = np.indices(got.shape).reshape(3, -1).T
    x = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = np.all((x > 0) & (x < [10, 8, 6]), axis=1).reshape(got.shape)
    assert np.array_equal(got > 0, inside)
    assert np.array_equal(got[inside], np.where(x[inside.ravel(), 0] < 5, 1, 2))


def test_values_must_be_one_per_tetrahedron():
    nodes = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    mesh = Mesh(nodes=nodes, tets=np.array([[0, 1, 2, 3]]), tet_tags=np.array([1]))
    with pytest.raises(ValueError, match="one per tetrahedron"):
        tet_values_on_grid(mesh, np.array([1, 2]), (3, 3, 3), np.eye(4))


def test_nan_fill_for_a_field_image():
    nodes = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]], float)
    mesh = Mesh(nodes=nodes, tets=np.array([[0, 1, 2, 3]]), tet_tags=np.array([1]))
    got = tet_values_on_grid(mesh, np.array([0.25]), (5, 5, 5), np.eye(4), fill=np.nan)
    ijk = np.indices((5, 5, 5)).reshape(3, -1).T
    inside = (ijk.sum(1) <= 4).reshape(5, 5, 5)
    assert np.all(got[inside] == 0.25) and np.all(np.isnan(got[~inside]))


def test_non_finite_nodes_are_refused():
    nodes = np.array([[0, 0, 0], [np.inf, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    mesh = Mesh.__new__(Mesh)
    object.__setattr__(mesh, "nodes", nodes)
    object.__setattr__(mesh, "tets", np.array([[0, 1, 2, 3]]))
    object.__setattr__(mesh, "tet_tags", np.array([1]))
    with pytest.raises(ValueError, match="non-finite"):
        tet_values_on_grid(mesh, np.array([1]), (3, 3, 3), np.eye(4))


@pytest.mark.parametrize("flip", [False, True])
def test_voxel_mesh_is_the_labels(flip):
    """voxel_mesh: six positive tetrahedra per labelled voxel, conforming (every inner face shared by
    two), holding the voxels' volume and, at each voxel centre, its label; its field per voxel is the
    mean over tetrahedra v, v + n, ... (the documented order), also for a left-handed affine."""
    from stimsim.head.meshers.topology import tet_neighbors
    from stimsim.mesh.voxelize import voxel_mesh

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (6, 7, 5)).astype(np.uint16)
    labels[2, 3, 2] = 300
    affine = np.array([[0.0, 1.2, 0.1, 3.0], [0.9, 0.0, 0.0, -2.0], [0.0, 0.0, 1.5, 1.0], [0, 0, 0, 1.0]])
    if flip:
        affine[:, 0] *= -1
    mesh = voxel_mesh(labels, affine)
    n = int(np.count_nonzero(labels))
    assert mesh.n_tets == 6 * n and (mesh.signed_volumes_mm3 > 0).all()
    assert np.isclose(mesh.volumes_mm3.sum(), n * abs(np.linalg.det(affine[:3, :3])))
    np.testing.assert_array_equal(tet_values_on_grid(mesh, mesh.tet_tags, labels.shape, affine), labels)
    np.testing.assert_array_equal(mesh.tet_tags.reshape(6, n), np.tile(labels[labels > 0], (6, 1)))
    # conforming: a face is on the boundary only where the voxel beside it is unlabelled
    boundary = np.count_nonzero(tet_neighbors(mesh.tets) < 0)
    padded = np.pad(labels > 0, 1)
    exposed = sum(np.count_nonzero(np.diff(padded.astype(int), axis=ax)) for ax in range(3))
    assert boundary == 2 * exposed  # two triangles per exposed square
