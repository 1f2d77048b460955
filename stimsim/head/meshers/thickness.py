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
:func:`tag_dice` gives the per-tissue overlap on that grid.

The nearest-point distance above counts every bone face (a mandible 30 mm from the CSF sets the upper
percentiles), and reads thinner where a boundary is rough (the nearest point is the closest bump).
:func:`ray_thickness` measures the layer as the issue words it, from its inner to its outer boundary
sampled over the head: along rays from the centre of the intracranial space, the length of the layer
between the last inner-tissue sample and the first outer-tissue (or background) one, in two volumes
on the same rays, so that each ray gives a paired difference.  Numbers on Colin27: docs/meshing.md."""

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
    tags): ``{"mesh": [...], "labels": [...], "mesh_on_grid": [...], "percentiles": [...],
    "paired_on_grid": [...]}``: ``"mesh_on_grid"`` on the mesh's tags at the label grid's voxel centres
    (``mesh_on_grid`` if given, else computed); ``"paired_on_grid"`` the percentiles of the difference,
    at each of the labels' outer-boundary points, between the thickness at the nearest such point of the
    mesh on the grid and the labels' own."""
    from ...mesh.voxelize import tet_values_on_grid

    if mesh_on_grid is None:
        mesh_on_grid = tet_values_on_grid(mesh, mesh.tet_tags, tags.shape, affine)
    elif mesh_on_grid.shape != tags.shape:
        raise ValueError(f"mesh_on_grid has shape {mesh_on_grid.shape}, the labels {tags.shape}")
    from scipy.spatial import cKDTree

    m = layer_thickness(interface_points_mesh(mesh, layer, outside), interface_points_mesh(mesh, layer, inside))
    pct = (lambda d: [float(x) for x in np.percentile(d, qs)] if len(d) else [float("nan")] * len(qs))
    outer_l = interface_points_labels(tags, affine, layer, outside)
    outer_g = interface_points_labels(mesh_on_grid, affine, layer, outside)
    lab = layer_thickness(outer_l, interface_points_labels(tags, affine, layer, inside))
    grid = layer_thickness(outer_g, interface_points_labels(mesh_on_grid, affine, layer, inside))
    # paired by place: each labels point against the mesh's (on the grid) nearest outer-boundary point.
    # The percentiles above also move when one head has more boundary in one place (Colin27's skull
    # base: a more folded outer bone surface in the mesh moved the 90th percentile by -0.67 mm, while
    # at the thick bone itself the mesh reads +0.21 mm, median)
    paired = (grid[cKDTree(outer_g).query(outer_l)[1]] - lab) if len(lab) and len(grid) else np.zeros(0)
    return {"mesh": pct(m), "labels": pct(lab), "mesh_on_grid": pct(grid), "percentiles": list(qs),
            "paired_on_grid": pct(paired)}


def tag_dice(a: np.ndarray, b: np.ndarray, tags) -> dict[int, float]:
    """Dice overlap of each tag in two volumes on one grid (e.g. the labels and the mesh's tags on
    their grid): 2 |A & B| / (|A| + |B|), nan for a tag in neither."""
    out = {}
    for t in tags:
        x, y = a == t, b == t
        n = int(np.count_nonzero(x)) + int(np.count_nonzero(y))
        out[int(t)] = 2.0 * np.count_nonzero(x & y) / n if n else float("nan")
    return out


#: tags inside the skull (SimNIBS WM, GM, CSF): the rays of :func:`ray_thickness` start at their centroid
INTRACRANIAL_TAGS = (1, 2, 3)


def ray_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (Fibonacci lattice: equal solid angle each)."""
    i = np.arange(int(n)) + 0.5
    z = 1.0 - 2.0 * i / int(n)
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def ray_thickness(volumes, affine: np.ndarray, layer: int, inner, outer, centre_mm, directions,
                  step_vox: float = 0.25, chunk: int = 256, return_nested: bool = False):
    """Thickness (mm) of tag ``layer`` along rays from ``centre_mm`` (world mm) in ``directions``, in each
    of ``volumes`` (integer tag arrays on the grid ``affine``): ``(len(volumes), n_rays)``.

    Along a ray, sampled every ``step_vox`` voxels at the nearest voxel: the first sample tagged in
    ``outer`` or 0 (background, air) ends the ray; the last sample tagged in ``inner`` before it starts
    the layer; the thickness is the length of the ``layer`` samples between the two.  nan where a ray
    meets no ``inner`` tag before that end or leaves the grid first (then there is no layer to measure).

    With ``return_nested``, also a bool array of the same shape: the ray is *nested* in that volume when no
    ``layer`` or ``inner`` sample follows the end (a label volume with scalp voxels between the CSF and
    the bone, bone past a sinus, or a CSF pocket outside the skull is not: its first layer run is not
    the layer's thickness there)."""
    A = np.asarray(affine, float)
    inv = np.linalg.inv(A)
    volumes = [np.asarray(v) for v in volumes]
    shape = np.array(volumes[0].shape)
    if any(v.shape != tuple(shape) for v in volumes):
        raise ValueError(f"the volumes must share one grid, got shapes {[v.shape for v in volumes]}")
    centre = np.asarray(centre_mm, float)
    step = float(step_vox) * float(np.linalg.norm(A[:3, :3], axis=0).min())
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]) @ A.T
    radius = np.arange(0.0, float(np.linalg.norm(corners[:, :3] - centre, axis=1).max()) + step, step)
    directions = np.asarray(directions, float)
    out = np.full((len(volumes), len(directions)), np.nan)
    nested = np.zeros(out.shape, bool)
    inner, outer = np.asarray(list(inner)), np.asarray(list(outer))
    layer_or_inner = np.append(inner, layer)
    m = len(radius)
    for lo in range(0, len(directions), int(chunk)):
        d = directions[lo:lo + int(chunk)]
        ijk = np.rint((centre + d[:, None, :] * radius[None, :, None]) @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < shape), axis=2)
        ijk[~inside] = 0
        for vi, vol in enumerate(volumes):
            t = np.where(inside, vol[ijk[..., 0], ijk[..., 1], ijk[..., 2]], -1)
            end = np.isin(t, outer) | (t <= 0)  # outer tissue, background, or off the grid (-1)
            first_end = np.where(end.any(axis=1), end.argmax(axis=1), m)
            before = np.arange(m)[None, :] < first_end[:, None]
            in_inner = np.isin(t, inner) & before
            has_inner = in_inner.any(axis=1)
            last_inner = np.where(has_inner, m - 1 - in_inner[:, ::-1].argmax(axis=1), m)
            between = (np.arange(m)[None, :] > last_inner[:, None]) & before
            length = np.count_nonzero((t == layer) & between, axis=1) * step
            ended_on_grid = (first_end < m) & (t[np.arange(len(t)), np.minimum(first_end, m - 1)] >= 0)
            out[vi, lo:lo + len(d)] = np.where(has_inner & ended_on_grid, length, np.nan)
            if return_nested:
                after = np.isin(t, layer_or_inner) & ~before
                nested[vi, lo:lo + len(d)] = ~after.any(axis=1)
    return (out, nested) if return_nested else out


def ray_thickness_summary(tags: np.ndarray, mesh_on_grid: np.ndarray, affine: np.ndarray, layer: int, inner,
                          outer, n_rays: int = 4000, qs=(10, 50, 90)) -> dict:
    """:func:`ray_thickness` of the labels (``tags``) and of the mesh's tags on their grid, on the same
    ``n_rays`` rays from the centroid of the labels' :data:`INTRACRANIAL_TAGS`: percentiles of each over
    the rays measured in both (``"labels"``, ``"mesh_on_grid"``), the paired difference mesh - labels
    per ray (``"paired_median"``, ``"paired_mean"``, ``"paired_abs_p90"``), the same percentiles over the
    upper half of the rays (``"upper"``: world +z, the vault when the head is upright) and ``"rays"``,
    the number measured in both; ``"nested"``: the same figures over the rays along which ``tags`` nest
    the layers (``return_nested`` of :func:`ray_thickness`); ``"present"``: the same over those of them
    along which the labels have the layer at all (a ray through a hole in the labels' skull, or where
    they put the brain against the bone, reads 0 there: a hole, not a thickness, which a mesh
    closing it at its minimum thickness reads as a thin layer)."""
    from scipy import ndimage as ndi

    A = np.asarray(affine, float)
    inside = np.isin(tags, INTRACRANIAL_TAGS)
    if not inside.any():
        raise ValueError("no intracranial voxels (tags 1-3): nothing to centre the rays on")
    centre = np.asarray(ndi.center_of_mass(inside)) @ A[:3, :3].T + A[:3, 3]
    del inside
    dirs = ray_directions(n_rays)
    (lab, msh), nested = ray_thickness([tags, mesh_on_grid], A, layer, inner, outer, centre, dirs,
                                       return_nested=True)
    both = np.isfinite(lab) & np.isfinite(msh)
    pct = (lambda x: [float(v) for v in np.percentile(x, qs)] if len(x) else [float("nan")] * len(qs))

    def figures(rays):
        diff = msh[rays] - lab[rays]
        up = rays & (dirs[:, 2] > 0)
        return {"labels": pct(lab[rays]), "mesh_on_grid": pct(msh[rays]),
                "paired_median": float(np.median(diff)) if len(diff) else float("nan"),
                "paired_mean": float(diff.mean()) if len(diff) else float("nan"),
                "paired_abs_p90": float(np.percentile(np.abs(diff), 90)) if len(diff) else float("nan"),
                "upper": {"labels": pct(lab[up]), "mesh_on_grid": pct(msh[up])}, "rays": int(rays.sum())}

    # the rays along which the labels nest the layers (nested in the first volume): where they do
    # not, its first run of the layer is not its thickness there, and the smooth nested surfaces of
    # a mesh cannot follow (Colin27: scalp voxels between CSF and bone over the vault, a skull
    # base with holes; 17 % of the bone's rays)
    return {**figures(both), "percentiles": list(qs), "nested": figures(both & nested[0]),
            "present": figures(both & nested[0] & (np.nan_to_num(lab) > 0)),
            "centre_mm": [float(c) for c in centre]}
