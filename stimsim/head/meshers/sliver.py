"""Remove poorly shaped tetrahedra after TetGen by moving their nodes a little (sliver perturbation).

TetGen with ``-Y`` keeps every surface triangle, so it cannot split the flat "wedge" tetrahedra that
sit on a surface (four nodes on it, two faces on it) where the surface is nearly flat.  Such a wedge
needs only a small height to be well shaped: on a flat quadrilateral of side s, lifting the shared
edge by ~0.03 s opens its smallest dihedral angle to 5 deg.  So each corner of a poor tetrahedron is
tried at a few small steps along two directions, and a step is kept when it improves the shapes of
all tetrahedra around that node (worst first, then their sum).  Nodes on tissue surfaces move at
most ``max_move_mm`` from where the mesher put them (well under a voxel: volumes and layer
thicknesses stay as they were); interior nodes move freely but never invert a tetrahedron.  Shape:
min(smallest dihedral / 5 deg, radius ratio / 0.1), the two bounds of docs/mesh_checks.md.
Measured figures: docs/meshing.md.
"""

from __future__ import annotations

import numpy as np

from .topology import tet_neighbors

MIN_DIHEDRAL_DEG = 5.0
MIN_RADIUS_RATIO = 0.1
# fractions of the poor tetrahedron's mean edge length
STEPS = np.array([0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2])


def surface_normals(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray,
                    neighbors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes on a tissue surface (the outer boundary or a face between two tags), and their unit
    normals: the area-weighted normals of those faces, each pointing from the lower tag to the
    higher one or out of the mesh (the layers nest in that order).  Where they cancel to less than
    half of their summed length (a fold, a thin sheet, a junction of many surfaces) the normal is 0."""
    nb = tet_neighbors(tets) if neighbors is None else neighbors
    n = len(nodes)
    on = np.zeros(n, bool)
    acc = np.zeros((n, 3))
    mag = np.zeros(n)
    for k in range(4):
        other = nb[:, k]
        cut = (other < 0) | (tags[np.maximum(other, 0)] != tags)
        cut &= (other < 0) | (tags <= tags[np.maximum(other, 0)])  # each inner face once
        t = tets[cut]
        face = np.delete(t, k, axis=1)
        p = nodes[face]
        fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        # outward from the tet (away from its k-th node), i.e. towards the neighbour
        away = np.einsum("ij,ij->i", fn, p[:, 0] - nodes[t[:, k]]) < 0
        fn[away] *= -1
        fl = np.linalg.norm(fn, axis=1)
        for c in range(3):
            on[face[:, c]] = True
            for d in range(3):
                acc[:, d] += np.bincount(face[:, c], weights=fn[:, d], minlength=n)
            mag += np.bincount(face[:, c], weights=fl, minlength=n)
    length = np.linalg.norm(acc, axis=1)
    good = on & (length > 0.5 * mag)
    normal = np.zeros((n, 3))
    normal[good] = acc[good] / length[good, None]
    return on, normal


def perturb_slivers(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray, *, max_move_mm: float,
                    max_slide_mm: float | None = None, rounds: int = 12, neighbors: np.ndarray | None = None, min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
                    min_radius_ratio: float = MIN_RADIUS_RATIO) -> tuple[np.ndarray, dict]:
    """Nodes moved so that fewer tetrahedra fall below the shape bounds; the connectivity and tags
    are unchanged.  Returns ``(nodes, info)``; ``info`` counts the poor tetrahedra before and after,
    the nodes moved and the largest move of a surface node (mm)."""
    from ._sliver_kernels import move_vertices, node_tets, shapes

    x = np.ascontiguousarray(nodes, np.float64).copy()
    x0 = x.copy()
    tets = np.ascontiguousarray(tets, np.int64)
    tags = np.asarray(tags)
    n = len(x)
    q = shapes(x, tets, 1.0, min_dihedral_deg, min_radius_ratio)
    # the mesh's orientation: the sign most tetrahedra have
    sign = 1.0 if np.count_nonzero(q >= 0) >= len(q) // 2 else -1.0
    if sign < 0:
        q = shapes(x, tets, sign, min_dihedral_deg, min_radius_ratio)
    info = {"poor_before": int(np.count_nonzero(q < 1.0)), "rounds": 0, "nodes_moved": 0}
    if info["poor_before"]:
        ptr, idx = node_tets(tets, n)
        pinned, normal = surface_normals(x, tets, tags, neighbors)
        slide = 3.0 * max_move_mm if max_slide_mm is None else max_slide_mm
        for _ in range(rounds):
            bad = np.flatnonzero(q < 1.0)
            bad = bad[np.argsort(q[bad], kind="stable")]  # the worst first
            if not move_vertices(x, x0, tets, q, ptr, idx, bad, pinned, normal, float(max_move_mm),
                                   float(slide), sign, min_dihedral_deg, min_radius_ratio, STEPS):
                break
            info["rounds"] += 1
        moved = (x != x0).any(axis=1)
        info["nodes_moved"] = int(moved.sum())
        shift = np.linalg.norm(x - x0, axis=1)
        info["max_surface_move_mm"] = float(shift[pinned].max()) if pinned.any() else 0.0
        info["max_move_mm"] = float(shift.max())
    info["poor_after"] = int(np.count_nonzero(q < 1.0))
    info["inverted_after"] = int(np.count_nonzero(q < 0.0))
    return x, info
