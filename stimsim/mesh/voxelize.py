"""Tetrahedral mesh -> voxel grid: the value of the tetrahedron that holds each voxel centre; and
the other way, each labelled voxel as six tetrahedra (:func:`voxel_mesh`: the labels' own staircase
model, the reference the surface mesher's fields are compared with where no analytic one exists).

Used to compare a mesh with the label volume it was made from on that volume's own grid (layer
thickness measured the same way on both, per-voxel agreement of tags: docs/meshing.md), and to
export per-element values as an image.  A numba pass over the tetrahedra visits the voxel centres
in each one's bounding box and keeps those inside (barycentric coordinates, in index space, where
the voxel->mm affine keeps them unchanged)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["tet_values_on_grid", "voxel_mesh"]


@numba.njit(cache=True, nogil=True)
def _fill(nodes_ijk, tets, values, out, written):  # pragma: no cover - compiled
    nx, ny, nz = out.shape
    tol = 1e-9
    for e in range(tets.shape[0]):
        a = nodes_ijk[tets[e, 0]]
        m = np.empty((3, 3))
        lo = np.empty(3, np.int64)
        hi = np.empty(3, np.int64)
        for d in range(3):
            for j in range(3):
                m[d, j] = nodes_ijk[tets[e, j + 1], d] - a[d]
            x0 = min(a[d], nodes_ijk[tets[e, 1], d], nodes_ijk[tets[e, 2], d], nodes_ijk[tets[e, 3], d])
            x1 = max(a[d], nodes_ijk[tets[e, 1], d], nodes_ijk[tets[e, 2], d], nodes_ijk[tets[e, 3], d])
            lo[d] = max(int(np.ceil(x0 - tol)), 0)
            hi[d] = min(int(np.floor(x1 + tol)), out.shape[d] - 1)
        if lo[0] > hi[0] or lo[1] > hi[1] or lo[2] > hi[2]:
            continue
        det = (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
               + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))
        if det == 0.0:
            continue
        inv = np.empty((3, 3))
        inv[0, 0] = (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) / det
        inv[0, 1] = (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) / det
        inv[0, 2] = (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) / det
        inv[1, 0] = (m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]) / det
        inv[1, 1] = (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) / det
        inv[1, 2] = (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) / det
        inv[2, 0] = (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]) / det
        inv[2, 1] = (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) / det
        inv[2, 2] = (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) / det
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                for k in range(lo[2], hi[2] + 1):
                    if written[i, j, k]:  # a centre on a shared face: the first tetrahedron keeps it
                        continue
                    px, py, pz = i - a[0], j - a[1], k - a[2]
                    l1 = inv[0, 0] * px + inv[0, 1] * py + inv[0, 2] * pz
                    l2 = inv[1, 0] * px + inv[1, 1] * py + inv[1, 2] * pz
                    l3 = inv[2, 0] * px + inv[2, 1] * py + inv[2, 2] * pz
                    if l1 >= -tol and l2 >= -tol and l3 >= -tol and l1 + l2 + l3 <= 1.0 + tol:
                        out[i, j, k] = values[e]
                        written[i, j, k] = True


def tet_values_on_grid(mesh, values, shape, affine, fill=0) -> np.ndarray:
    """Array of ``shape`` holding, at each voxel centre, ``values[e]`` of the tetrahedron ``e`` that
    contains it (``fill`` outside the mesh).  ``values``: one number per tetrahedron (e.g.
    ``mesh.tet_tags``); ``affine``: the grid's voxel index -> mesh coordinates (mm) matrix."""
    values = np.asarray(values)
    if values.shape != (mesh.n_tets,):
        raise ValueError(f"values: one per tetrahedron ({mesh.n_tets}), got shape {values.shape}")
    affine = np.asarray(affine, float)
    nodes = np.asarray(mesh.nodes, float)
    if not np.isfinite(nodes).all():
        raise ValueError("mesh nodes: non-finite coordinates")
    ijk = (nodes - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    if np.abs(ijk).max(initial=0.0) > 2.0**52:  # beyond exact integers: the kernel's rounding overflows
        raise ValueError("mesh nodes: too far off the grid to place")
    tets = np.ascontiguousarray(mesh.tets, np.int64)
    if tets.size and (tets.min() < 0 or tets.max() >= len(ijk)):
        raise ValueError(f"mesh tets: node indices outside 0..{len(ijk) - 1}")
    # a NaN fill is allowed (an image of a field): the kernel records which voxels it wrote
    out = np.full(tuple(int(s) for s in shape), fill, dtype=np.result_type(values.dtype, np.min_scalar_type(fill)))
    _fill(np.ascontiguousarray(ijk), tets, values, out, np.zeros(out.shape, bool))
    return out


#: the six tetrahedra of a cube around its diagonal from corner 0 to corner 7 (corner number
#: 4 i + 2 j + k for the offsets i, j, k in {0, 1}): a conforming split when every cube uses it
_CUBE_TETS = np.array([(0, 4, 6, 7), (0, 4, 5, 7), (0, 2, 6, 7), (0, 2, 3, 7), (0, 1, 5, 7), (0, 1, 3, 7)])


def voxel_mesh(labels: np.ndarray, affine: np.ndarray):
    """Each voxel of ``labels`` above 0 as six tetrahedra tagged with its label, nodes at the voxels'
    corners (mm through ``affine``): a :class:`~stimsim.mesh.Mesh` whose tissues are exactly the
    labels' voxels.  Tetrahedra ``v``, ``v + n``, ... ``v + 5 n`` (``n`` voxels) belong to the ``v``-th
    labelled voxel in C order (``np.argwhere(labels > 0)[v]``), so a field per tetrahedron reshaped
    to ``(6, n, ...)`` and averaged gives one per voxel.  Large: 1 mm Colin27 is 23 M tetrahedra."""
    from .model import Mesh

    labels = np.asarray(labels)
    affine = np.asarray(affine, float)
    ijk = np.argwhere(labels > 0)
    shape = np.array(labels.shape, np.int64) + 1  # the corner grid
    corner = np.array([(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)], np.int64)
    ids = ((ijk[:, None, 0] + corner[:, 0]) * shape[1] + ijk[:, None, 1] + corner[:, 1]) * shape[2] \
        + ijk[:, None, 2] + corner[:, 2]  # (n, 8) corner-grid ids
    tets = np.concatenate([ids[:, q] for q in _CUBE_TETS])
    used, tets = np.unique(tets, return_inverse=True)
    tets = tets.reshape(-1, 4)
    nodes = (np.stack(np.unravel_index(used, tuple(shape)), 1) - 0.5) @ affine[:3, :3].T + affine[:3, 3]
    p = nodes[tets]
    neg = np.einsum("ij,ij->i", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), p[:, 3] - p[:, 0]) < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]  # (a left-handed affine turns them all)
    return Mesh(nodes, tets, np.tile(labels[tuple(ijk.T)], 6))
