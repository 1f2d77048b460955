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
"""

from __future__ import annotations

import numpy as np

from .assembly import P1Geometry


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
    for tag in np.unique(tags):
        sel = np.flatnonzero(tags == tag)
        t = geometry.tets[sel]
        w = geometry.volumes_m3[sel]
        flat = t.ravel()
        wsum = np.bincount(flat, weights=np.repeat(w, 4), minlength=n)
        nodal = np.empty((n, element_values.shape[1]))
        for d in range(element_values.shape[1]):
            s = np.bincount(flat, weights=np.repeat(w * element_values[sel, d], 4), minlength=n)
            nodal[:, d] = np.divide(s, wsum, out=np.zeros(n), where=wsum > 0)
        out[sel] = nodal[t].mean(axis=1)
    return out


def recover_gradient_spr(geometry: P1Geometry, tags: np.ndarray, element_values: np.ndarray,
                         centroids_mm: np.ndarray, nodes_mm: np.ndarray, *, min_samples: int = 10) -> np.ndarray:
    """Superconvergent patch recovery of an element-wise vector field, per tissue, at centroids.

    Nodes whose patch has fewer than ``min_samples`` elements of the tissue, or whose
    least-squares system is ill-conditioned (flat patches), fall back to nodal averaging.
    """
    out = np.empty_like(element_values)
    n = geometry.n_nodes
    ncomp = element_values.shape[1]
    for tag in np.unique(tags):
        sel = np.flatnonzero(tags == tag)
        t = geometry.tets[sel]
        node = t.ravel()
        elem = np.repeat(sel, 4)
        w = geometry.volumes_m3[elem]
        w = w / w.mean()
        # local coordinates in cm keep the 4x4 normal equations well scaled
        basis = [np.ones(len(node))] + [(centroids_mm[elem, d] - nodes_mm[node, d]) * 0.1 for d in range(3)]
        m = np.empty((n, 4, 4))
        r = np.empty((n, 4, ncomp))
        vals = element_values[elem]
        for a in range(4):
            wa = w * basis[a]
            for b in range(a, 4):
                m[:, a, b] = m[:, b, a] = np.bincount(node, weights=wa * basis[b], minlength=n)
            for d in range(ncomp):
                r[:, a, d] = np.bincount(node, weights=wa * vals[:, d], minlength=n)
        count = np.bincount(node, minlength=n)
        nodal = np.zeros((n, ncomp))
        used = count > 0
        nodal[used] = r[used, 0] / m[used, 0, 0][:, None]  # averaging fallback
        fit = np.flatnonzero(count >= min_samples)
        mk = m[fit]
        diag = np.einsum("kii->ki", mk)
        hadamard = np.linalg.det(mk) / np.prod(diag, axis=1)  # 1 = orthogonal, 0 = singular
        fit = fit[hadamard > 1e-6]
        nodal[fit] = np.linalg.solve(m[fit], r[fit])[:, 0]
        out[sel] = nodal[t].mean(axis=1)
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
