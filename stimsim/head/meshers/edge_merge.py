"""Merge the short edges of the tissue surfaces before TetGen (mesher ``surf-6.5``).

Marching cubes makes tiny and needle triangles where a level set passes close to a sub-grid point;
the relaxation evens them out only where a vertex is far enough from the other surfaces, so they stay
in thin layers.  TetGen ``-Y`` keeps every surface triangle, and a surface edge far shorter than its
neighbours becomes the shortest edge of a flat tetrahedron: on Colin27, 363 of the 394 tetrahedra
below the shape bounds (surf-6.4) had a surface edge as their shortest edge (median 0.73 mm against
~3 mm).  :func:`~stimsim.head.meshers.surface.collapse_short_edges` merges each edge shorter than a
length into one point (near its midpoint, keeping the enclosed volume) where that keeps the surface a
closed manifold and its triangles unfolded and uncrossed.

This module is the planning of one round, :func:`plan_merges`, written with scalar loops only and no
imports of the package, so that the same source runs compiled by numba (:mod:`._kernels`) or, where
numba is off, as plain Python (slower, the same merges; tested).  The rounds, and the crossing test
between them: :func:`stimsim.head.meshers.surface.collapse_short_edges`.  Measured: docs/meshing.md.
"""

from __future__ import annotations

import numpy as np


def plan_merges(v, f, ptr, tri_of, ea, eb, skip, chosen, out_p):  # noqa: C901 - one pass, numba-compiled
    """Choose edges ``(ea[c], eb[c])`` (shortest first) to merge in one round; sets ``chosen[c]`` and
    the merged point ``out_p[c]``, returns how many.  ``ptr``/``tri_of``: the triangles of vertex x are
    ``tri_of[ptr[x]:ptr[x + 1]]``.  An edge is taken when neither end nor any vertex next to them is
    already used by a merge of this round (so the merges do not interact), it lies on exactly two
    triangles whose third vertices are the only vertices next to both ends (else merging pinches the
    surface), neither third vertex is left on fewer than three triangles, the point that keeps the
    enclosed volume lies within half the edge of its midpoint, every triangle around it turns by less
    than 60 deg and keeps a tenth of its area, and no two of them overlap.
    """
    n = v.shape[0]
    locked = np.zeros(n, np.bool_)
    count = 0
    for c in range(ea.shape[0]):
        if skip[c]:
            continue
        a = ea[c]
        b = eb[c]
        if locked[a] or locked[b]:
            continue
        a0, a1, b0, b1 = ptr[a], ptr[a + 1], ptr[b], ptr[b + 1]
        nshared = 0
        s0 = -1
        s1 = -1
        for i in range(a0, a1):
            for j in range(b0, b1):
                if tri_of[i] == tri_of[j]:
                    if nshared == 0:
                        s0 = tri_of[i]
                    else:
                        s1 = tri_of[i]
                    nshared += 1
        if nshared != 2:
            continue
        o0 = -1
        o1 = -1
        for k in range(3):
            if f[s0, k] != a and f[s0, k] != b:
                o0 = f[s0, k]
            if f[s1, k] != a and f[s1, k] != b:
                o1 = f[s1, k]
        if o0 == o1 or ptr[o0 + 1] - ptr[o0] <= 3 or ptr[o1 + 1] - ptr[o1] <= 3:
            continue
        # link condition: no vertex other than o0, o1 is next to both a and b
        ok = True
        for i in range(a0, a1):
            t = tri_of[i]
            for k in range(3):
                x = f[t, k]
                if x == a or x == b or x == o0 or x == o1:
                    continue
                for j in range(b0, b1):
                    u = tri_of[j]
                    if f[u, 0] == x or f[u, 1] == x or f[u, 2] == x:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        if not ok:
            continue
        # the fan around the merged point: (p, x, y) per triangle of a or b but the two shared ones
        m = (a1 - a0) + (b1 - b0) - 4
        fan = np.empty((m, 9))  # u = x - p (3), w = y - p (3), normal (3)
        before = np.empty((m, 3))  # each triangle's normal before the merge
        ends = np.empty((m, 2), np.int64)
        # the point: the edge's midpoint moved along the fan's normal so that the surface encloses
        # what it did (the signed volume of the triangles around a and b, sum of det(t) / 6, is
        # p . sum(x cross y) / 6 after the merge); merged at the midpoint, Colin27's grey matter
        # grew by 0.3 % and its CSF lost 0.4 % (5,000 merges on folded surfaces)
        gx = gy = gz = 0.0
        vol6 = 0.0
        idx = 0
        for side in range(2):
            lo = a0 if side == 0 else b0
            hi = a1 if side == 0 else b1
            centre = a if side == 0 else b
            for i in range(lo, hi):
                t = tri_of[i]
                k = 0
                while f[t, k] != centre:
                    k += 1
                x = f[t, (k + 1) % 3]
                y = f[t, (k + 2) % 3]
                cx = v[x, 1] * v[y, 2] - v[x, 2] * v[y, 1]
                cy = v[x, 2] * v[y, 0] - v[x, 0] * v[y, 2]
                cz = v[x, 0] * v[y, 1] - v[x, 1] * v[y, 0]
                if t == s0 or t == s1:
                    if side == 0:  # once, not from both ends
                        vol6 += v[centre, 0] * cx + v[centre, 1] * cy + v[centre, 2] * cz
                    continue
                vol6 += v[centre, 0] * cx + v[centre, 1] * cy + v[centre, 2] * cz
                gx += cx
                gy += cy
                gz += cz
                bx0, by0, bz0 = v[x, 0] - v[centre, 0], v[x, 1] - v[centre, 1], v[x, 2] - v[centre, 2]
                bx1, by1, bz1 = v[y, 0] - v[centre, 0], v[y, 1] - v[centre, 1], v[y, 2] - v[centre, 2]
                before[idx, 0] = by0 * bz1 - bz0 * by1
                before[idx, 1] = bz0 * bx1 - bx0 * bz1
                before[idx, 2] = bx0 * by1 - by0 * bx1
                ends[idx, 0] = x
                ends[idx, 1] = y
                idx += 1
        px = 0.5 * (v[a, 0] + v[b, 0])
        py = 0.5 * (v[a, 1] + v[b, 1])
        pz = 0.5 * (v[a, 2] + v[b, 2])
        gn = np.sqrt(gx * gx + gy * gy + gz * gz)
        if gn > 0.0:
            # a lift over half the edge (a sheet thinner than the fan) would not keep the volume
            # within bounds: no merge (clamped, a 1.2-cell sheet lost 1.1 % of its volume)
            half = 0.5 * np.sqrt((v[a, 0] - v[b, 0]) ** 2 + (v[a, 1] - v[b, 1]) ** 2 + (v[a, 2] - v[b, 2]) ** 2)
            lift = (vol6 - (px * gx + py * gy + pz * gz)) / gn
            if abs(lift) > half:
                continue
            px += lift * gx / gn
            py += lift * gy / gn
            pz += lift * gz / gn
        else:
            continue
        for i in range(idx):
            x = ends[i, 0]
            y = ends[i, 1]
            ux, uy, uz = v[x, 0] - px, v[x, 1] - py, v[x, 2] - pz
            wx, wy, wz = v[y, 0] - px, v[y, 1] - py, v[y, 2] - pz
            nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
            nbx, nby, nbz = before[i, 0], before[i, 1], before[i, 2]
            lb = np.sqrt(nbx * nbx + nby * nby + nbz * nbz)
            la = np.sqrt(nx * nx + ny * ny + nz * nz)
            if nbx * nx + nby * ny + nbz * nz < 0.5 * lb * la or la < 0.1 * lb:
                ok = False
                break
            fan[i, 0], fan[i, 1], fan[i, 2] = ux, uy, uz
            fan[i, 3], fan[i, 4], fan[i, 5] = wx, wy, wz
            fan[i, 6], fan[i, 7], fan[i, 8] = nx, ny, nz
        if not ok or _fan_overlaps(fan, ends, idx):
            continue
        chosen[c] = True
        out_p[c, 0], out_p[c, 1], out_p[c, 2] = px, py, pz
        count += 1
        for i in range(a0, a1):
            for k in range(3):
                locked[f[tri_of[i], k]] = True
        for i in range(b0, b1):
            for k in range(3):
                locked[f[tri_of[i], k]] = True
    return count


def _inside(dx, dy, dz, fan, t):
    """Is direction d inside triangle t's angle at the fan's centre (d = alpha u + beta w, both >= 0)?"""
    ux, uy, uz, wx, wy, wz, nx, ny, nz = (fan[t, 0], fan[t, 1], fan[t, 2], fan[t, 3], fan[t, 4], fan[t, 5],
                                          fan[t, 6], fan[t, 7], fan[t, 8])
    c1 = (dy * wz - dz * wy) * nx + (dz * wx - dx * wz) * ny + (dx * wy - dy * wx) * nz
    c2 = (uy * dz - uz * dy) * nx + (uz * dx - ux * dz) * ny + (ux * dy - uy * dx) * nz
    return c1 >= 0.0 and c2 >= 0.0


def _fan_overlaps(fan, ends, m):
    """Do two of the ``m`` triangles of a fan around one point overlap?  The crossing test before
    TetGen skips triangles that share a vertex, so a fold of the fan would reach it.  Two triangles
    sharing only the centre meet along the line where their planes cross: they overlap when that line,
    either way, lies inside both triangles' angles at the centre; coplanar ones when a side of one
    lies inside the other's angle; two sharing a side when folded flat onto each other."""
    for i in range(m):
        for j in range(i + 1, m):
            nix, niy, niz = fan[i, 6], fan[i, 7], fan[i, 8]
            njx, njy, njz = fan[j, 6], fan[j, 7], fan[j, 8]
            ni = nix * nix + niy * niy + niz * niz
            nj = njx * njx + njy * njy + njz * njz
            share = (ends[i, 0] == ends[j, 0] or ends[i, 0] == ends[j, 1] or ends[i, 1] == ends[j, 0]
                     or ends[i, 1] == ends[j, 1])
            if share:
                if nix * njx + niy * njy + niz * njz < -0.98 * np.sqrt(ni * nj):
                    return True
                continue
            dx, dy, dz = niy * njz - niz * njy, niz * njx - nix * njz, nix * njy - niy * njx
            if dx * dx + dy * dy + dz * dz < 1e-12 * ni * nj:  # one plane
                if (_inside(fan[j, 0], fan[j, 1], fan[j, 2], fan, i) or _inside(fan[j, 3], fan[j, 4], fan[j, 5], fan, i)
                        or _inside(fan[i, 0], fan[i, 1], fan[i, 2], fan, j)
                        or _inside(fan[i, 3], fan[i, 4], fan[i, 5], fan, j)):
                    return True
            elif ((_inside(dx, dy, dz, fan, i) and _inside(dx, dy, dz, fan, j))
                  or (_inside(-dx, -dy, -dz, fan, i) and _inside(-dx, -dy, -dz, fan, j))):
                return True
    return False


def compiled(njit):
    """:func:`plan_merges` compiled by ``njit`` (numba's), its helpers compiled with it.  The wiring is
    here, in the source file numba's cache is keyed to, so that any change to it recompiles."""
    import types

    def build(fn, **helpers):
        scope = dict(fn.__globals__)
        scope.update(helpers)
        return njit(cache=True, nogil=True)(types.FunctionType(fn.__code__, scope, fn.__name__))

    inside = build(_inside)
    return build(plan_merges, _fan_overlaps=build(_fan_overlaps, _inside=inside))
