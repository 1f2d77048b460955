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

The measured errors of the three (element-wise, averaging, SPR) on the spheres that decided
``"auto"`` are in docs/solver.md. So ``"auto"`` uses nodal averaging for tDCS/tACS (near point-like sources the linear fit
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

from ..errors import check_option
from . import kernels

from .assembly import P1Geometry



def element_efield(geometry: P1Geometry, potential_V: np.ndarray, nodes_mm: np.ndarray | None = None) -> np.ndarray:
    """E = -grad(v) per element, V/m, shape (m, 3).

    A volumes-only geometry (no stored gradients) needs the mesh's ``nodes_mm``: the numba kernel
    recomputes each element's gradients (:func:`stimsim.fem.p1_numba.potential_efield`).
    """
    if geometry.grads_kdm is None:
        if nodes_mm is None:
            raise ValueError("a volumes-only P1Geometry needs nodes_mm to compute E")
        from .p1_numba import potential_efield

        return potential_efield(nodes_mm, geometry.tets, potential_V)
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
    centroids_mm, nodes_mm : (m, 3) element centroids (None: the mean of each element's nodes,
        computed per element instead of stored) and (n, 3) node positions, mm
    min_samples : fewest elements of the tissue around a node for a fit
    chunk : elements per block of the numpy path (bounds its temporaries)
    backend : "auto" (numba when installed), "numba" or "numpy"; same results to round-off

    Returns
    -------
    (m, k) recovered field at the element centroids.
    """
    if kernels.use_numba(backend):
        from ._spr_numba import recover_gradient_spr_numba

        return recover_gradient_spr_numba(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples)
    return _recover_gradient_spr_numpy(geometry, tags, element_values, centroids_mm, nodes_mm, min_samples, chunk)


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
            c = ((centroids_mm[e] if centroids_mm is not None else
                  np.stack([nodes_mm[geometry.tets[e], k].mean(axis=1) for k in range(3)], axis=1)) - origin) * 0.1
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
        return recover_gradient_spr(geometry, mesh.tet_tags, element_values, None, mesh.nodes)
    check_option("solver.recovery", method, ("none", "nodal_average", "spr"))
