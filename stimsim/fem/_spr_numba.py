"""Numba kernels of superconvergent patch recovery (see :mod:`stimsim.fem.fields`).

A module of its own, imported only when SPR runs, so that importing the field code (every
tDCS run) does not import numba (~0.15 s and ~50 MB).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _group_by_tag_numba(tags, lo, span):  # pragma: no cover - compiled
    """Counting sort of the elements by tag value (tags - lo in [0, span)).

    Returns ``order`` (element ids grouped by increasing tag, increasing id within a tag)
    and ``starts`` (offsets of each present tag in ``order``).
    """
    m = tags.shape[0]
    cnt = np.zeros(span, np.int64)
    for e in range(m):
        cnt[tags[e] - lo] += 1
    ntag = 0
    for v in range(span):
        if cnt[v] > 0:
            ntag += 1
    starts = np.empty(ntag + 1, np.int64)
    pos = cnt  # reused as the insertion cursor of each tag value
    k = 0
    s = 0
    for v in range(span):
        c = cnt[v]
        if c > 0:
            starts[k] = s
            pos[v] = s
            s += c
            k += 1
    starts[ntag] = s
    order = np.empty(m, np.int64)
    for e in range(m):
        v = tags[e] - lo
        order[pos[v]] = e
        pos[v] += 1
    return order, starts

@numba.njit(cache=True)
def _spr_accumulate_numba(order, s0, s1, tets, vol, wscale, cent, nodes, origin, values, sums,
                          count):  # pragma: no cover - compiled
    """Add the 10 + 4 ncomp patch moments of elements order[s0:s1] to their 4 nodes' rows.

    Same per-element arithmetic as the numpy path (centroids in cm about ``origin``,
    weights = volume * wscale); serial, so the scatter needs no atomics.
    """
    ncomp = values.shape[1]
    ncol = 10 + 4 * ncomp
    q = np.empty(ncol)
    o0 = origin[0]
    o1 = origin[1]
    o2 = origin[2]
    own = cent.shape[0] == 0  # no centroids given: the mean of the 4 nodes, as Mesh.centroids
    for p in range(s0, s1):
        e = order[p]
        w = vol[e] * wscale
        if own:
            t0, t1, t2, t3 = tets[e, 0], tets[e, 1], tets[e, 2], tets[e, 3]
            c0 = ((((nodes[t0, 0] + nodes[t1, 0]) + nodes[t2, 0]) + nodes[t3, 0]) / 4.0 - o0) * 0.1
            c1 = ((((nodes[t0, 1] + nodes[t1, 1]) + nodes[t2, 1]) + nodes[t3, 1]) / 4.0 - o1) * 0.1
            c2 = ((((nodes[t0, 2] + nodes[t1, 2]) + nodes[t2, 2]) + nodes[t3, 2]) / 4.0 - o2) * 0.1
        else:
            c0 = (cent[e, 0] - o0) * 0.1
            c1 = (cent[e, 1] - o1) * 0.1
            c2 = (cent[e, 2] - o2) * 0.1
        w0 = w * c0
        w1 = w * c1
        w2 = w * c2
        q[0] = w
        q[1] = w0
        q[2] = w1
        q[3] = w2
        q[4] = w0 * c0
        q[5] = w0 * c1
        q[6] = w0 * c2
        q[7] = w1 * c1
        q[8] = w1 * c2
        q[9] = w2 * c2
        for d in range(ncomp):
            v = values[e, d]
            q[10 + d] = w * v
            q[10 + ncomp + d] = w0 * v
            q[10 + 2 * ncomp + d] = w1 * v
            q[10 + 3 * ncomp + d] = w2 * v
        for k in range(4):
            i = tets[e, k]
            count[i] += 1
            for j in range(ncol):
                sums[i, j] += q[j]

@numba.njit(parallel=True, cache=True, error_model="numpy")
def _spr_solve_numba(sums, count, nodes, origin, min_samples, nodal):  # pragma: no cover - compiled
    """Per node with count > 0: volume-weighted average, replaced by the patch fit's value
    at the node where count >= min_samples and det(M) / prod(diag M) > 1e-6.

    Resets the rows it reads (sums, count) to zero for the next tissue.  Parallel over
    blocks of nodes; each node's row is touched by one thread only.
    """
    n = sums.shape[0]
    ncomp = nodal.shape[1]
    nblk = 256
    step = (n + nblk - 1) // nblk
    for b in numba.prange(nblk):
        a = np.empty((4, 4))
        r = np.empty((4, ncomp))
        x = np.empty(3)
        swc = np.empty(3)
        for i in range(b * step, min(n, (b + 1) * step)):
            cnt = count[i]
            if cnt == 0:
                continue
            sw = sums[i, 0]
            for d in range(ncomp):
                nodal[i, d] = sums[i, 10 + d] / sw  # averaging fallback
            if cnt >= min_samples:
                for k in range(3):
                    x[k] = (nodes[i, k] - origin[k]) * 0.1
                    swc[k] = sums[i, 1 + k]
                # normal equations expanded about the node: basis [1, c - x]
                a[0, 0] = sw
                for k in range(3):
                    a[0, 1 + k] = swc[k] - x[k] * sw
                    a[1 + k, 0] = a[0, 1 + k]
                col = 4
                for k in range(3):
                    for l in range(k, 3):
                        v = ((sums[i, col] - x[k] * swc[l]) - swc[k] * x[l]) + x[k] * x[l] * sw
                        a[1 + k, 1 + l] = v
                        a[1 + l, 1 + k] = v
                        col += 1
                for d in range(ncomp):
                    swv = sums[i, 10 + d]
                    r[0, d] = swv
                    for k in range(3):
                        r[1 + k, d] = sums[i, 10 + ncomp * (k + 1) + d] - x[k] * swv
                pdiag = ((a[0, 0] * a[1, 1]) * a[2, 2]) * a[3, 3]
                # LU with partial pivoting (as LAPACK getrf), eliminating r alongside
                det = 1.0
                for k in range(4):
                    piv = k
                    big = abs(a[k, k])
                    for rr in range(k + 1, 4):
                        if abs(a[rr, k]) > big:
                            big = abs(a[rr, k])
                            piv = rr
                    if piv != k:
                        det = -det
                        for j in range(4):
                            t = a[k, j]
                            a[k, j] = a[piv, j]
                            a[piv, j] = t
                        for d in range(ncomp):
                            t = r[k, d]
                            r[k, d] = r[piv, d]
                            r[piv, d] = t
                    det *= a[k, k]
                    if a[k, k] == 0.0:
                        break
                    for rr in range(k + 1, 4):
                        f = a[rr, k] / a[k, k]
                        for j in range(k + 1, 4):
                            a[rr, j] -= f * a[k, j]
                        for d in range(ncomp):
                            r[rr, d] -= f * r[k, d]
                if det / pdiag > 1e-6:  # 1 = orthogonal, 0 = singular (nan: fallback)
                    for d in range(ncomp):
                        for k in range(3, -1, -1):
                            s = r[k, d]
                            for j in range(k + 1, 4):
                                s -= a[k, j] * r[j, d]
                            r[k, d] = s / a[k, k]
                        nodal[i, d] = r[0, d]
            for j in range(sums.shape[1]):
                sums[i, j] = 0.0
            count[i] = 0

@numba.njit(parallel=True, cache=True)
def _spr_evaluate_numba(order, s0, s1, tets, nodal, out):  # pragma: no cover - compiled
    """out[e] = mean of the 4 nodal values, for e in order[s0:s1] (same sum order as element_mean)."""
    ncomp = nodal.shape[1]
    for p in numba.prange(s0, s1):
        e = order[p]
        t0 = tets[e, 0]
        t1 = tets[e, 1]
        t2 = tets[e, 2]
        t3 = tets[e, 3]
        for d in range(ncomp):
            out[e, d] = ((((0.0 + nodal[t0, d]) + nodal[t1, d]) + nodal[t2, d]) + nodal[t3, d]) * 0.25


def _group_by_tag(tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): element ids grouped by tag (ascending), ascending within a tag; O(m)."""
    tags = np.ascontiguousarray(tags).ravel()
    if len(tags) == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    if tags.dtype.kind in "iu" and tags.dtype.itemsize <= 4 and tags.dtype != np.int32:
        tags = tags.astype(np.int64)  # one compiled variant per int32 / int64
    if tags.dtype in (np.int32, np.int64):
        lo, hi = int(tags.min()), int(tags.max())
        if hi - lo < (1 << 20):
            return _group_by_tag_numba(tags, lo, hi - lo + 1)
    # sparse or non-integer tags: dense ids first (same grouping and order as np.unique)
    inv = np.unique(tags, return_inverse=True)[1].ravel().astype(np.int32)
    return _group_by_tag_numba(inv, 0, int(inv.max()) + 1)


def recover_gradient_spr_numba(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples):
    values = np.ascontiguousarray(element_values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"element_values must be (m, k), got shape {values.shape}")
    nodes = np.ascontiguousarray(nodes_mm, dtype=np.float64)
    cent = (np.zeros((0, 3)) if centroids_mm is None  # computed per element in the kernel
            else np.ascontiguousarray(centroids_mm, dtype=np.float64))
    tets = np.ascontiguousarray(geometry.tets)
    vol = np.ascontiguousarray(geometry.volumes_m3, dtype=np.float64)
    origin = nodes.mean(axis=0)
    n, ncomp = len(nodes), values.shape[1]
    order, starts = _group_by_tag(tags)
    # O(n) work arrays, reused tissue after tissue (the solve resets the rows it touched)
    sums = np.zeros((n, 10 + 4 * ncomp))
    count = np.zeros(n, np.int64)
    nodal = np.zeros((n, ncomp))
    out = np.empty(values.shape)
    for k in range(len(starts) - 1):
        s0, s1 = int(starts[k]), int(starts[k + 1])
        wscale = 1.0 / vol[order[s0:s1]].mean()  # bit-identical to the numpy path's scaling
        _spr_accumulate_numba(order, s0, s1, tets, vol, wscale, cent, nodes, origin, values, sums, count)
        _spr_solve_numba(sums, count, nodes, origin, int(min_samples), nodal)
        _spr_evaluate_numba(order, s0, s1, tets, nodal, out)
    return out
