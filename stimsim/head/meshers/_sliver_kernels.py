"""numba kernels of the sliver pass (:mod:`stimsim.head.meshers.sliver`): the shape measure of one
tetrahedron and the greedy vertex moves.  Sequential on purpose: each move changes the tetrahedra
the next candidate is judged on, and the ~1 % of vertices it visits take well under a second."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def tet_shape(x, t, sign, min_dihedral_deg, min_radius_ratio):  # pragma: no cover - compiled
    """min(smallest dihedral / min_dihedral_deg, radius ratio / min_radius_ratio) of the
    tetrahedron with node ids ``t`` (>= 1 meets both bounds); -1 when it is flat or turned
    against the mesh's orientation ``sign`` (+1 / -1)."""
    p0x, p0y, p0z = x[t[0], 0], x[t[0], 1], x[t[0], 2]
    ax, ay, az = x[t[1], 0] - p0x, x[t[1], 1] - p0y, x[t[1], 2] - p0z
    bx, by, bz = x[t[2], 0] - p0x, x[t[2], 1] - p0y, x[t[2], 2] - p0z
    cx, cy, cz = x[t[3], 0] - p0x, x[t[3], 1] - p0y, x[t[3], 2] - p0z
    # b x c, a x c, a x b
    bcx, bcy, bcz = by * cz - bz * cy, bz * cx - bx * cz, bx * cy - by * cx
    acx, acy, acz = ay * cz - az * cy, az * cx - ax * cz, ax * cy - ay * cx
    abx, aby, abz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    det = (ax * bcx + ay * bcy + az * bcz) * sign  # 6 V, > 0 when oriented as the mesh
    if det <= 0.0:
        return -1.0
    # face normals (face k opposite node k), outward for a positive tet, length 2 * area
    dx, dy, dz = bx - ax, by - ay, bz - az
    ex, ey, ez = cx - ax, cy - ay, cz - az
    n0x, n0y, n0z = dy * ez - dz * ey, dz * ex - dx * ez, dx * ey - dy * ex
    n1x, n1y, n1z = -bcx, -bcy, -bcz
    n2x, n2y, n2z = acx, acy, acz
    n3x, n3y, n3z = -abx, -aby, -abz
    l0 = math.sqrt(n0x * n0x + n0y * n0y + n0z * n0z)
    l1 = math.sqrt(n1x * n1x + n1y * n1y + n1z * n1z)
    l2 = math.sqrt(n2x * n2x + n2y * n2y + n2z * n2z)
    l3 = math.sqrt(n3x * n3x + n3y * n3y + n3z * n3z)
    if l0 == 0.0 or l1 == 0.0 or l2 == 0.0 or l3 == 0.0:
        return -1.0
    # interior dihedral at an edge = 180 deg - the angle between the outward normals of its faces
    cmax = max(-(n0x * n1x + n0y * n1y + n0z * n1z) / (l0 * l1), -(n0x * n2x + n0y * n2y + n0z * n2z) / (l0 * l2),
               -(n0x * n3x + n0y * n3y + n0z * n3z) / (l0 * l3), -(n1x * n2x + n1y * n2y + n1z * n2z) / (l1 * l2),
               -(n1x * n3x + n1y * n3y + n1z * n3z) / (l1 * l3), -(n2x * n3x + n2y * n3y + n2z * n3z) / (l2 * l3))
    total = l0 + l1 + l2 + l3
    dihedral = math.degrees(math.acos(min(max(cmax, -1.0), 1.0)))
    a2, b2, c2 = ax * ax + ay * ay + az * az, bx * bx + by * by + bz * bz, cx * cx + cy * cy + cz * cz
    ox, oy, oz = a2 * bcx - b2 * acx + c2 * abx, a2 * bcy - b2 * acy + c2 * aby, a2 * bcz - b2 * acz + c2 * abz
    r_circ = math.sqrt(ox * ox + oy * oy + oz * oz) / (2.0 * det)
    r_in = det / total
    ratio = 3.0 * r_in / r_circ
    return min(dihedral / min_dihedral_deg, ratio / min_radius_ratio)


@numba.njit(cache=True, nogil=True)
def _around(x, v, tets, q, ptr, idx, sign, dmin, rmin):  # pragma: no cover - compiled
    """(worst, sum, count below 1, turned) of the shape measure, capped at 1, over the tetrahedra
    around v; ``turned``: one of them is flat or inverted now but was not in ``q`` (the shapes
    before the move)."""
    worst, total, poor, turned = 1.0, 0.0, 0, False
    for k in range(ptr[v], ptr[v + 1]):
        s = min(tet_shape(x, tets[idx[k]], sign, dmin, rmin), 1.0)
        worst = min(worst, s)
        total += s
        poor += s < 1.0
        turned = turned or (s < 0.0 and q[idx[k]] >= 0.0)
    return worst, total, poor, turned


@numba.njit(cache=True, nogil=True)
def _allowed(x, x0, v, pinned, fptr, fnormal, max_move, max_slide):  # pragma: no cover - compiled
    """A surface node stays within ``max_move`` of the plane of each of its surface faces (as they
    were) and within ``max_slide`` of where it was."""
    if not pinned[v]:
        return True
    dx, dy, dz = x[v, 0] - x0[v, 0], x[v, 1] - x0[v, 1], x[v, 2] - x0[v, 2]
    if dx * dx + dy * dy + dz * dz > max_slide * max_slide:
        return False
    for j in range(fptr[v], fptr[v + 1]):
        if abs(dx * fnormal[j, 0] + dy * fnormal[j, 1] + dz * fnormal[j, 2]) > max_move:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def move_vertices(x, x0, tets, q, ptr, idx, bad, pinned, fptr, fnormal, max_move, max_slide, sign, dmin, rmin,
                  steps):  # pragma: no cover - compiled
    """Greedy moves of the corners of the ``bad`` tetrahedra; returns how many moves were kept and
    updates the shapes ``q`` of the tetrahedra around each moved node.

    Each corner is tried along three directions (away from the opposite face, away from the
    tetrahedron's centroid, and up the gradient of the worst shape around the corner) at growing
    ``steps`` x the tetrahedron's mean edge length, stopping along a direction once a step does worse
    than the one before.  A move is kept when it raises the worst shape around the node, or keeps it
    and raises their sum, without more poor tetrahedra around it, and none of them turns flat or
    over.  A ``pinned`` node (on a tissue surface) stays within ``max_move`` of the plane of each of its
    surface faces (normals ``fnormal[fptr[v]:fptr[v + 1]]``) and within ``max_slide`` of ``x0``."""
    moved = 0
    pos = np.empty(3)
    best = np.empty(3)
    d = np.empty((3, 3))
    g = np.empty(3)
    for bi in range(bad.shape[0]):
        t = tets[bad[bi]]
        if q[bad[bi]] >= 1.0:
            continue
        length = 0.0
        for i in range(4):
            for j in range(i + 1, 4):
                length += math.sqrt((x[t[i], 0] - x[t[j], 0]) ** 2 + (x[t[i], 1] - x[t[j], 1]) ** 2
                                    + (x[t[i], 2] - x[t[j], 2]) ** 2)
        length /= 6.0
        for c in range(4):
            v = t[c]
            nd = 0
            # away from the opposite face
            o0, o1, o2 = t[(c + 1) % 4], t[(c + 2) % 4], t[(c + 3) % 4]
            ux, uy, uz = x[o1, 0] - x[o0, 0], x[o1, 1] - x[o0, 1], x[o1, 2] - x[o0, 2]
            wx, wy, wz = x[o2, 0] - x[o0, 0], x[o2, 1] - x[o0, 1], x[o2, 2] - x[o0, 2]
            nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
            side = nx * (x[v, 0] - x[o0, 0]) + ny * (x[v, 1] - x[o0, 1]) + nz * (x[v, 2] - x[o0, 2])
            nn = math.sqrt(nx * nx + ny * ny + nz * nz)
            if nn > 0.0:
                s = 1.0 if side >= 0.0 else -1.0
                d[nd, 0], d[nd, 1], d[nd, 2] = s * nx / nn, s * ny / nn, s * nz / nn
                nd += 1
            # away from the centroid
            gx = x[v, 0] - 0.25 * (x[t[0], 0] + x[t[1], 0] + x[t[2], 0] + x[t[3], 0])
            gy = x[v, 1] - 0.25 * (x[t[0], 1] + x[t[1], 1] + x[t[2], 1] + x[t[3], 1])
            gz = x[v, 2] - 0.25 * (x[t[0], 2] + x[t[1], 2] + x[t[2], 2] + x[t[3], 2])
            gn = math.sqrt(gx * gx + gy * gy + gz * gz)
            if gn > 0.0:
                d[nd, 0], d[nd, 1], d[nd, 2] = gx / gn, gy / gn, gz / gn
                nd += 1
            # up the gradient of the worst shape around v (central differences)
            worst_t, worst_q = -1, 2.0
            for kk in range(ptr[v], ptr[v + 1]):
                if q[idx[kk]] < worst_q:
                    worst_q, worst_t = q[idx[kk]], idx[kk]
            if worst_t >= 0 and worst_q > 0.0:
                h = 1e-4 * length
                for k in range(3):
                    keep = x[v, k]
                    x[v, k] = keep + h
                    qp = tet_shape(x, tets[worst_t], sign, dmin, rmin)
                    x[v, k] = keep - h
                    qm = tet_shape(x, tets[worst_t], sign, dmin, rmin)
                    x[v, k] = keep
                    g[k] = qp - qm
                gg = math.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
                if gg > 0.0:
                    for k in range(3):
                        d[nd, k] = g[k] / gg
                    nd += 1
            for k in range(3):
                pos[k] = x[v, k]
                best[k] = x[v, k]
            w0, s0, p0, _ = _around(x, v, tets, q, ptr, idx, sign, dmin, rmin)
            bw, bs = w0, s0
            for di in range(nd):
                lw = -2.0
                for si in range(steps.shape[0]):
                    for k in range(3):
                        x[v, k] = pos[k] + steps[si] * length * d[di, k]
                    if not _allowed(x, x0, v, pinned, fptr, fnormal, max_move, max_slide):
                        break
                    w, sm, p, turned = _around(x, v, tets, q, ptr, idx, sign, dmin, rmin)
                    if not turned and p <= p0 and (w > bw + 1e-12 or (w >= bw - 1e-12 and sm > bs + 1e-9)):
                        bw, bs = w, sm
                        for k in range(3):
                            best[k] = x[v, k]
                    if w < lw - 1e-12:
                        break
                    lw = w
            for k in range(3):
                x[v, k] = best[k]
            if bw > w0 + 1e-12 or bs > s0 + 1e-9:
                moved += 1
                for kk in range(ptr[v], ptr[v + 1]):
                    q[idx[kk]] = tet_shape(x, tets[idx[kk]], sign, dmin, rmin)
    return moved


@numba.njit(parallel=True, cache=True, nogil=True)
def shapes(x, tets, sign, dmin, rmin):  # pragma: no cover - compiled
    """:func:`tet_shape` of every tetrahedron."""
    out = np.empty(tets.shape[0])
    for i in numba.prange(tets.shape[0]):
        out[i] = tet_shape(x, tets[i], sign, dmin, rmin)
    return out


@numba.njit(cache=True, nogil=True)
def node_tets(tets, n_nodes):  # pragma: no cover - compiled
    """CSR (ptr, tet ids, ascending) of the tetrahedra around each node: a counting sort."""
    ptr = np.zeros(n_nodes + 1, np.int64)
    for i in range(tets.shape[0]):
        for c in range(4):
            ptr[tets[i, c] + 1] += 1
    for v in range(n_nodes):
        ptr[v + 1] += ptr[v]
    fill = ptr[:-1].copy()
    idx = np.empty(ptr[n_nodes], np.int64)
    for i in range(tets.shape[0]):
        for c in range(4):
            v = tets[i, c]
            idx[fill[v]] = i
            fill[v] += 1
    return ptr, idx
