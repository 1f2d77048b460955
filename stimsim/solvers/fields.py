"""Fields from the nodal potential: element-wise E and J, and node-wise recovery.

Element-wise E = -grad(v) is constant per tetrahedron and first-order accurate.

Two node-wise recoveries, both evaluated back at the element centroids (mean of the 4
nodal values) and both done per tissue:

Recovery ("nodal_average"): per tissue, each node gets the volume-weighted mean of the
gradients of the tetrahedra of that tissue around it (Zienkiewicz-Zhu style nodal
averaging), and the recovered field of an element is the mean of its 4 nodal values.
The averaging never crosses a tissue boundary, because the normal component of E jumps
there with the conductivity ratio; nodes on an interface therefore carry one value per
tissue.  For TMS only grad(v) is recovered; the primary field -dA/dt is smooth and is
added exactly afterwards.

Superconvergent patch recovery ("spr", after Zienkiewicz & Zhu 1992, Int J Numer Meth Eng
33:1331, doi:10.1002/nme.1620330702): per tissue, each node fits a linear vector field to the
element gradients sampled at the centroids of its patch (volume-weighted least squares)
and takes the fit's value at the node.  Unlike averaging, the fit extrapolates correctly at
tissue interfaces and the outer surface, where a patch is one-sided.

Measured on the 3-layer sphere (relative L2 error of E in the inner ball, tests/test_fem_sphere.py
and tests/test_tms.py):

================  ==========  =============  =====
case              element     nodal_average  spr
================  ==========  =============  =====
tDCS, 23k tets    8.05 %      5.26 %         5.25 %
tDCS, 632k tets   2.49 %      0.89 %         1.07 %
TMS, 23k tets     7.50 %      6.05 %         4.71 %
================  ==========  =============  =====

So ``"auto"`` uses nodal averaging for tDCS/tACS (near point-like sources the linear fit
over-shoots) and SPR for TMS (smooth sources, error dominated by the interfaces).

SPR has two implementations with the same mathematics: a numba kernel (used when numba is
installed; serial moment accumulation into per-node rows, parallel per-node 4x4 solves and
per-element evaluation, no per-element temporaries) and a vectorised numpy one (sparse
node-element incidence products).  They agree to round-off (~1e-13 relative on the sphere
meshes); ``recover_gradient_spr(..., backend=...)`` selects one.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .assembly import P1Geometry

try:  # optional accelerator (same pattern as stimsim.solvers.primary)
    import numba

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
    def _spr_accumulate_numba(order, s0, s1, tets, vol, wscale, cent, origin, values, sums,
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
        for p in range(s0, s1):
            e = order[p]
            w = vol[e] * wscale
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

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False


def element_efield(geometry: P1Geometry, potential_V: np.ndarray) -> np.ndarray:
    """E = -grad(v) per element, V/m, shape (m, 3)."""
    return -geometry.gradient(potential_V)


def recover_gradient(geometry: P1Geometry, tags: np.ndarray, element_values: np.ndarray) -> np.ndarray:
    """Volume-weighted nodal averaging of an element-wise vector, per tissue, back at centroids.

    Parameters
    ----------
    geometry : P1Geometry
    tags : (m,) tissue tag per element; averaging never mixes tags
    element_values : (m, 3) piecewise-constant field (e.g. -grad v)

    Returns
    -------
    (m, 3) recovered field evaluated at the element centroids.
    """
    out = np.empty_like(element_values)
    n = geometry.n_nodes
    ncomp = element_values.shape[1]
    for tag in np.unique(tags):
        sel = np.flatnonzero(tags == tag)
        t = geometry.tets[sel]
        w = geometry.volumes_m3[sel]
        wv = [w * element_values[sel, d] for d in range(ncomp)]
        # accumulate corner by corner: no (4m,) repeated temporaries
        wsum = np.zeros(n)
        sums = np.zeros((ncomp, n))
        for k in range(4):
            wsum += np.bincount(t[:, k], weights=w, minlength=n)
            for d in range(ncomp):
                sums[d] += np.bincount(t[:, k], weights=wv[d], minlength=n)
        nodal = np.divide(sums, wsum, out=np.zeros_like(sums), where=wsum > 0)
        out[sel] = element_mean(nodal.T, t)
    return out


def element_mean(nodal: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Mean over each element's 4 nodes of a nodal vector field (n, k) -> (m, k).

    Component by component, so no (m, 4, k) gather is ever allocated.
    """
    res = np.zeros((len(tets), nodal.shape[1]))
    for d in range(nodal.shape[1]):
        row = np.ascontiguousarray(nodal[:, d])
        for k in range(4):
            res[:, d] += row[tets[:, k]]
    return res * 0.25


def _node_element_incidence(tets: np.ndarray, n: int) -> sp.csr_matrix:
    """Sparse (n, m) matrix with a 1 where node i is a corner of element e."""
    m = len(tets)
    cols = np.repeat(np.arange(m, dtype=np.int32), 4)
    return sp.csr_matrix((np.ones(4 * m), (tets.ravel().astype(np.int32), cols)), shape=(n, m))


def recover_gradient_spr(geometry: P1Geometry, tags: np.ndarray, element_values: np.ndarray,
                         centroids_mm: np.ndarray, nodes_mm: np.ndarray, *, min_samples: int = 10,
                         chunk: int = 1 << 17, backend: str = "auto") -> np.ndarray:
    """Superconvergent patch recovery of an element-wise vector field, per tissue, at centroids.

    Per tissue, each node fits a linear field to the values at the centroids of the
    tissue's elements around it (weights = element volumes), and takes the fit's value at
    the node; each element then gets the mean of its 4 nodal values.  Nodes whose patch has
    fewer than ``min_samples`` elements of the tissue, or whose least-squares system is
    ill-conditioned (det(M) / prod(diag M) <= 1e-6, M the 4x4 normal matrix), fall back to
    the volume-weighted nodal average.

    The normal equations of every patch are sums over its elements of w, w c, w c c^T, w v
    and w c v^T (c = centroid in cm about the mesh centre, v = value, w = volume / mean
    tissue volume), expanded about the node afterwards.

    Parameters
    ----------
    geometry : P1Geometry (tets, volumes)
    tags : (m,) tissue tag per element; patches never mix tags
    element_values : (m, k) piecewise-constant field
    centroids_mm, nodes_mm : (m, 3) element centroids and (n, 3) node positions, mm
    min_samples : fewest elements of the tissue around a node for a fit
    chunk : elements per block of the numpy path (bounds its temporaries)
    backend : "auto" (numba when installed), "numba" or "numpy"; same results to round-off

    Returns
    -------
    (m, k) recovered field at the element centroids.
    """
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend: {backend!r} is not one of auto, numba, numpy")
    use_numba = HAVE_NUMBA if backend == "auto" else backend == "numba"
    if use_numba and not HAVE_NUMBA:
        raise ImportError("backend 'numba' requested but numba is not installed")
    if use_numba:
        return _recover_gradient_spr_numba(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples)
    return _recover_gradient_spr_numpy(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples, chunk)


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


def _recover_gradient_spr_numba(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples):
    values = np.ascontiguousarray(element_values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"element_values must be (m, k), got shape {values.shape}")
    nodes = np.ascontiguousarray(nodes_mm, dtype=np.float64)
    cent = np.ascontiguousarray(centroids_mm, dtype=np.float64)
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
        _spr_accumulate_numba(order, s0, s1, tets, vol, wscale, cent, origin, values, sums, count)
        _spr_solve_numba(sums, count, nodes, origin, int(min_samples), nodal)
        _spr_evaluate_numba(order, s0, s1, tets, nodal, out)
    return out


def _recover_gradient_spr_numpy(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples, chunk):
    """Vectorised numpy SPR: all patches summed by sparse products (incidence @ 22 columns)."""
    out = np.empty_like(element_values)
    ncomp = element_values.shape[1]
    origin = nodes_mm.mean(axis=0)
    iu = [(i, j) for i in range(3) for j in range(i, 3)]
    for tag in np.unique(tags):
        sel = np.flatnonzero(tags == tag)
        # work on this tissue's nodes only (renumbered 0..n-1)
        used, t = np.unique(geometry.tets[sel], return_inverse=True)
        t = t.reshape(-1, 4)
        n = len(used)
        x = (nodes_mm[used] - origin) * 0.1  # cm about the mesh centre: well-scaled normal equations
        wscale = 1.0 / geometry.volumes_m3[sel].mean()
        ncol = 10 + 4 * ncomp
        sums = np.zeros((n, ncol))
        for s0 in range(0, len(sel), chunk):  # chunks bound the (elements x 22) temporaries
            e = sel[s0:s0 + chunk]
            w = geometry.volumes_m3[e] * wscale
            c = (centroids_mm[e] - origin) * 0.1
            v = element_values[e]
            q = np.empty((len(e), ncol))
            q[:, 0] = w
            q[:, 1:4] = w[:, None] * c
            for k, (i, j) in enumerate(iu):
                q[:, 4 + k] = q[:, 1 + i] * c[:, j]
            q[:, 10:10 + ncomp] = w[:, None] * v
            for i in range(3):
                q[:, 10 + ncomp * (i + 1):10 + ncomp * (i + 2)] = q[:, 1 + i, None] * v
            sums += _node_element_incidence(t[s0:s0 + chunk], n) @ q
        sw, swc = sums[:, 0], sums[:, 1:4]
        swcc = np.empty((n, 3, 3))
        for k, (i, j) in enumerate(iu):
            swcc[:, i, j] = swcc[:, j, i] = sums[:, 4 + k]
        swv = sums[:, 10:10 + ncomp]
        swcv = sums[:, 10 + ncomp:].reshape(n, 3, ncomp)
        # expand about each node: basis [1, c - x]
        m = np.empty((n, 4, 4))
        m[:, 0, 0] = sw
        m[:, 0, 1:] = m[:, 1:, 0] = swc - x * sw[:, None]
        m[:, 1:, 1:] = (swcc - x[:, :, None] * swc[:, None, :] - swc[:, :, None] * x[:, None, :]
                        + x[:, :, None] * x[:, None, :] * sw[:, None, None])
        r = np.empty((n, 4, ncomp))
        r[:, 0] = swv
        r[:, 1:] = swcv - x[:, :, None] * swv[:, None, :]
        count = np.zeros(n, np.int64)
        for k in range(4):
            count += np.bincount(t[:, k], minlength=n)
        nodal = np.zeros((n, ncomp))
        used = count > 0
        nodal[used] = r[used, 0] / sw[used, None]  # averaging fallback
        fit = np.flatnonzero(count >= min_samples)
        mk = m[fit]
        diag = np.einsum("kii->ki", mk)
        hadamard = np.linalg.det(mk) / np.prod(diag, axis=1)  # 1 = orthogonal, 0 = singular
        fit = fit[hadamard > 1e-6]
        nodal[fit] = np.linalg.solve(m[fit], r[fit])[:, 0]
        out[sel] = element_mean(nodal, t)
    return out


def recover(method: str, geometry: P1Geometry, mesh, element_values: np.ndarray) -> np.ndarray | None:
    """Dispatch on a protocol's ``solver.recovery`` value (``"auto"`` must be resolved by the caller)."""
    if method == "none":
        return None
    if method == "nodal_average":
        return recover_gradient(geometry, mesh.tet_tags, element_values)
    if method == "spr":
        return recover_gradient_spr(geometry, mesh.tet_tags, element_values, mesh.centroids, mesh.nodes)
    raise ValueError(f"solver.recovery: {method!r} is not one of none, nodal_average, spr")
