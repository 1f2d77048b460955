"""Layer thickness of a tissue in a mesh and in its label volume, measured the same way: for each point
of the layer's outer boundary, the distance to the closest point of its inner boundary (the skull
between scalp and CSF, the CSF between bone and grey matter).  Comparing the two distributions (their
percentiles) says whether meshing kept the layer (issue 20: within 0.5 mm).  Boundary points: the
centroids of the faces between the two tags (mesh), the centres of the voxel faces between them
(labels), both in world mm.

The two representations sample their boundaries differently (a coarse surface triangulation against
1-voxel faces; a voxel layer one voxel thick reads 0.71-1 mm on its staircase), so the mesh is also
measured after :func:`stimsim.mesh.voxelize.tet_values_on_grid` puts its tags back on the label grid
(``"mesh_on_grid"``): the same faces, the same estimator, only the boundaries' positions differ.
:func:`tag_dice` gives the per-tissue overlap on that grid.  Numbers on Colin27: docs/meshing.md."""

from __future__ import annotations

import numpy as np


def interface_points_mesh(mesh, a: int, b: int) -> np.ndarray:
    """(k, 3) centroids (mm) of the faces between a tetrahedron tagged ``a`` and one tagged ``b``."""
    from ...mesh.model import TET_FACES
    from .topology import tet_neighbors

    nb = tet_neighbors(mesh.tets)
    out = []
    for k, face in enumerate(TET_FACES):
        sel = (mesh.tet_tags == a) & (nb[:, k] >= 0)
        sel[sel] = mesh.tet_tags[nb[sel, k]] == b
        out.append(mesh.nodes[mesh.tets[sel][:, list(face)]].mean(axis=1))
    return np.concatenate(out)


def interface_points_labels(tags: np.ndarray, affine: np.ndarray, a: int, b: int) -> np.ndarray:
    """(k, 3) centres (world mm) of the voxel faces between a voxel tagged ``a`` and one tagged ``b``."""
    out = []
    for ax in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        for here, there, shift in ((tuple(lo), tuple(hi), 0.5), (tuple(hi), tuple(lo), -0.5)):
            idx = np.argwhere((tags[here] == a) & (tags[there] == b)).astype(float)
            if shift < 0:
                idx[:, ax] += 1.0  # the slice started at 1
            idx[:, ax] += shift
            out.append(idx)
    ijk = np.concatenate(out)
    return ijk @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]


def layer_thickness(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """For each point of ``outer``, the distance (mm) to the closest point of ``inner`` (empty if either is)."""
    from scipy.spatial import cKDTree

    if not len(outer) or not len(inner):
        return np.zeros(0)
    return cKDTree(inner).query(outer)[0]


def _voxel_thickness(tags, affine, layer, inside, outside):
    return layer_thickness(interface_points_labels(tags, affine, layer, outside),
                           interface_points_labels(tags, affine, layer, inside))


def thickness_percentiles(mesh, tags: np.ndarray, affine: np.ndarray, layer: int, inside: int, outside: int,
                          qs=(10, 50, 90), mesh_on_grid: np.ndarray | None = None) -> dict:
    """Percentiles (mm) of the thickness of tag ``layer`` between tags ``inside`` and ``outside`` (SimNIBS
    tags): ``{"mesh": [...], "labels": [...], "mesh_on_grid": [...], "percentiles": [...]}``, the last
    on the mesh's tags at the label grid's voxel centres (``mesh_on_grid`` if given, else computed)."""
    from ...mesh.voxelize import tet_values_on_grid

    if mesh_on_grid is None:
        mesh_on_grid = tet_values_on_grid(mesh, mesh.tet_tags, tags.shape, affine)
    elif mesh_on_grid.shape != tags.shape:
        raise ValueError(f"mesh_on_grid has shape {mesh_on_grid.shape}, the labels {tags.shape}")
    m = layer_thickness(interface_points_mesh(mesh, layer, outside), interface_points_mesh(mesh, layer, inside))
    pct = (lambda d: [float(x) for x in np.percentile(d, qs)] if len(d) else [float("nan")] * len(qs))
    return {"mesh": pct(m), "labels": pct(_voxel_thickness(tags, affine, layer, inside, outside)),
            "mesh_on_grid": pct(_voxel_thickness(mesh_on_grid, affine, layer, inside, outside)), "percentiles": list(qs)}


def tag_dice(a: np.ndarray, b: np.ndarray, tags) -> dict[int, float]:
    """Dice overlap of each tag in two volumes on one grid (e.g. the labels and the mesh's tags on
    their grid): 2 |A & B| / (|A| + |B|), nan for a tag in neither."""
    out = {}
    for t in tags:
        x, y = a == t, b == t
        n = int(np.count_nonzero(x)) + int(np.count_nonzero(y))
        out[int(t)] = 2.0 * np.count_nonzero(x & y) / n if n else float("nan")
    return out
