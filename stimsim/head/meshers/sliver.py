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

from .topology import signed_volumes, tet_neighbors, vertex_incidence

MIN_DIHEDRAL_DEG = 5.0
MIN_RADIUS_RATIO = 0.1
# fractions of the poor tetrahedron's mean edge length
STEPS = np.array([0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2])


def _tissue_faces(x: np.ndarray, tets: np.ndarray, tags: np.ndarray, nb: np.ndarray):
    """The faces on the outer boundary or between two tags, each once: ``(faces, area_normals, pairs)``,
    the area vectors pointing out of the lower tag (into the outside on the boundary), ``pairs`` one
    row per face: (own tag, other tag or the own tag again on the outside, 1 on the outside), so that
    no tag value stands for the outside."""
    faces, normals, pairs = [], [], []
    for k in range(4):
        other = nb[:, k]
        outside = other < 0
        otag = tags[np.maximum(other, 0)]
        cut = outside | ((otag != tags) & (tags < otag))  # a face between two tissues once
        f = np.delete(tets[cut], k, axis=1)
        p = x[f]
        an = 0.5 * np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        inward = np.einsum("ij,ij->i", an, x[tets[cut, k]] - p[:, 0]) > 0
        an[inward] *= -1.0
        faces.append(f)
        normals.append(an)
        pairs.append(np.column_stack([tags[cut], np.where(outside[cut], tags[cut], otag[cut]), outside[cut]]))
    return np.concatenate(faces), np.concatenate(normals), np.concatenate(pairs)


def surface_faces(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray,
                  neighbors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes on a tissue surface (the outer boundary or a face between two tags), and the unit normals
    of the surface faces around each node as CSR ``(on, ptr, normals)``: node v's are
    ``normals[ptr[v]:ptr[v + 1]]`` (their sign does not matter here)."""
    nb = tet_neighbors(tets) if neighbors is None else neighbors
    f, unit, _ = _tissue_faces(nodes, tets, np.asarray(tags), nb)
    unit /= np.maximum(np.linalg.norm(unit, axis=1), 1e-300)[:, None]
    ptr, around = vertex_incidence(f, len(nodes))
    on = ptr[1:] > ptr[:-1]
    return on, ptr, np.ascontiguousarray(unit[around])


def _surface_index(pairs: np.ndarray) -> np.ndarray:
    """One index per distinct row of :func:`_tissue_faces`'s ``pairs`` (per tissue surface): the tags
    renumbered 0..n-1 first, then a 1-D unique (~10x faster than one by rows)."""
    if not len(pairs):
        return np.zeros(0, np.int64)
    values, index = np.unique(pairs[:, :2], return_inverse=True)
    index = index.reshape(-1, 2).astype(np.int64)
    key = (index[:, 0] * len(values) + index[:, 1]) * 2 + pairs[:, 2].astype(np.int64)
    return np.unique(key, return_inverse=True)[1].ravel()


def restore_interface_volumes(x: np.ndarray, x0: np.ndarray, tets: np.ndarray, tags: np.ndarray,
                              neighbors: np.ndarray | None, q: np.ndarray, sign: float, max_move_mm: float,
                              max_slide_mm: float, min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
                              min_radius_ratio: float = MIN_RADIUS_RATIO, sweeps: int = 3):
    """Nodes ``x`` (moved from ``x0`` by the sliver pass) with each tissue surface moved back along its
    normals by the volume the pass swept through it; ``(x, q, swept_mm3, left_mm3)``: ``q`` the shapes
    again, ``swept_mm3`` the volume the pass swept and ``left_mm3`` what is left after this (each the
    sum over the surfaces of its magnitude).

    Why: the moves that open a flat tetrahedron lying across a thin layer mostly thicken the layer,
    so over a whole thin layer they add up: nested spheres with a 1 mm bone shell came out with
    bone +3.7 % at 8 mm elements, all of it from this pass (the surfaces before it held the shell to
    0.1 %).  Each surface (each pair of tags) is moved as one by its swept volume over its area:
    hundredths of a millimetre, a small part of the pass's moves.  Nodes on two surfaces stay where
    they are; so does a node that would leave the pass's bounds (``max_move_mm`` off the plane of
    any of its surface faces, ``max_slide_mm`` from where it was), and the nodes of a tetrahedron the
    shift would leave poor that was not (or worse than it was), or turn over either way.  A few sweeps
    put back what the held nodes left."""
    from ._sliver_kernels import shapes

    nb = tet_neighbors(tets) if neighbors is None else neighbors
    f, an, pairs = _tissue_faces(x0, tets, np.asarray(tags), nb)
    which = _surface_index(pairs)

    def _swept(nodes):
        return np.bincount(which, np.einsum("ij,ij->i", an, (nodes - x0)[f].mean(axis=1)), minlength=n_surf)

    n_surf = int(which.max()) + 1 if len(which) else 0
    if not n_surf:
        return x, q, 0.0, 0.0
    n = len(x)
    lo = np.full(n, np.iinfo(np.int64).max)
    hi = np.full(n, -1, np.int64)
    np.minimum.at(lo, f.ravel(), np.repeat(which, 3))
    np.maximum.at(hi, f.ravel(), np.repeat(which, 3))
    single = np.flatnonzero((hi >= 0) & (lo == hi))  # nodes on one surface only
    normal = np.zeros((n, 3))
    np.add.at(normal, f.ravel(), np.repeat(an, 3, axis=0))
    area = np.linalg.norm(an, axis=1)
    around = np.bincount(f.ravel(), np.repeat(area, 3), minlength=n)[single]
    length = np.linalg.norm(normal[single], axis=1)
    # a node whose faces' normals cancel (a corner, a closed flat piece) has no normal: it stays
    free = length > 1e-3 * around
    single, length = single[free], length[free]
    unit = normal[single] / length[:, None]
    face_unit = an / np.maximum(area, 1e-300)[:, None]
    held = np.zeros(n, bool)
    swept = _swept(x)
    first = float(np.abs(swept).sum())
    for _ in range(int(sweeps)):
        # the volume a surface sweeps per mm of its free nodes' shift: the sum of |node normal| / 3 (its
        # area where the surface is smooth, less where it is jagged)
        moving = ~held[single]
        rate = np.bincount(lo[single][moving], length[moving] / 3.0, minlength=n_surf)
        step = np.where(rate > 0, -swept / np.maximum(rate, 1e-300), 0.0)[lo[single]]
        trial = x.copy()
        trial[single] += step[:, None] * unit
        trial[held] = x[held]
        shift = trial - x0
        off_plane = np.abs(np.einsum("ijk,ik->ij", shift[f], face_unit)) > max_move_mm + 1e-12
        out = np.concatenate([f[off_plane], np.flatnonzero(np.einsum("ij,ij->i", shift, shift)
                                                           > max_slide_mm ** 2 + 1e-12)])
        held[out] = True
        trial[out] = x[out]
        # keep the nodes of tetrahedra the shift would leave poorer, or turn; each round puts back at
        # least one moved node, so this ends
        while True:
            qt = shapes(trial, tets, sign, min_dihedral_deg, min_radius_ratio)
            worse = ((qt < 1.0) & (qt < q - 1e-12)) | ((qt < 0.0) != (q < 0.0))
            if not worse.any():
                break
            back = np.unique(tets[worse])
            held[back] = True
            trial[back] = x[back]
        x, q = trial, qt
        swept = _swept(x)
    return x, q, first, float(np.abs(swept).sum())


def perturb_slivers(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray, *, max_move_mm: float,
                    max_slide_mm: float | None = None, rounds: int = 12, neighbors: np.ndarray | None = None,
                    min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
                    min_radius_ratio: float = MIN_RADIUS_RATIO, keep_volumes: bool = True) -> tuple[np.ndarray, dict]:
    """Nodes moved so that fewer tetrahedra fall below the shape bounds; the connectivity and tags
    are unchanged.  Returns ``(nodes, info)``; ``info`` counts the poor tetrahedra before and after,
    the nodes moved and the largest move of a surface node (mm).  ``keep_volumes``: each tissue
    surface is then moved back along its normals by the volume the pass swept through it
    (:func:`restore_interface_volumes`; ``info["volume_swept_mm3"]`` and ``"volume_left_mm3"``)."""
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
        if keep_volumes and (x != x0).any():
            x, q, info["volume_swept_mm3"], info["volume_left_mm3"] = restore_interface_volumes(
                x, x0, tets, tags, neighbors, q, sign, float(max_move_mm), float(slide), min_dihedral_deg,
                min_radius_ratio)
        moved = (x != x0).any(axis=1)
        info["nodes_moved"] = int(moved.sum())
        shift = np.linalg.norm(x - x0, axis=1)
        info["max_surface_move_mm"] = float(shift[pinned].max()) if pinned.any() else 0.0
        info["max_move_mm"] = float(shift.max())
    info["poor_after"] = int(np.count_nonzero(q < 1.0))
    info["inverted_after"] = int(np.count_nonzero(q < 0.0))
    return x, info


#: the six edges of a tetrahedron (corner pairs)
_TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _oriented(x: np.ndarray, new: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``new`` tetrahedra (as :func:`_ring_flips` builds them: those on the edge's first end's side,
    then as many on the other's) with two corners swapped where their signed volume is against
    ``sign``, and their absolute volumes; None unless each side's are all of one orientation, opposite
    to the other side's (else one of them would be turned over)."""
    vol = signed_volumes(x, new)
    half = len(new) // 2
    first, second = np.sign(vol[:half]), np.sign(vol[half:])
    if not (first[0] != 0 and (first == first[0]).all() and (second == -first[0]).all()):
        return None
    flip = vol * sign < 0
    new = new.copy()
    new[flip] = new[flip][:, [1, 0, 2, 3]]
    return new, np.abs(vol)


def _ring_flips(tets, ring, p, r):
    """The ways to fill the closed ring of tetrahedra ``ring`` around the edge ``p``-``r`` without that
    edge: 3 tetrahedra -> 2 (the triangle of the ring's three other corners, one tetrahedron on each
    side), 4 -> 4 (the ring's quadrilateral split along either diagonal).  Each a ``(k, 4)`` array, the
    tetrahedra on ``p``'s side first; none where the ring is open (the edge on the mesh's boundary) or
    has more tetrahedra."""
    rest = tets[ring].ravel()
    rest = rest[(rest != p) & (rest != r)]
    others, count = np.unique(rest, return_counts=True)
    if len(others) != len(ring) or (count != 2).any():  # each other corner in two of them: closed
        return []
    if len(ring) == 3:
        o = others
        return [np.array([[o[0], o[1], o[2], p], [o[0], o[1], o[2], r]])]
    # 4: the quadrilateral's corners in order around the edge (each ring tetrahedron joins two of them)
    pairs = rest.reshape(-1, 2)
    order = [pairs[0, 0], pairs[0, 1]]
    while len(order) < 4:
        nxt = [b if a == order[-1] else a for a, b in pairs if order[-1] in (a, b) and order[-2] not in (a, b)]
        if not nxt:
            return []
        order.append(nxt[0])
    o = order
    return [np.array([[o[0], o[1], o[2], p], [o[0], o[2], o[3], p], [o[0], o[1], o[2], r], [o[0], o[2], o[3], r]]),
            np.array([[o[1], o[2], o[3], p], [o[1], o[3], o[0], p], [o[1], o[2], o[3], r], [o[1], o[3], o[0], r]])]


def flip_slivers(nodes: np.ndarray, tets: np.ndarray, tags: np.ndarray, *, rounds: int = 3,
                 min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
                 min_radius_ratio: float = MIN_RADIUS_RATIO) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tetrahedra below the shape bounds removed by edge flips inside one tissue: the 3 or 4
    tetrahedra around an edge of a poor one, all of one tag and closing a ring around it, replaced by 2
    (3-2 flip) or 4 others (4-4) without that edge, when the worst shape among them gets better.
    The nodes stay, and so do every tissue surface and every tissue's volume (the ring's faces are
    kept; the new tetrahedra fill the same space, checked by their volumes).  Returns ``(tets, tags,
    info)``; ``info`` counts the poor tetrahedra before and after and the flips.

    Why: the sliver pass only moves nodes, and a surface node may move little: on Colin27 it left 78
    tetrahedra below the bounds, these flips 35 (those left lie on tissue surfaces)."""
    from ._sliver_kernels import shapes

    x = np.ascontiguousarray(nodes, np.float64)
    tets = np.ascontiguousarray(tets, np.int64)
    tags = np.asarray(tags)
    q = shapes(x, tets, 1.0, min_dihedral_deg, min_radius_ratio)
    sign = -1.0 if np.count_nonzero(q < 0) > len(q) // 2 else 1.0
    if sign < 0:
        q = shapes(x, tets, sign, min_dihedral_deg, min_radius_ratio)
    info = {"poor_before": int(np.count_nonzero(q < 1.0)), "flips_3_2": 0, "flips_4_4": 0}
    for _ in range(int(rounds)):
        poor = np.flatnonzero((q < 1.0) & (q >= 0.0))
        if not len(poor):
            break
        poor = poor[np.argsort(q[poor], kind="stable")]  # the worst first
        # the tetrahedra at the poor ones' corners (every ring around one of their edges), by node
        near = np.flatnonzero(np.isin(tets, np.unique(tets[poor])).any(axis=1))
        ptr, local = vertex_incidence(tets[near], len(x))
        around = near[local]
        used = np.zeros(len(tets), bool)
        gone, added, added_tags = [], [], []
        for i in poor:
            if used[i]:
                continue
            for a, b in _TET_EDGES:
                p, r = tets[i, a], tets[i, b]
                ring = np.intersect1d(around[ptr[p]:ptr[p + 1]], around[ptr[r]:ptr[r + 1]], assume_unique=True)
                if (len(ring) not in (3, 4) or used[ring].any() or (tags[ring] != tags[i]).any()
                        or (q[ring] < 0).any()):  # (a turned ring: the same space is not the same)
                    continue
                before = float(q[ring].min())
                held = float(np.abs(signed_volumes(x, tets[ring])).sum())
                best = None
                for new in _ring_flips(tets, ring, p, r):
                    oriented = _oriented(x, new, sign)
                    if oriented is None:
                        continue
                    new, vol = oriented
                    if vol.min() <= 1e-12 * held or abs(vol.sum() - held) > 1e-9 * held:
                        continue  # not the same space (the edge does not pass through the new face)
                    after = float(shapes(x, new, sign, min_dihedral_deg, min_radius_ratio).min())
                    if after > before + 1e-9 and (best is None or after > best[0]):
                        best = (after, new)
                if best is not None:
                    used[ring] = True
                    gone.append(ring)
                    added.append(best[1])
                    added_tags.append(np.full(len(best[1]), tags[i]))
                    info["flips_3_2" if len(ring) == 3 else "flips_4_4"] += 1
                    break
        if not gone:
            break
        kept = np.ones(len(tets), bool)
        kept[np.concatenate(gone)] = False
        tets = np.concatenate([tets[kept], *added])
        tags = np.concatenate([tags[kept], *added_tags])
        q = shapes(x, tets, sign, min_dihedral_deg, min_radius_ratio)
    info["poor_after"] = int(np.count_nonzero(q < 1.0))
    return tets, tags, info
