"""Remove poorly shaped tetrahedra after TetGen by moving their nodes a little (sliver perturbation).

TetGen with ``-Y`` keeps every surface triangle, so it cannot split the flat "wedge" tetrahedra that
sit on a surface (four nodes on it, two faces on it) where the surface is nearly flat.  Such a wedge
needs only a small height to be well shaped: on a flat quadrilateral of side s, lifting the shared
edge by ~0.03 s opens its smallest dihedral angle to 5 deg.  So each corner of a poor tetrahedron is
tried at a few small steps along two directions, and a step is kept when it improves the shapes of
all tetrahedra around that node (worst first, then their sum) without making more of them poor or
turning one flat or over.  A node on a tissue surface stays within ``max_move_mm`` of the plane of
each of its surface faces as the mesher made them (so it slides along a flat surface, along the
line of a crease, and stays put at a corner) and within ``max_slide_mm`` (3x) of where it was:
well under a voxel off the anatomy, so volumes and layer thicknesses stay as they were.  Interior
nodes move freely.  Shape:
min(smallest dihedral / 5 deg, radius ratio / 0.1), the two bounds of docs/mesh_checks.md.
Measured figures: docs/meshing.md.
"""

from __future__ import annotations

import numpy as np

from .topology import tet_neighbors, vertex_incidence

MIN_DIHEDRAL_DEG = 5.0
MIN_RADIUS_RATIO = 0.1
# fractions of the poor tetrahedron's mean edge length
STEPS = np.array([0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2])


def surface_faces(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray,
                  neighbors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes on a tissue surface (the outer boundary or a face between two tags), and the unit normals
    of the surface faces around each node as CSR ``(on, ptr, normals)``: node v's are
    ``normals[ptr[v]:ptr[v + 1]]`` (their sign does not matter here)."""
    nb = tet_neighbors(tets) if neighbors is None else neighbors
    n = len(nodes)
    faces = []
    for k in range(4):
        other = nb[:, k]
        cut = (other < 0) | (tags[np.maximum(other, 0)] != tags)
        cut &= (other < 0) | (tags < tags[np.maximum(other, 0)])  # a face between two tissues once
        faces.append(np.delete(tets[cut], k, axis=1))
    f = np.concatenate(faces)
    p = nodes[f]
    unit = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    unit /= np.maximum(np.linalg.norm(unit, axis=1), 1e-300)[:, None]
    ptr, around = vertex_incidence(f, n)
    on = ptr[1:] > ptr[:-1]
    return on, ptr, np.ascontiguousarray(unit[around])


def perturb_slivers(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray, *, max_move_mm: float,
                    max_slide_mm: float | None = None, rounds: int = 12, neighbors: np.ndarray | None = None,
                    min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
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
    # the mesh's orientation: the sign most tetrahedra have (the rule of stimsim.mesh.checks)
    sign = -1.0 if np.count_nonzero(q < 0) > len(q) // 2 else 1.0
    if sign < 0:
        q = shapes(x, tets, sign, min_dihedral_deg, min_radius_ratio)
    info = {"poor_before": int(np.count_nonzero(q < 1.0)), "rounds": 0, "nodes_moved": 0}
    if info["poor_before"]:
        ptr, idx = node_tets(tets, n)
        pinned, fptr, fnormal = surface_faces(x, tets, tags, neighbors)
        slide = 3.0 * max_move_mm if max_slide_mm is None else max_slide_mm
        for _ in range(rounds):
            bad = np.flatnonzero(q < 1.0)
            bad = bad[np.argsort(q[bad], kind="stable")]  # the worst first
            if not move_vertices(x, x0, tets, q, ptr, idx, bad, pinned, fptr, fnormal, float(max_move_mm),
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
