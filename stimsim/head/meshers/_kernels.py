"""numba kernels of the surface mesher (:mod:`stimsim.head.meshers.surface`).

:func:`trilinear`: a field sampled at many points, as ``scipy.ndimage.map_coordinates(order=1,
mode="nearest")`` does (the same interpolation, in parallel and without its per-call set-up: the
surface relaxation samples the level-set fields ~2,000 times).

:func:`intersecting`: which triangles of a surface soup cross another one they share no vertex with.
Triangles are binned by centroid on a grid of cells of the largest bounding-sphere radius, so every
pair whose bounding spheres overlap lies within two cells; each pair is tested there (spheres,
shared vertices, a plane-side test each way, the 6 edge-through-triangle tests) without the millions
of temporary rows the numpy version built (Colin27: 10 M candidate pairs, 9.7 -> ~0.3 s).  A pair of
two candidates is tested once (the largest call on Colin27, 114k candidates among 137k triangles:
0.33 -> 0.20 s; with the plane-side test, all of 129k triangles: 0.37 -> 0.24 s).

:func:`touching`: which triangles overlap one they share a vertex with (folded flat across a shared
side, or crossing through a shared corner), the test the short-edge merging runs after each round:
the arithmetic of the numpy version (``surface._touching_overlaps``) in the same order, one pass over
each candidate's corner fans (Colin27: 10 calls, 1.0 -> 0.14 s).

:func:`face_components`: connected pieces of tetrahedra across shared faces, by union-find, numbered
as scipy's ``connected_components`` numbers them (:func:`.topology.face_components`).

:func:`tissue_shares`: each tetrahedron's shares of the tissues inside a layer at its sample points,
what ``scipy.ndimage.map_coordinates`` gives tissue by tissue, in one pass (:mod:`.sub_tissues`).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _crosses(v, p, q, a, b, c):  # pragma: no cover - compiled
    """Does segment v[p] v[q] cross triangle v[a] v[b] v[c] (Moeller-Trumbore, both ends included)."""
    e1x, e1y, e1z = v[b, 0] - v[a, 0], v[b, 1] - v[a, 1], v[b, 2] - v[a, 2]
    e2x, e2y, e2z = v[c, 0] - v[a, 0], v[c, 1] - v[a, 1], v[c, 2] - v[a, 2]
    dx, dy, dz = v[q, 0] - v[p, 0], v[q, 1] - v[p, 1], v[q, 2] - v[p, 2]
    hx, hy, hz = dy * e2z - dz * e2y, dz * e2x - dx * e2z, dx * e2y - dy * e2x
    det = e1x * hx + e1y * hy + e1z * hz
    if abs(det) <= 1e-12:
        return False
    inv = 1.0 / det
    sx, sy, sz = v[p, 0] - v[a, 0], v[p, 1] - v[a, 1], v[p, 2] - v[a, 2]
    u = (sx * hx + sy * hy + sz * hz) * inv
    if u < 0.0 or u > 1.0:
        return False
    qx, qy, qz = sy * e1z - sz * e1y, sz * e1x - sx * e1z, sx * e1y - sy * e1x
    w = (dx * qx + dy * qy + dz * qz) * inv
    if w < 0.0 or u + w > 1.0:
        return False
    t = (e2x * qx + e2y * qy + e2z * qz) * inv
    return 0.0 <= t <= 1.0


@numba.njit(cache=True, nogil=True, inline="always")
def _one_side(v, f, i, j):  # pragma: no cover - compiled
    """Do triangle i's corners lie more than 1e-9 mm on one side of triangle j's plane (and so no edge of
    either crosses the other)?"""
    a = f[j, 0]
    ux, uy, uz = v[f[j, 1], 0] - v[a, 0], v[f[j, 1], 1] - v[a, 1], v[f[j, 1], 2] - v[a, 2]
    wx, wy, wz = v[f[j, 2], 0] - v[a, 0], v[f[j, 2], 1] - v[a, 1], v[f[j, 2], 2] - v[a, 2]
    nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
    nn = nx * nx + ny * ny + nz * nz
    if nn <= 1e-12 * (ux * ux + uy * uy + uz * uz) * (wx * wx + wy * wy + wz * wz):
        return False  # a needle (corners in a line): its normal is rounding noise, no plane to be beside
    tol = 1e-9 * np.sqrt(nn)
    above = 0
    below = 0
    for s in range(3):
        q = f[i, s]
        d = (v[q, 0] - v[a, 0]) * nx + (v[q, 1] - v[a, 1]) * ny + (v[q, 2] - v[a, 2]) * nz
        if d > tol:
            above += 1
        elif d < -tol:
            below += 1
    return above == 3 or below == 3


@numba.njit(parallel=True, cache=True, nogil=True)
def crossing_flags(v, f, cen, r, candidates, is_candidate, cell_start, cell_items, dims, lo, size):  # pragma: no cover
    """hit[t] = triangle t crosses a triangle it shares no vertex with (pairs with a candidate); a pair
    of two candidates is tested once, from its smaller index (the test sets both flags).  Triangle i
    looks in the cells within its radius plus the largest radius of its centroid (cells of edge
    ``size`` from ``lo``)."""
    n = f.shape[0]
    hit = np.zeros(n, np.bool_)
    nx, ny, nz = dims[0], dims[1], dims[2]
    r_max = 0.0
    for t in range(n):
        r_max = max(r_max, r[t])
    for ci in numba.prange(candidates.shape[0]):
        i = candidates[ci]
        reach = r[i] + r_max
        x0 = max(int(np.floor((cen[i, 0] - reach - lo[0]) / size)), 0)
        x1 = min(int(np.floor((cen[i, 0] + reach - lo[0]) / size)), nx - 1)
        y0 = max(int(np.floor((cen[i, 1] - reach - lo[1]) / size)), 0)
        y1 = min(int(np.floor((cen[i, 1] + reach - lo[1]) / size)), ny - 1)
        z0 = max(int(np.floor((cen[i, 2] - reach - lo[2]) / size)), 0)
        z1 = min(int(np.floor((cen[i, 2] + reach - lo[2]) / size)), nz - 1)
        for ox in range(x0, x1 + 1):
            for oy in range(y0, y1 + 1):
                for oz in range(z0, z1 + 1):
                    cell = (ox * ny + oy) * nz + oz
                    for k in range(cell_start[cell], cell_start[cell + 1]):
                        j = cell_items[k]
                        if j == i or (j < i and is_candidate[j]):
                            continue
                        ddx, ddy, ddz = cen[i, 0] - cen[j, 0], cen[i, 1] - cen[j, 1], cen[i, 2] - cen[j, 2]
                        rr = r[i] + r[j]
                        if ddx * ddx + ddy * ddy + ddz * ddz > rr * rr:
                            continue
                        shared = False
                        for s in range(3):
                            for u in range(3):
                                if f[i, s] == f[j, u]:
                                    shared = True
                        if shared:
                            continue
                        # the corners of one strictly on one side of the other's plane: no edge of either
                        # crosses the other (a third of the pairs the spheres let through on Colin27:
                        # 0.37 -> 0.24 s, the same flags)
                        if _one_side(v, f, j, i) or _one_side(v, f, i, j):
                            continue
                        crossed = False
                        for s in range(3):
                            if (_crosses(v, f[i, s], f[i, (s + 1) % 3], f[j, 0], f[j, 1], f[j, 2])
                                    or _crosses(v, f[j, s], f[j, (s + 1) % 3], f[i, 0], f[i, 1], f[i, 2])):
                                crossed = True
                                break
                        if crossed:
                            hit[i] = True
                            hit[j] = True  # every write stores True: a benign race
    return hit


@numba.njit(parallel=True, cache=True, nogil=True)
def _bounding_spheres(v, f):  # pragma: no cover - compiled
    """Each triangle's centroid and the distance from it to its farthest corner."""
    n = f.shape[0]
    cen = np.empty((n, 3))
    r = np.empty(n)
    for t in numba.prange(n):
        for d in range(3):
            cen[t, d] = (v[f[t, 0], d] + v[f[t, 1], d] + v[f[t, 2], d]) / 3.0
        far = 0.0
        for k in range(3):
            dx, dy, dz = v[f[t, k], 0] - cen[t, 0], v[f[t, k], 1] - cen[t, 1], v[f[t, k], 2] - cen[t, 2]
            far = max(far, dx * dx + dy * dy + dz * dz)
        r[t] = np.sqrt(far)
    return cen, r


def intersecting(v: np.ndarray, f: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Sorted indices of the triangles that cross another (pairs with a triangle in ``candidates``)."""
    v = np.ascontiguousarray(v, np.float64)
    f = np.ascontiguousarray(f, np.int64)
    cen, r = _bounding_spheres(v, f)
    # cells of the largest radius: a triangle's partners lie within two cells of its own (cells of
    # twice that, one cell away, tested 1.6x more pairs)
    lo = cen.min(axis=0)
    # ... but no more cells than twice the triangles (a sphere's few triangles in a large box)
    box_mm3 = float(np.prod(cen.max(axis=0) - lo + float(r.max())))
    size = max(float(r.max()), (box_mm3 / (2.0 * len(f))) ** (1.0 / 3.0), 1e-9)
    cell_of = np.floor((cen - lo) / size).astype(np.int64)
    dims = cell_of.max(axis=0) + 1
    flat = (cell_of[:, 0] * dims[1] + cell_of[:, 1]) * dims[2] + cell_of[:, 2]
    order = np.argsort(flat, kind="stable")
    cell_start = np.searchsorted(flat[order], np.arange(int(np.prod(dims)) + 1))
    hit = crossing_flags(v, f, cen, r, np.ascontiguousarray(np.flatnonzero(candidates), np.int64),
                         np.ascontiguousarray(candidates, np.bool_),
                         cell_start.astype(np.int64), order.astype(np.int64), dims.astype(np.int64), lo, size)
    return np.flatnonzero(hit)


@numba.njit(cache=True, nogil=True, inline="always")
def _in_angle(dx, dy, dz, ux, uy, uz, wx, wy, wz, nx, ny, nz):  # pragma: no cover - compiled
    # d inside the angle between sides u and w of a triangle of normal n = u x w (d = a u + b w, a, b >= 0)
    c1 = (dy * wz - dz * wy) * nx + (dz * wx - dx * wz) * ny + (dx * wy - dy * wx) * nz
    c2 = (uy * dz - uz * dy) * nx + (uz * dx - ux * dz) * ny + (ux * dy - uy * dx) * nz
    return c1 >= 0.0 and c2 >= 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def touching_flags(v, f, ptr, tri_of, cand, checked, hit):  # noqa: C901  # pragma: no cover - compiled
    """``hit[t]`` for every triangle of a pair (one of them in ``cand``) that overlaps through a shared
    vertex, as :func:`stimsim.head.meshers.surface._touching_overlaps` tests them (its numpy version:
    the same arithmetic in the same order)."""
    for ci in numba.prange(len(cand)):
        t = cand[ci]
        for c in range(3):
            q = f[t, c]
            if checked[q]:
                continue
            t0, t1, t2 = f[t, 0], f[t, 1], f[t, 2]
            for k in range(ptr[q], ptr[q + 1]):
                u = tri_of[k]
                if u == t:
                    continue
                u0, u1, u2 = f[u, 0], f[u, 1], f[u, 2]
                shared = 0
                for a in (t0, t1, t2):
                    if a == u0 or a == u1 or a == u2:
                        shared += 1
                if shared == 2:  # folded flat onto each other (normals from each one's first corner)
                    ax, ay, az = v[t1, 0] - v[t0, 0], v[t1, 1] - v[t0, 1], v[t1, 2] - v[t0, 2]
                    bx, by, bz = v[t2, 0] - v[t0, 0], v[t2, 1] - v[t0, 1], v[t2, 2] - v[t0, 2]
                    ntx, nty, ntz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
                    ax, ay, az = v[u1, 0] - v[u0, 0], v[u1, 1] - v[u0, 1], v[u1, 2] - v[u0, 2]
                    bx, by, bz = v[u2, 0] - v[u0, 0], v[u2, 1] - v[u0, 1], v[u2, 2] - v[u0, 2]
                    nux, nuy, nuz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
                    lt = np.sqrt(ntx * ntx + nty * nty + ntz * ntz)
                    lu = np.sqrt(nux * nux + nuy * nuy + nuz * nuz)
                    if ntx * nux + nty * nuy + ntz * nuz < -0.98 * lt * lu:
                        hit[t] = True
                        hit[u] = True
                elif shared == 1:  # meeting at q only: sides from q in each triangle's turning order
                    cu = 0 if u0 == q else (1 if u1 == q else 2)
                    p0, p1, p2 = f[t, c], f[t, (c + 1) % 3], f[t, (c + 2) % 3]
                    utx, uty, utz = v[p1, 0] - v[p0, 0], v[p1, 1] - v[p0, 1], v[p1, 2] - v[p0, 2]
                    wtx, wty, wtz = v[p2, 0] - v[p0, 0], v[p2, 1] - v[p0, 1], v[p2, 2] - v[p0, 2]
                    p0, p1, p2 = f[u, cu], f[u, (cu + 1) % 3], f[u, (cu + 2) % 3]
                    uvx, uvy, uvz = v[p1, 0] - v[p0, 0], v[p1, 1] - v[p0, 1], v[p1, 2] - v[p0, 2]
                    wvx, wvy, wvz = v[p2, 0] - v[p0, 0], v[p2, 1] - v[p0, 1], v[p2, 2] - v[p0, 2]
                    n1x, n1y, n1z = uty * wtz - utz * wty, utz * wtx - utx * wtz, utx * wty - uty * wtx
                    n2x, n2y, n2z = uvy * wvz - uvz * wvy, uvz * wvx - uvx * wvz, uvx * wvy - uvy * wvx
                    dx, dy, dz = n1y * n2z - n1z * n2y, n1z * n2x - n1x * n2z, n1x * n2y - n1y * n2x
                    if (dx * dx + dy * dy + dz * dz
                            < 1e-12 * (n1x * n1x + n1y * n1y + n1z * n1z) * (n2x * n2x + n2y * n2y + n2z * n2z)):
                        over = (_in_angle(uvx, uvy, uvz, utx, uty, utz, wtx, wty, wtz, n1x, n1y, n1z)
                                or _in_angle(wvx, wvy, wvz, utx, uty, utz, wtx, wty, wtz, n1x, n1y, n1z)
                                or _in_angle(utx, uty, utz, uvx, uvy, uvz, wvx, wvy, wvz, n2x, n2y, n2z)
                                or _in_angle(wtx, wty, wtz, uvx, uvy, uvz, wvx, wvy, wvz, n2x, n2y, n2z))
                    else:
                        over = ((_in_angle(dx, dy, dz, utx, uty, utz, wtx, wty, wtz, n1x, n1y, n1z)
                                 and _in_angle(dx, dy, dz, uvx, uvy, uvz, wvx, wvy, wvz, n2x, n2y, n2z))
                                or (_in_angle(-dx, -dy, -dz, utx, uty, utz, wtx, wty, wtz, n1x, n1y, n1z)
                                    and _in_angle(-dx, -dy, -dz, uvx, uvy, uvz, wvx, wvy, wvz, n2x, n2y, n2z)))
                    if over:
                        hit[t] = True
                        hit[u] = True


def touching(v: np.ndarray, f: np.ndarray, ptr: np.ndarray, tri_of: np.ndarray, candidates: np.ndarray,
             checked: np.ndarray | None) -> np.ndarray:
    """Sorted indices of the triangles that overlap one they share a vertex with (pairs with a
    triangle in ``candidates``, not meeting at a vertex of ``checked``)."""
    hit = np.zeros(len(f), np.bool_)
    touching_flags(np.ascontiguousarray(v, np.float64), np.ascontiguousarray(f, np.int64),
                   np.ascontiguousarray(ptr, np.int64), np.ascontiguousarray(tri_of, np.int64),
                   np.ascontiguousarray(np.flatnonzero(candidates), np.int64),
                   np.zeros(len(v), np.bool_) if checked is None else np.ascontiguousarray(checked, np.bool_), hit)
    return np.flatnonzero(hit)


@numba.njit(cache=True, nogil=True, inline="always")
def _sample(phi, x, y, z):  # pragma: no cover - compiled
    """``phi`` at one fractional voxel index, linear, edges extended."""
    nx, ny, nz = phi.shape
    x = min(max(x, 0.0), nx - 1.0)
    y = min(max(y, 0.0), ny - 1.0)
    z = min(max(z, 0.0), nz - 1.0)
    i = min(int(x), max(nx - 2, 0))
    j = min(int(y), max(ny - 2, 0))
    k = min(int(z), max(nz - 2, 0))
    fx, fy, fz = x - i, y - j, z - k
    i1, j1, k1 = min(i + 1, nx - 1), min(j + 1, ny - 1), min(k + 1, nz - 1)
    c00 = phi[i, j, k] * (1.0 - fx) + phi[i1, j, k] * fx
    c10 = phi[i, j1, k] * (1.0 - fx) + phi[i1, j1, k] * fx
    c01 = phi[i, j, k1] * (1.0 - fx) + phi[i1, j, k1] * fx
    c11 = phi[i, j1, k1] * (1.0 - fx) + phi[i1, j1, k1] * fx
    c0 = c00 * (1.0 - fy) + c10 * fy
    c1 = c01 * (1.0 - fy) + c11 * fy
    return c0 * (1.0 - fz) + c1 * fz


@numba.njit(parallel=True, cache=True, nogil=True)
def _trilinear(phi, p, out):  # pragma: no cover - compiled
    for q in numba.prange(p.shape[0]):
        out[q] = _sample(phi, p[q, 0], p[q, 1], p[q, 2])


def trilinear(phi: np.ndarray, index_coords: np.ndarray) -> np.ndarray:
    """``phi`` at fractional voxel indices ``index_coords`` (n, 3), linear, edges extended; in
    ``phi``'s floating type, as SciPy returns it."""
    out = np.empty(len(index_coords))
    _trilinear(phi, np.ascontiguousarray(index_coords, dtype=np.float64), out)
    return out.astype(phi.dtype, copy=False) if phi.dtype.kind == "f" else out


@numba.njit(cache=True, nogil=True, inline="always")
def _difference(lo, hi, h, single):  # pragma: no cover - compiled
    """(hi - lo) / (2 h) as numpy computes it on :func:`trilinear`'s results: in float32 for a float32 field."""
    if single:
        return np.float64(np.float32(np.float32(hi) - np.float32(lo)) / np.float32(2 * h))
    return (hi - lo) / (2 * h)


@numba.njit(cache=True, nogil=True, inline="always")
def _gradient_at(phi, x, y, z, zooms, pad, h, single):  # pragma: no cover - compiled
    """The central differences of :func:`central_gradient` at one point (mm, padded grid's frame)."""
    # each sample point as the numpy version builds it: (mm +- h) / zoom + pad
    bx, by, bz = x / zooms[0] + pad, y / zooms[1] + pad, z / zooms[2] + pad
    gx = _difference(_sample(phi, (x - h) / zooms[0] + pad, by, bz),
                     _sample(phi, (x + h) / zooms[0] + pad, by, bz), h, single)
    gy = _difference(_sample(phi, bx, (y - h) / zooms[1] + pad, bz),
                     _sample(phi, bx, (y + h) / zooms[1] + pad, bz), h, single)
    gz = _difference(_sample(phi, bx, by, (z - h) / zooms[2] + pad),
                     _sample(phi, bx, by, (z + h) / zooms[2] + pad), h, single)
    return gx, gy, gz


@numba.njit(parallel=True, cache=True, nogil=True)
def _central_gradient(phi, pts_mm, zooms, pad, h, single, out):  # pragma: no cover - compiled
    for q in numba.prange(pts_mm.shape[0]):
        out[q, 0], out[q, 1], out[q, 2] = _gradient_at(phi, pts_mm[q, 0], pts_mm[q, 1], pts_mm[q, 2], zooms, pad,
                                                       h, single)


def central_gradient(phi: np.ndarray, pts_mm: np.ndarray, zooms, pad: int, h: float) -> np.ndarray:
    """Central differences (step ``h`` mm) of the trilinear ``phi`` at points in the padded grid's mm
    frame: the six samples of the surface mesher's numpy gradient in one pass, with its values."""
    out = np.empty((len(pts_mm), 3))
    _central_gradient(phi, np.ascontiguousarray(pts_mm, np.float64), np.asarray(zooms, np.float64), float(pad),
                      float(h), phi.dtype == np.float32, out)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _bone_on_normal(excess, phi_bone, x, y, z, zooms, pad, h, single, steps, near):  # pragma: no cover
    """One point of :func:`bone_along_normal`: the normal by :func:`central_gradient`'s differences,
    normalised as numpy does, then the steps along it until one samples ``excess`` at most ``near``
    (both in ``excess``'s float32, as the numpy version compares them)."""
    gx, gy, gz = _gradient_at(phi_bone, x, y, z, zooms, pad, h, single)
    norm = max(np.sqrt(gx * gx + gy * gy + gz * gz), 1e-12)
    nx, ny, nz = gx / norm, gy / norm, gz / norm
    for s in steps:
        value = _sample(excess, (x + s * nx) / zooms[0] + pad, (y + s * ny) / zooms[1] + pad,
                        (z + s * nz) / zooms[2] + pad)
        if np.float32(value) <= near:
            return True
    return False


@numba.njit(parallel=True, cache=True, nogil=True)
def _bone_along_normal(excess, phi_bone, pts_mm, zooms, pad, h, single, steps, near, out):  # pragma: no cover
    for q in numba.prange(pts_mm.shape[0]):
        out[q] = _bone_on_normal(excess, phi_bone, pts_mm[q, 0], pts_mm[q, 1], pts_mm[q, 2], zooms, pad, h,
                                 single, steps, near)


def bone_along_normal(excess: np.ndarray, phi_bone: np.ndarray, pts_mm: np.ndarray, zooms, pad: int, h: float,
                      steps: np.ndarray, near: float) -> np.ndarray:
    """``surface._bone_along_normal`` in one pass per point (its numpy version samples every point at
    every step, ~20 calls): the same samples and comparisons, so the same answers."""
    out = np.zeros(len(pts_mm), np.bool_)
    _bone_along_normal(excess, phi_bone, np.ascontiguousarray(pts_mm, np.float64), np.asarray(zooms, np.float64),
                       float(pad), float(h), phi_bone.dtype == np.float32, np.asarray(steps, np.float64),
                       np.float32(near), out)
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _defect_share(excess, phi_outer, phi_inner, voxels, corners, zooms, pad, h, single, steps, near,
                  out):  # pragma: no cover - compiled
    for q in numba.prange(voxels.shape[0]):
        hits = 0
        for c in range(corners.shape[0]):
            x = (voxels[q, 0] - pad) * zooms[0] + corners[c, 0] * zooms[0]
            y = (voxels[q, 1] - pad) * zooms[1] + corners[c, 1] * zooms[1]
            z = (voxels[q, 2] - pad) * zooms[2] + corners[c, 2] * zooms[2]
            bx, by, bz = x / zooms[0] + pad, y / zooms[1] + pad, z / zooms[2] + pad
            if not np.float32(_sample(excess, bx, by, bz)) > 0:
                continue
            if not np.float32(_sample(phi_outer, bx, by, bz)) < 0:
                continue
            if not np.float32(_sample(phi_inner, bx, by, bz)) >= 0:
                continue
            if not _bone_on_normal(excess, phi_outer, x, y, z, zooms, pad, h, single, steps, near):
                hits += 1
        out[q] = hits / corners.shape[0]


def defect_share(excess: np.ndarray, phi_outer: np.ndarray, phi_inner: np.ndarray, voxels: np.ndarray,
                 corners: np.ndarray, zooms, pad: int, h: float, steps: np.ndarray, near: float) -> np.ndarray:
    """``surface._defect_share`` in one pass per voxel (the numpy version builds 8 points per voxel
    and samples them field by field, step by step): the same samples and comparisons."""
    out = np.zeros(len(voxels))
    _defect_share(excess, phi_outer, phi_inner, np.ascontiguousarray(voxels, np.int64),
                  np.ascontiguousarray(corners, np.float64), np.asarray(zooms, np.float64), int(pad), float(h),
                  phi_outer.dtype == np.float32, np.asarray(steps, np.float64), np.float32(near), out)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _split_deficit(lo, hi, t):  # pragma: no cover - compiled
    """One thickness sweep step on a pair of level sets, in float32 as numpy does it."""
    d = hi - lo - t
    d = d * np.float32(0.5) if d < 0 else np.float32(0.0)
    return lo + d, hi - d


@numba.njit(parallel=True, cache=True, nogil=True)
def _enforce_layers(p1, p2, p3, p4, p5, t1, t2, t3, t4, sweeps):  # pragma: no cover - compiled
    # t1..t4: each interface's minimum thickness per voxel, or one value for all (length 1)
    s1, s2, s3, s4 = (t1.shape[0] > 1) * 1, (t2.shape[0] > 1) * 1, (t3.shape[0] > 1) * 1, (t4.shape[0] > 1) * 1
    for i in numba.prange(p1.shape[0]):
        a1, a2, a3, a4, a5 = p1[i], p2[i], p3[i], p4[i], p5[i]
        k1, k2, k3, k4 = t1[i * s1], t2[i * s2], t3[i * s3], t4[i * s4]
        for _ in range(sweeps):
            a1, a2 = _split_deficit(a1, a2, k1)
            a2, a3 = _split_deficit(a2, a3, k2)
            a3, a4 = _split_deficit(a3, a4, k3)
            a4, a5 = _split_deficit(a4, a5, k4)
        a2 = max(a2, a1 + k1)
        a3 = max(a3, a2 + k2)
        a4 = max(a4, a3 + k3)
        a5 = max(a5, a4 + k4)
        p1[i], p2[i], p3[i], p4[i], p5[i] = a1, a2, a3, a4, a5


def enforce_layers(phis: dict, tk: dict, sweeps: int) -> bool:
    """The surface mesher's minimum layer thicknesses (``_enforce``) voxel by voxel in one pass, in
    place, with numpy's float32 results; ``tk[k]`` is one value or a float32 array of the fields' shape
    (a minimum per voxel).  False (nothing done) unless the five fields, and those arrays, are float32
    arrays of one shape and memory layout."""
    arrays = [phis[k] for k in range(1, 6)]
    first = arrays[0]
    layout = "F" if first.flags.f_contiguous and not first.flags.c_contiguous else "C"
    per_voxel = [tk[k] for k in range(1, 5) if isinstance(tk[k], np.ndarray)]
    if not all(a.dtype == np.float32 and a.shape == first.shape and a.flags[f"{layout}_CONTIGUOUS"]
               for a in arrays + per_voxel):
        return False
    flat = [a.reshape(-1, order=layout) for a in arrays]
    mins = [tk[k].reshape(-1, order=layout) if isinstance(tk[k], np.ndarray) else np.array([tk[k]], np.float32)
            for k in range(1, 5)]
    _enforce_layers(*flat, *mins, int(sweeps))
    return True


@numba.njit(parallel=True, cache=True, nogil=True)
def _local_excess(phi, mask, override, use_override, step, half_edge, excess, band):  # pragma: no cover
    nx, ny, nz = phi.shape
    lx, ly, lz = ((nx - 1) // step) * step, ((ny - 1) // step) * step, ((nz - 1) // step) * step
    cx, cy, cz = excess.shape
    inv = 1.0 / step
    for ci in numba.prange(cx):
        i0 = ci * step
        i1 = min(i0 + step, lx)
        for cj in range(cy):
            j0 = cj * step
            j1 = min(j0 + step, ly)
            for ck in range(cz):
                k0 = ck * step
                k1 = min(k0 + step, lz)
                # a cell's first sample is never past the last one (i0 <= lx); voxels past the last
                # sample are left out: no surface reaches there, nothing to compare
                a000, a100, a010, a110 = phi[i0, j0, k0], phi[i1, j0, k0], phi[i0, j1, k0], phi[i1, j1, k0]
                a001, a101, a011, a111 = phi[i0, j0, k1], phi[i1, j0, k1], phi[i0, j1, k1], phi[i1, j1, k1]
                e = 0.0
                b = 0.0
                for i in range(i0, min(i0 + step, lx + 1)):
                    x = (i - i0) * inv
                    for j in range(j0, min(j0 + step, ly + 1)):
                        y = (j - j0) * inv
                        for k in range(k0, min(k0 + step, lz + 1)):
                            z = (k - k0) * inv
                            v = ((a000 * (1 - x) + a100 * x) * (1 - y) + (a010 * (1 - x) + a110 * x) * y) * (1 - z) \
                                + ((a001 * (1 - x) + a101 * x) * (1 - y) + (a011 * (1 - x) + a111 * x) * y) * z
                            inside = v < 0.0
                            if use_override and override[i, j, k] != 0:
                                inside = override[i, j, k] > 0
                            e += (1.0 if inside else 0.0) - (1.0 if mask[i, j, k] else 0.0)
                            if abs(phi[i, j, k]) < half_edge:
                                b += 1.0
                excess[ci, cj, ck] = e
                band[ci, cj, ck] = b


def local_excess(phi, mask, override, step: int, half_edge: float):
    """Per cell of the sub-grid (``step`` voxels a side): voxels inside the linear interpolation of the
    sub-grid samples of ``phi`` (``override`` (int8 or None): 1 inside, -1 outside, 0 as interpolated)
    less those of ``mask``, and voxels within ``half_edge`` of ``phi``'s zero level; voxels past the
    last sample are left out (marching cubes closes the surface there: no level can enclose them).
    The numba form of the numpy code in :func:`stimsim.head.meshers.surface._local_shift`."""
    cells = tuple((n + step - 1) // step for n in phi.shape)
    excess, band = np.zeros(cells, np.float64), np.zeros(cells, np.float64)
    use = override is not None
    _local_excess(phi, mask, override if use else np.zeros((1, 1, 1), np.int8), use, int(step),
                  np.float32(half_edge), excess, band)
    return excess, band


@numba.njit(parallel=True, cache=True, nogil=True)
def _add_local_shift(phi, shift, step, outer, gap_outer, use_outer, inner, gap_inner, use_inner):  # pragma: no cover
    nx, ny, nz = phi.shape
    cx, cy, cz = shift.shape
    off = 0.5 * (step - 1)
    for i in numba.prange(nx):
        x = min(max((i - off) / step, 0.0), cx - 1.0)
        i0 = min(int(x), cx - 1)
        i1 = min(i0 + 1, cx - 1)
        wx = x - i0
        for j in range(ny):
            y = min(max((j - off) / step, 0.0), cy - 1.0)
            j0 = min(int(y), cy - 1)
            j1 = min(j0 + 1, cy - 1)
            wy = y - j0
            for k in range(nz):
                z = min(max((k - off) / step, 0.0), cz - 1.0)
                k0 = min(int(z), cz - 1)
                k1 = min(k0 + 1, cz - 1)
                wz = z - k0
                s = ((shift[i0, j0, k0] * (1 - wx) + shift[i1, j0, k0] * wx) * (1 - wy)
                     + (shift[i0, j1, k0] * (1 - wx) + shift[i1, j1, k0] * wx) * wy) * (1 - wz) \
                    + ((shift[i0, j0, k1] * (1 - wx) + shift[i1, j0, k1] * wx) * (1 - wy)
                       + (shift[i0, j1, k1] * (1 - wx) + shift[i1, j1, k1] * wx) * wy) * wz
                p = phi[i, j, k]
                if use_inner:  # phi at most inner - gap_inner (not closer to the surface inside)
                    s = min(s, max(inner[i, j, k] - gap_inner - p, 0.0))
                if use_outer:  # phi at least outer + gap_outer
                    s = max(s, min(outer[i, j, k] + gap_outer - p, 0.0))
                phi[i, j, k] = p + s


def add_local_shift(phi, shift, step: int, outer=None, gap_outer=0.0, inner=None, gap_inner=0.0) -> None:
    """``phi += shift`` (in place), ``shift`` given per sub-grid cell and interpolated linearly between the
    cells' centres, held so that ``phi`` stays at least ``outer + gap_outer`` and at most
    ``inner - gap_inner`` where it already is (the neighbouring fields, float32 of ``phi``'s shape, or None)."""
    dummy = np.zeros((1, 1, 1), np.float32)
    _add_local_shift(phi, np.asarray(shift, np.float32), int(step), dummy if outer is None else outer,
                     np.float32(gap_outer), outer is not None, dummy if inner is None else inner,
                     np.float32(gap_inner), inner is not None)


from . import edge_merge as _edge_merge  # noqa: E402  (plain Python, no imports of the package)

#: :func:`stimsim.head.meshers.edge_merge.plan_merges`, compiled
plan_merges = _edge_merge.compiled(numba.njit)


@numba.njit(cache=True, nogil=True, inline="always")
def _root(parent, i):  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _face_components(keep, neighbors, key, idx, local):  # pragma: no cover - compiled
    n = len(idx)
    parent = np.arange(n)
    for a in range(n):
        t = idx[a]
        for j in range(4):
            o = neighbors[t, j]
            if o > t and keep[o] and key[o] == key[t]:  # (each face once: from its lower tetrahedron)
                ra, rb = _root(parent, a), _root(parent, local[o])
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
    lab = np.empty(n, np.int64)
    n_comp = 0
    for a in range(n):  # numbered in the order of each component's first tetrahedron
        r = _root(parent, a)
        if r == a:
            lab[a] = n_comp
            n_comp += 1
        else:
            lab[a] = lab[r]
    return n_comp, lab


def face_components(keep: np.ndarray, neighbors: np.ndarray, key: np.ndarray):
    """:func:`stimsim.head.meshers.topology.face_components` by union-find: the same components,
    numbered alike (in the order of each one's first tetrahedron, as scipy's ``connected_components``
    numbers them), without building the face graph (docs/meshing.md, surf-6.19)."""
    keep = np.ascontiguousarray(keep, np.bool_)
    idx = np.flatnonzero(keep)
    local = np.full(len(keep), -1, np.int64)
    local[idx] = np.arange(len(idx))
    n, lab = _face_components(keep, np.ascontiguousarray(neighbors, np.int64), np.ascontiguousarray(key),
                              idx, local)
    return idx, n, lab


@numba.njit(parallel=True, cache=True, nogil=True)
def _tissue_shares(pts, labels, column, out):  # pragma: no cover - compiled
    nx, ny, nz = labels.shape
    n_samples, n = pts.shape[1], pts.shape[2]
    n_col = column.shape[0]
    for t in numba.prange(n):
        # the nearest voxels first: all of one tissue (most tetrahedra) -> that tissue whole
        first = -2
        whole = True
        for s in range(n_samples):
            i = min(max(int(np.rint(pts[0, s, t])), 0), nx - 1)
            j = min(max(int(np.rint(pts[1, s, t])), 0), ny - 1)
            k = min(max(int(np.rint(pts[2, s, t])), 0), nz - 1)
            v = labels[i, j, k]
            col = column[v] if 0 <= v < n_col else -1
            if col < 0 or (first != -2 and col != first):
                whole = False
                break
            first = col
        if whole:
            out[t, first] = n_samples
            continue
        # else each point reads each tissue's indicator trilinearly, in float32 per point and summed
        # in float32 over the points, as map_coordinates(..., output=np.float32) and a float32 sum did
        acc = np.zeros(out.shape[1], np.float32)
        val = np.zeros(out.shape[1])
        for s in range(n_samples):
            x = min(max(pts[0, s, t], 0.0), nx - 1.0)
            y = min(max(pts[1, s, t], 0.0), ny - 1.0)
            z = min(max(pts[2, s, t], 0.0), nz - 1.0)
            i0, j0, k0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
            fx, fy, fz = x - i0, y - j0, z - k0
            i1, j1, k1 = min(i0 + 1, nx - 1), min(j0 + 1, ny - 1), min(k0 + 1, nz - 1)
            val[:] = 0.0
            for c in range(8):
                i = i1 if c & 4 else i0
                j = j1 if c & 2 else j0
                k = k1 if c & 1 else k0
                w = (fx if c & 4 else 1.0 - fx) * (fy if c & 2 else 1.0 - fy) * (fz if c & 1 else 1.0 - fz)
                v = labels[i, j, k]
                col = column[v] if 0 <= v < n_col else -1
                if col >= 0 and w > 0.0:
                    val[col] += w
            for q in range(out.shape[1]):
                acc[q] += np.float32(val[q])
        for q in range(out.shape[1]):
            out[t, q] = acc[q]


def tissue_shares(pts: np.ndarray, labels: np.ndarray, column: np.ndarray, n_tissues: int) -> np.ndarray:
    """Per tetrahedron, the sum over its sample points (``pts``: (3, samples, tetrahedra) voxel
    coordinates) of each tissue's share (``column``: tag -> tissue column, -1 for none; coordinates
    beyond the grid read its edge): the number of points where every point's nearest voxel holds one
    tissue, else each tissue's indicator interpolated trilinearly (what
    ``scipy.ndimage.map_coordinates(labels == tag, order=1, mode="nearest", output=np.float32)``
    gives tissue by tissue, summed in float32), in one pass without a copy of the grid per tissue
    (:func:`stimsim.head.meshers.sub_tissues.tissue_fractions`)."""
    out = np.zeros((pts.shape[2], n_tissues))
    _tissue_shares(np.ascontiguousarray(pts, np.float64), labels, np.ascontiguousarray(column, np.int64), out)
    return out
