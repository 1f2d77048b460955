"""numba kernels of the AMG V-cycle (:mod:`stimsim.fem.amg_cycle`).

Matrices are CSR with uint32 indices.  Every kernel's result is independent of the thread count:
products are parallel over rows (each row summed in order) and the smoother over a fixed set of
row blocks.
"""

from __future__ import annotations

import numba
import numpy as np


#: what :func:`matvec` writes
SET, ADD, RESIDUAL = 0, 1, 2


@numba.njit(parallel=True, cache=True, nogil=True)
def matvec(ptr, idx, val, x, out, base, mode):
    """out = A x (``SET``), out += A x (``ADD``) or out = base - A x (``RESIDUAL``)."""
    for i in numba.prange(out.shape[0]):
        s = 0.0
        for k in range(ptr[i], ptr[i + 1]):
            s += val[k] * x[idx[k]]
        if mode == 0:
            out[i] = s
        elif mode == 1:
            out[i] += s
        else:
            out[i] = base[i] - s


@numba.njit(cache=True, nogil=True)
def offblock_l1(ptr, idx, val, bounds):
    """Per row, the absolute sum of its entries in columns outside its own block; and how many
    entries lie outside their row's block."""
    n = ptr.shape[0] - 1
    out = np.zeros(n)
    count = 0
    for blk in range(bounds.shape[0] - 1):
        lo, hi = bounds[blk], bounds[blk + 1]
        for i in range(lo, hi):
            s = 0.0
            for k in range(ptr[i], ptr[i + 1]):
                j = idx[k]
                if j < lo or j >= hi:
                    s += abs(val[k])
                    count += 1
            out[i] = s
    return out, count


@numba.njit(parallel=True, cache=True, nogil=True)
def hybrid_gs(ptr, idx, val, scale, x, b, bounds, forward):
    """One l1 hybrid Gauss-Seidel sweep, in place: x_i += (b - A x)_i * scale_i, rows in order within
    each block (forward or backward), other blocks' values taken from before the sweep.

    ``scale_i = 1 / (a_ii + sum of |a_ij| over other blocks' columns j)``.
    """
    nblk = bounds.shape[0] - 1
    old = x.copy() if nblk > 1 else x
    for blk in numba.prange(nblk):
        lo, hi = bounds[blk], bounds[blk + 1]
        for step in range(hi - lo):
            i = lo + step if forward else hi - 1 - step
            s = b[i]
            for k in range(ptr[i], ptr[i + 1]):
                j = idx[k]
                if j >= lo and j < hi:
                    s -= val[k] * x[j]
                else:
                    s -= val[k] * old[j]
            x[i] += s * scale[i]


@numba.njit(parallel=True, cache=True, nogil=True)
def _spgemm_counts(a_ptr, a_idx, b_ptr, b_idx, ncols, bounds):
    n = a_ptr.shape[0] - 1
    counts = np.zeros(n, np.int64)
    for c in numba.prange(bounds.shape[0] - 1):
        mark = np.full(ncols, -1, np.int64)
        for i in range(bounds[c], bounds[c + 1]):
            k = 0
            for p in range(a_ptr[i], a_ptr[i + 1]):
                j = a_idx[p]
                for q in range(b_ptr[j], b_ptr[j + 1]):
                    col = b_idx[q]
                    if mark[col] != i:
                        mark[col] = i
                        k += 1
            counts[i] = k
    return counts


@numba.njit(parallel=True, cache=True, nogil=True)
def _spgemm_fill(a_ptr, a_idx, a_val, b_ptr, b_idx, b_val, ncols, bounds, c_ptr, c_idx, c_val):
    for c in numba.prange(bounds.shape[0] - 1):
        slot = np.full(ncols, -1, np.int64)
        for i in range(bounds[c], bounds[c + 1]):
            start = c_ptr[i]
            k = start
            for p in range(a_ptr[i], a_ptr[i + 1]):
                j = a_idx[p]
                v = a_val[p]
                for q in range(b_ptr[j], b_ptr[j + 1]):
                    col = b_idx[q]
                    s = slot[col]
                    if s < start:  # first touch of this column in row i
                        slot[col] = k
                        c_idx[k] = col
                        c_val[k] = v * b_val[q]
                        k += 1
                    else:
                        c_val[s] += v * b_val[q]


def spgemm(a, b, chunks: int = 64):
    """C = A B for CSR matrices, rows in parallel (Gustavson: each entry summed in the order SciPy's
    product sums it; columns within a row in order of first touch, not sorted)."""
    import scipy.sparse as sp

    n, ncols = a.shape[0], b.shape[1]
    bounds = (np.arange(chunks + 1, dtype=np.int64) * n) // chunks
    counts = _spgemm_counts(a.indptr, a.indices, b.indptr, b.indices, ncols, bounds)
    c_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=c_ptr[1:])
    nnz = int(c_ptr[-1])
    c_idx = np.empty(nnz, np.int32 if max(nnz, ncols) < 2**31 else np.int64)
    c_val = np.empty(nnz)
    _spgemm_fill(a.indptr, a.indices, a.data, b.indptr, b.indices, b.data, ncols, bounds, c_ptr, c_idx, c_val)
    if nnz < 2**31:
        c_ptr = c_ptr.astype(np.int32)
    return sp.csr_matrix((c_val, c_idx, c_ptr), shape=(n, ncols))


def warm_up() -> None:
    """Load every kernel from numba's on-disk cache (compiling on the very first use)."""
    ptr = np.array([0, 1, 2], np.uint32)
    idx = np.array([0, 1], np.uint32)
    val = np.ones(2)
    x, y = np.ones(2), np.empty(2)
    matvec(ptr, idx, val, x, y, y, SET)
    bounds = np.array([0, 1, 2], np.int64)
    offblock_l1(ptr, idx, val, bounds)
    hybrid_gs(ptr, idx, val, val, y, x, bounds, True)
    import scipy.sparse as sp

    eye = sp.identity(2, format="csr")
    spgemm(eye, eye, chunks=2)
