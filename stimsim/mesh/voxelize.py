"""Tetrahedral mesh -> voxel grid: the value of the tetrahedron that holds each voxel centre.

Used to compare a mesh with the label volume it was made from on that volume's own grid (layer
thickness measured the same way on both, per-voxel agreement of tags: docs/meshing.md), and to
export per-element values as an image.  A numba pass over the tetrahedra visits the voxel centres
in each one's bounding box and keeps those inside (barycentric coordinates, in index space, where
the voxel->mm affine keeps them unchanged)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["tet_values_on_grid"]


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
