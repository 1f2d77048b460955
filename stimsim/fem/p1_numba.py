"""Numba kernels for the P1 operators of a single run, without stored element gradients.

The numpy path (:mod:`stimsim.fem.assembly`) keeps every element's hat-function
gradients, (4, 3, m) float64: 61 MiB on a 668k-tet head, alive from assembly to the
fields.  These kernels recompute an element's gradients from its 4 node coordinates
whenever they need them (about 60 flops, cheaper than reading 96 stored bytes), and build
the stiffness matrix straight into CSR from the node-to-element incidence, with no COO
triplets (16 per element) to sort and sum.

Same formulas as the numpy path (edge vectors from node 0, cofactor gradients, diagonal =
minus the off-diagonal row sum), so results agree to round-off; tests/test_p1_numba.py
compares them.  A single tDCS/tACS or TMS run uses them (numba is loaded for the AMG V-cycle
anyway, :mod:`stimsim.fem.amg_cycle`); heads kept for many solves store the gradients.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


@numba.njit(cache=True, nogil=True, inline="always")
def _grads(x, tets, e, g):  # pragma: no cover - compiled
    """Hat-function gradients of element e into g (4, 3), 1/m; returns the signed 6 x volume (m³)."""
    i0, i1, i2, i3 = tets[e, 0], tets[e, 1], tets[e, 2], tets[e, 3]
    ax, ay, az = x[i1, 0] - x[i0, 0], x[i1, 1] - x[i0, 1], x[i1, 2] - x[i0, 2]
    bx, by, bz = x[i2, 0] - x[i0, 0], x[i2, 1] - x[i0, 1], x[i2, 2] - x[i0, 2]
    cx, cy, cz = x[i3, 0] - x[i0, 0], x[i3, 1] - x[i0, 1], x[i3, 2] - x[i0, 2]
    bc0, bc1, bc2 = by * cz - bz * cy, bz * cx - bx * cz, bx * cy - by * cx
    ca0, ca1, ca2 = cy * az - cz * ay, cz * ax - cx * az, cx * ay - cy * ax
    ab0, ab1, ab2 = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    det = ax * bc0 + ay * bc1 + az * bc2
    inv = 1.0 / det
    g[1, 0], g[1, 1], g[1, 2] = bc0 * inv, bc1 * inv, bc2 * inv
    g[2, 0], g[2, 1], g[2, 2] = ca0 * inv, ca1 * inv, ca2 * inv
    g[3, 0], g[3, 1], g[3, 2] = ab0 * inv, ab1 * inv, ab2 * inv
    for d in range(3):
        g[0, d] = -(g[1, d] + g[2, d] + g[3, d])
    return det


@numba.njit(cache=True, nogil=True)
def _node_incidence(tets, n):  # pragma: no cover - compiled
    """Node -> (element, corner) lists as CSR: codes 4 e + a in inc[ptr[i]:ptr[i + 1]]."""
    m = tets.shape[0]
    ptr = np.zeros(n + 1, np.int64)
    for e in range(m):
        for a in range(4):
            ptr[tets[e, a] + 1] += 1
    for i in range(n):
        ptr[i + 1] += ptr[i]
    pos = ptr[:-1].copy()
    inc = np.empty(4 * m, np.int64)
    for e in range(m):
        for a in range(4):
            i = tets[e, a]
            inc[pos[i]] = 4 * e + a
            pos[i] += 1
    return ptr, inc


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_lengths(ptr, inc, tets, nchunks):  # pragma: no cover - compiled
    """Number of distinct neighbours (itself included) of every node; rows in nchunks blocks,
    each block with its own last-seen marker so no row needs a sort or an allocation."""
    n = ptr.shape[0] - 1
    out = np.zeros(n + 1, np.int64)
    for c in numba.prange(nchunks):
        seen = np.full(n, -1, np.int64)
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            cnt = 0
            for p in range(ptr[i], ptr[i + 1]):
                e = inc[p] >> 2
                for b in range(4):
                    j = tets[e, b]
                    if seen[j] != i:
                        seen[j] = i
                        cnt += 1
            out[i + 1] = cnt
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _fill_rows(ptr, inc, tets, x, weight, indptr, indices, data, nchunks):  # pragma: no cover - compiled
    """Row i of K: sorted neighbour list and sum_e w_e V_e grad(phi_i).grad(phi_j) (j != i);
    the diagonal is minus the off-diagonal sum (rows of a Laplacian sum to zero)."""
    n = ptr.shape[0] - 1
    for c in numba.prange(nchunks):
        where = np.full(n, -1, np.int64)  # slot of column j in the current row when >= its start
        g = np.empty((4, 3))
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            r0 = indptr[i]
            r1 = r0
            for p in range(ptr[i], ptr[i + 1]):
                e = inc[p] >> 2
                for b in range(4):
                    j = tets[e, b]
                    if where[j] < r0:
                        where[j] = r1
                        indices[r1] = j
                        r1 += 1
            for k in range(r0 + 1, r1):  # insertion sort: rows hold ~15 entries
                v = indices[k]
                q = k - 1
                while q >= r0 and indices[q] > v:
                    indices[q + 1] = indices[q]
                    q -= 1
                indices[q + 1] = v
            for k in range(r0, r1):
                where[indices[k]] = k
                data[k] = 0.0
            for p in range(ptr[i], ptr[i + 1]):
                e = inc[p] >> 2
                a = inc[p] & 3
                det = _grads(x, tets, e, g)
                w = weight[e] * abs(det) / 6.0
                for b in range(4):
                    if b != a:
                        data[where[tets[e, b]]] += (g[a, 0] * g[b, 0] + g[a, 1] * g[b, 1] + g[a, 2] * g[b, 2]) * w
            diag = 0.0
            for k in range(r0, r1):
                if indices[k] != i:
                    diag -= data[k]
            data[where[i]] = diag


@numba.njit(cache=True, nogil=True)
def _load_from_nodal(x, tets, sigma, nodal, out):  # pragma: no cover - compiled
    """out_i = sum_e V_e (-sigma_e mean_e(nodal)) . grad(phi_i)  (serial scatter: no races)."""
    g = np.empty((4, 3))
    for e in range(tets.shape[0]):
        det = _grads(x, tets, e, g)
        f = -sigma[e] * abs(det) / 6.0 * 0.25
        f0 = f * (nodal[tets[e, 0], 0] + nodal[tets[e, 1], 0] + nodal[tets[e, 2], 0] + nodal[tets[e, 3], 0])
        f1 = f * (nodal[tets[e, 0], 1] + nodal[tets[e, 1], 1] + nodal[tets[e, 2], 1] + nodal[tets[e, 3], 1])
        f2 = f * (nodal[tets[e, 0], 2] + nodal[tets[e, 1], 2] + nodal[tets[e, 2], 2] + nodal[tets[e, 3], 2])
        for a in range(4):
            out[tets[e, a]] += f0 * g[a, 0] + f1 * g[a, 1] + f2 * g[a, 2]


@numba.njit(parallel=True, cache=True, nogil=True)
def _fields(x, tets, potential, nodal, minus_grad, total):  # pragma: no cover - compiled
    """minus_grad[e] = -grad v; total[e] = -grad v - mean_e(nodal)  (E of TMS with nodal = dA/dt)."""
    for e in numba.prange(tets.shape[0]):
        g = np.empty((4, 3))
        _grads(x, tets, e, g)
        for d in range(3):
            s = 0.0
            mean = 0.0
            for a in range(4):
                s += potential[tets[e, a]] * g[a, d]
                mean += nodal[tets[e, a], d]
            minus_grad[e, d] = -s
            total[e, d] = -s - 0.25 * mean


@numba.njit(parallel=True, cache=True, nogil=True)
def _minus_gradient(x, tets, potential, out):  # pragma: no cover - compiled
    """out[e] = -grad v on element e."""
    for e in numba.prange(tets.shape[0]):
        g = np.empty((4, 3))
        _grads(x, tets, e, g)
        for d in range(3):
            s = 0.0
            for a in range(4):
                s += potential[tets[e, a]] * g[a, d]
            out[e, d] = -s


def _coords_m(nodes_mm: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(nodes_mm, dtype=np.float64) * 1e-3


def _tets(tets: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(tets, dtype=np.int32 if tets.dtype.itemsize <= 4 else np.int64)


def stiffness_matrix(nodes_mm: np.ndarray, tets: np.ndarray, sigma: np.ndarray) -> sp.csr_matrix:
    r"""Stiffness matrix :math:`K_{ij} = \sum_e \sigma_e V_e \nabla\phi_i\cdot\nabla\phi_j` (S), sorted CSR.

    Same matrix as :func:`stimsim.fem.assembly.assemble_stiffness` up to round-off,
    built row by row in parallel; the mesh must have no zero-volume elements (``check_mesh``).
    """
    tets = _tets(tets)
    x = _coords_m(nodes_mm)
    ptr, inc = _node_incidence(tets, len(x))
    nchunks = 8 * numba.get_num_threads()
    indptr = np.cumsum(_row_lengths(ptr, inc, tets, nchunks))
    index_type = np.int32 if indptr[-1] < 2**31 else np.int64
    indices = np.empty(int(indptr[-1]), index_type)
    data = np.empty(int(indptr[-1]))
    _fill_rows(ptr, inc, tets, x, np.ascontiguousarray(sigma, dtype=np.float64), indptr, indices, data, nchunks)
    del ptr, inc
    k = sp.csr_matrix((data, indices, indptr.astype(index_type)), shape=(len(x), len(x)))
    k.has_sorted_indices = True
    k.has_canonical_format = True
    return k


def load_from_nodal_field(nodes_mm: np.ndarray, tets: np.ndarray, sigma: np.ndarray,
                          nodal: np.ndarray) -> np.ndarray:
    """FEM right-hand side (A) of the source ``-sigma mean_e(nodal)`` (TMS: nodal = dA/dt, V/m)."""
    out = np.zeros(len(nodes_mm))
    _load_from_nodal(_coords_m(nodes_mm), _tets(tets), np.ascontiguousarray(sigma, dtype=np.float64),
                     np.ascontiguousarray(nodal, dtype=np.float64), out)
    return out


def tms_fields(nodes_mm: np.ndarray, tets: np.ndarray, potential: np.ndarray,
               dadt_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(-grad v, E = -grad v - mean_e(dA/dt)) per element, V/m, (m, 3) each."""
    m = len(tets)
    minus_grad, total = np.empty((m, 3)), np.empty((m, 3))
    _fields(_coords_m(nodes_mm), _tets(tets), np.ascontiguousarray(potential, dtype=np.float64),
            np.ascontiguousarray(dadt_nodes, dtype=np.float64), minus_grad, total)
    return minus_grad, total


def potential_efield(nodes_mm: np.ndarray, tets: np.ndarray, potential: np.ndarray) -> np.ndarray:
    """E = -grad v per element, V/m, (m, 3)."""
    out = np.empty((len(tets), 3))
    _minus_gradient(_coords_m(nodes_mm), _tets(tets), np.ascontiguousarray(potential, dtype=np.float64), out)
    return out


def warm_up(tms: bool = True) -> None:
    """Load the kernels of a run from numba's on-disk cache (compiling on the very first use): the
    stiffness matrix and, for TMS, the load and fields; else E from the potential."""
    nodes = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    tets = np.array([[0, 1, 2, 3]], np.int32)
    sigma = np.ones(1)
    stiffness_matrix(nodes, tets, sigma)
    if tms:
        load_from_nodal_field(nodes, tets, sigma, nodes)
        tms_fields(nodes, tets, np.zeros(4), nodes)
    else:
        potential_efield(nodes, tets, np.zeros(4))
