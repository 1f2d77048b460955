"""Potential and electric field of point current electrodes on a concentric-shell sphere.

Physics
-------
Quasi-static volume conduction, ``div(sigma grad V) = 0`` in a ball made of ``K``
concentric shells of radii ``R_0 < ... < R_{K-1} = R`` and conductivities
``sigma_0 ... sigma_{K-1}`` (innermost first).  Electrode ``e`` injects current ``I_e``
(positive = into the body) at the point ``R * ehat_e`` of the outer surface; elsewhere no
current crosses the surface.  The classical solution (Rush & Driscoll 1968, "EEG electrode
sensitivity - an application of reciprocity", IEEE Trans. Biomed. Eng. 15(1):15-22;
Ferdjallah, Bostick & Barr 1996, "Potential and current density distributions of
cranial electrotherapy stimulation (CES) in a four-concentric-spheres model", IEEE
Trans. Biomed. Eng. 43(9):939-943) expands everything in Legendre polynomials of the
angle ``gamma`` between the field point and the electrode::

    V(r) = sum_e I_e sum_{n>=1} u_n(r) P_n(cos gamma_e),
    u_n(r) = a_k r^n + b_k r^-(n+1)  in shell k  (b_0 = 0: finite at the centre),

with ``u_n`` and ``sigma du_n/dr`` continuous at every interface and, from the expansion
of a surface delta function, ``sigma_{K-1} du_n/dr (R) = (2n+1) / (4 pi R^2)`` per ampere.
The ``n = 0`` term vanishes because the currents sum to zero, so V has zero mean on every
concentric sphere (that is the potential reference).

Numerics (why it is written this way)
-------------------------------------
* Radii are normalised by ``R`` (``rho = r / R``) and each shell's solution is stored as
  ``C rho^n (1 + t (rho_in / rho)^(2n+1))`` where ``rho_in`` is the shell's inner radius.
  The ratio ``t`` is propagated outward through the interfaces via the logarithmic
  derivative ``L = rho u'/u`` (``sigma L`` is continuous); it stays in ``(-1, n/(n+1))``
  and every power that appears is ``<= 1``, so nothing overflows for any ``n``.
* Convergence acceleration (Kummer's transformation): the homogeneous-sphere series with
  the outer conductivity, ``h_n rho^n`` with ``h_n = (2n+1) / (4 pi sigma_{K-1} R n)``, is
  summed in closed form (see :func:`_homogeneous_potential`), and only the difference
  ``u_n - h_n rho^n`` is summed as a series.  That difference decays like
  ``(R_{K-2}/R)^n`` at *every* point of the ball, surface and electrodes included, so the
  result is accurate right up to the scalp; a plain series would converge only like
  ``(r/R)^n`` and diverge on the surface.  For a single-layer sphere the result is exact
  (closed form only).
* The series is accumulated with the three-term Legendre recurrences, vectorised over
  points and electrodes.  The gradient uses ``grad P_n(x) = P_n'(x) (ehat - x rhat) / r``
  with ``x = rhat . ehat``; ``P_n'(+-1)`` is finite, so points on an electrode axis need no
  special case, and ``u_n / r`` is evaluated as ``rho^(n-1) (...)`` so the centre is fine.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .._logging import logger

__all__ = ["tdcs_sphere_potential", "tdcs_sphere_efield", "auto_n_terms"]

#: target truncation error of the automatic ``n_terms`` rule (relative to the field scale)
SERIES_TOL = 1e-10
#: points up to this fraction outside the outer sphere are accepted (mesh round-off)
_OUTSIDE_TOL = 1e-3


def auto_n_terms(radii_mm: Sequence[float], tol: float = SERIES_TOL) -> int:
    """Number of Legendre terms used when ``n_terms`` is None.

    Rule: with ``q = R_{K-2} / R_{K-1}`` (second-outermost over outermost radius), the
    smallest ``N`` such that ``q^N (2N / (1 - q) + 2 / (1 - q)^2) <= tol``.  The left side
    bounds the tail ``sum_{n>N} 2 (n+1) q^n`` of the gradient of the Kummer-accelerated
    series in units of ``I / (4 pi sigma_outer R^2)`` (the terms are roughly bounded by
    ``2 (n+1) q^n`` in those units, ``2 q^n`` for the potential), so the default reaches
    ~``tol`` relative accuracy at every point of the ball.  ``q = 85/90`` gives 578 terms,
    ``90/95`` (the 85/90/95 mm model) gives 613, ``0.97`` gives 1126.  A single-layer
    sphere needs 0 terms (the closed form is exact).
    """
    radii = np.asarray(radii_mm, dtype=float)
    if radii.size < 2:
        return 0
    q = float(radii[-2] / radii[-1])
    def bound(n: int) -> float:
        return q**n * (2.0 * n / (1.0 - q) + 2.0 / (1.0 - q) ** 2)
    # start from the bound without the polynomial factor (a lower bound on N), then step up
    n = max(1, int(math.log(tol * (1.0 - q) ** 2 / 2.0) / math.log(q)))
    while bound(n) > tol:
        n += 1
    return n


def _check_model(radii_mm, conductivities):
    radii = np.asarray(radii_mm, dtype=float).ravel()
    sig = np.asarray(conductivities, dtype=float).ravel()
    if radii.size < 1 or radii.size != sig.size:
        raise ValueError(
            f"radii_mm and conductivities_S_per_m need the same length >= 1, got "
            f"{radii.size} and {sig.size}"
        )
    if not np.all(np.isfinite(radii)) or radii[0] <= 0 or np.any(np.diff(radii) <= 0):
        raise ValueError(f"radii_mm must be positive and strictly ascending, got {radii.tolist()}")
    if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError(f"conductivities_S_per_m must be positive and finite, got {sig.tolist()}")
    return radii, sig


def _layer_coefficients(rho: np.ndarray, sig: np.ndarray, n: np.ndarray, R: float):
    """Per-degree coefficients of the residual (layered minus homogeneous) radial functions.

    Parameters
    ----------
    rho : (K,) normalised outer radii of the shells, ``rho[-1] == 1``
    sig : (K,) conductivities, innermost first
    n : (N,) degrees 1..N as floats
    R : outer radius in metres

    Returns
    -------
    A, B : (K, N) arrays
        For one ampere, ``u_n(rho) - h_n rho^n = rho^n (A[k] + B[k] (rho_in/rho)^(2n+1))``
        in shell ``k`` (``rho_in`` its inner radius, 0 for the innermost shell).
    """
    K, N = rho.size, n.size
    m = 2.0 * n + 1.0
    t = np.zeros((K, N))  # t at the inner radius of each shell (0 in the innermost)
    tau = np.zeros((K, N))  # the same ratio evaluated at the outer radius of the shell
    for k in range(K):
        inner = rho[k - 1] if k > 0 else 0.0
        tau[k] = t[k] * (inner / rho[k]) ** m  # power <= 1: underflows harmlessly to 0
        if k < K - 1:
            log_deriv_in = (n - (n + 1.0) * tau[k]) / (1.0 + tau[k])
            log_deriv_out = sig[k] / sig[k + 1] * log_deriv_in  # sigma * rho u'/u continuous
            t[k + 1] = (n - log_deriv_out) / (log_deriv_out + n + 1.0)
    scale = 1.0 / (4.0 * np.pi * R * sig[-1])
    h = scale * m / n
    # outer Neumann condition sigma du/dr = (2n+1)/(4 pi R^2) gives u(1) = scale m / L(1);
    # with L(1) = (n - (n+1) tau)/(1 + tau):  C = u(1)/(1 + tau) = scale m / (n - (n+1) tau)
    denom = n - (n + 1.0) * tau[-1]  # > 0 because tau < n/(n+1)
    C = np.empty((K, N))
    A = np.empty((K, N))
    C[-1] = scale * m / denom
    A[-1] = scale * m * (n + 1.0) * tau[-1] / (n * denom)  # C - h without cancellation
    for k in range(K - 2, -1, -1):
        # continuity of u at rho_k: C_k (1 + tau_k) = C_{k+1} (1 + t_{k+1})
        C[k] = C[k + 1] * (1.0 + t[k + 1]) / (1.0 + tau[k])
        A[k] = C[k] - h
    return A, C * t


def _homogeneous_potential(r, e_pos, R, sigma, want_grad):
    """Closed-form homogeneous-sphere potential (and gradient) of a unit surface source.

    For a source of 1 A at ``e`` (``|e| = R``) on a sphere of conductivity ``sigma``,
    ``sum_{n>=1} (2n+1)/(4 pi sigma R n) rho^n P_n(x)`` equals::

        V = 1/(4 pi sigma) [ 2/d + ln(2 R^2 / (R^2 - r.e + R d)) / R - 2/R ],  d = |r - e|,

    using ``sum rho^n P_n = 1/sqrt(1 - 2 rho x + rho^2) - 1`` and
    ``sum rho^n P_n / n = ln(2 / (1 - rho x + sqrt(1 - 2 rho x + rho^2)))`` (integrate the
    generating function).  The ``2/d`` term is the half-space singularity at the
    electrode; the ``-2/R`` makes the mean over every concentric sphere zero.

    Parameters
    ----------
    r : (P, 3) points in metres; e_pos : (E, 3) electrode positions in metres

    Returns
    -------
    V : (E, P); grad : (E, P, 3) or None
    """
    diff = r[None, :, :] - e_pos[:, None, :]
    d = np.linalg.norm(diff, axis=-1)
    re = e_pos @ r.T
    D = R * R - re + R * d  # >= 0, zero only at the electrode itself
    k = 1.0 / (4.0 * np.pi * sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        V = k * (2.0 / d + np.log(2.0 * R * R / D) / R - 2.0 / R)
        if not want_grad:
            return V, None
        # grad D = R (r - e)/d - e
        grad_D = R * diff / d[..., None] - e_pos[:, None, :]
        grad = k * (-2.0 * diff / (d**3)[..., None] - grad_D / (R * D)[..., None])
    return V, grad


def _tdcs_sphere(points_mm, electrodes_mm, currents_A, radii_mm, conductivities, n_terms,
                 want_field):
    radii, sig = _check_model(radii_mm, conductivities)
    pts = np.asarray(points_mm, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points_mm must have shape (n, 3), got {pts.shape}")
    el = np.atleast_2d(np.asarray(electrodes_mm, dtype=float))
    cur = np.atleast_1d(np.asarray(currents_A, dtype=float)).ravel()
    if el.ndim != 2 or el.shape[1] != 3 or el.shape[0] != cur.size:
        raise ValueError(
            f"electrodes_mm must have shape (n_electrodes, 3) matching currents_A "
            f"({cur.size} values), got {el.shape}"
        )
    if not np.all(np.isfinite(cur)) or abs(cur.sum()) > 1e-9 * max(np.abs(cur).sum(), 1e-300):
        raise ValueError(
            f"currents_A must sum to zero (current is conserved), got {cur.tolist()} "
            f"(sum {cur.sum():g} A)"
        )

    R_mm = radii[-1]
    R = R_mm * 1e-3  # SI from here on
    rho_shell = radii / R_mm
    el_norm = np.linalg.norm(el, axis=1)
    if np.any(el_norm == 0):
        raise ValueError(
            "an electrode sits at the sphere centre; electrodes belong on the outer surface"
        )
    off = np.abs(el_norm - R_mm)
    if np.any(off > 0.01 * R_mm):
        logger.warning(
            "electrode(s) up to %.3g mm off the outer sphere (R = %g mm); projecting radially",
            off.max(), R_mm,
        )
    ehat = el / el_norm[:, None]

    r = pts * 1e-3
    rn = np.linalg.norm(r, axis=1)
    rho = rn / R
    if np.any(rho > 1.0 + _OUTSIDE_TOL):
        raise ValueError(
            f"{int(np.sum(rho > 1 + _OUTSIDE_TOL))} point(s) lie outside the outer sphere "
            f"(max radius {rho.max() * R_mm:.4g} mm > {R_mm:g} mm)"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = np.where(rn[:, None] > 0, r / rn[:, None], 0.0)  # 0 at the centre: see below

    auto = auto_n_terms(radii)
    if n_terms is None:
        N = auto
    else:
        N = int(n_terms)
        if N < 0:
            raise ValueError(f"n_terms must be >= 0, got {n_terms}")
        if N < auto:
            warnings.warn(
                f"n_terms={N} is below the {auto} terms needed for ~{SERIES_TOL:g} accuracy "
                "with these radii; the result is truncated accordingly",
                stacklevel=3,
            )

    # closed-form homogeneous part (Kummer), outer conductivity
    Vh, gh = _homogeneous_potential(r, R * ehat, R, sig[-1], want_field)
    V = cur @ Vh
    grad = np.einsum("e,epc->pc", cur, gh) if want_field else None

    if N > 0 and rho_shell.size > 1:
        n_all = np.arange(1, N + 1, dtype=float)
        A, B = _layer_coefficients(rho_shell, sig, n_all, R)
        At, Bt = np.ascontiguousarray(A.T), np.ascontiguousarray(B.T)  # (N, K) rows per degree
        shell = np.minimum(np.searchsorted(rho_shell, rho, side="left"), rho_shell.size - 1)
        inner = np.concatenate([[0.0], rho_shell[:-1]])[shell]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(shell > 0, inner / rho, 0.0)  # rho >= inner > 0 whenever shell > 0
        q2 = q * q
        w = q2 * q  # (rho_in/rho)^(2n+1) at n = 1
        p = np.ones_like(rho)  # rho^(n-1); at the centre only n = 1 survives, as it should

        x = ehat @ rhat.T  # (E, P) cos(gamma); 0 at the centre, where only P_1' = 1 matters
        P_prev, P = np.ones_like(x), x.copy()  # P_0, P_1
        dP_prev, dP = np.zeros_like(x), np.ones_like(x)  # P_0', P_1'
        Vs = np.zeros_like(rho)
        Sr = np.zeros_like(rho)  # sum of du_n/dr * sum_e I_e P_n
        M = np.zeros_like(x) if want_field else None  # per electrode sum of u_n/r P_n'
        for i in range(N):
            nn = i + 1.0
            a = At[i][shell]
            bw = Bt[i][shell] * w
            G = cur @ P
            radial = p * (a + bw)  # u_n / rho (residual part)
            Vs += rho * radial * G
            if want_field:
                Sr += p * (nn * a - (nn + 1.0) * bw) * G
                M += radial * dP
                # P_{n+1}' = P_{n-1}' + (2n+1) P_n
                dP_prev, dP = dP, dP_prev + (2.0 * nn + 1.0) * P
            # Bonnet: (n+1) P_{n+1} = (2n+1) x P_n - n P_{n-1}
            P_prev, P = P, ((2.0 * nn + 1.0) * x * P - nn * P_prev) / (nn + 1.0)
            p *= rho
            w *= q2
        V += Vs
        if want_field:
            # grad(u_n P_n) = u_n' P_n rhat + (u_n / r) P_n' (ehat - x rhat); 1/R from d/dr
            IM = cur[:, None] * M
            grad += (Sr[:, None] * rhat + IM.T @ ehat - rhat * np.sum(IM * x, axis=0)[:, None]) / R
    return V, (-grad if want_field else None)


def tdcs_sphere_potential(
    points_mm,
    electrodes_mm,
    currents_A,
    radii_mm,
    conductivities_S_per_m,
    n_terms: int | None = None,
) -> np.ndarray:
    """Electric potential of point electrodes on a concentric multi-layer sphere.

    Legendre-series solution of Rush & Driscoll 1968 (IEEE Trans. Biomed. Eng. 15:15) /
    Ferdjallah et al. 1996 (IEEE Trans. Biomed. Eng. 43:939), with the homogeneous-sphere
    part summed in closed form; see the module docstring for the method.

    Parameters
    ----------
    points_mm : array_like, shape (P, 3)
        Field points in mm, centre of the spheres at the origin.  Points more than 0.1 %
        of the outer radius outside the sphere raise ``ValueError``.
    electrodes_mm : array_like, shape (E, 3)
        Electrode positions in mm; projected radially onto the outer sphere.
    currents_A : array_like, shape (E,)
        Injected currents in A (positive into the body); must sum to zero.
    radii_mm : sequence of float
        Shell radii in mm, strictly ascending (e.g. ``[85, 90, 95]``); any number >= 1.
    conductivities_S_per_m : sequence of float
        Shell conductivities in S/m, innermost first.
    n_terms : int, optional
        Number of Legendre degrees (1..n_terms) in the series for the layered correction.
        Default :func:`auto_n_terms` (~1e-10 relative accuracy everywhere).  A smaller
        explicit value is honoured with a ``UserWarning``.

    Returns
    -------
    numpy.ndarray, shape (P,)
        Potential in V, referenced to zero mean over every concentric sphere.  Infinite
        at an electrode position (point source).

    Raises
    ------
    ValueError
        Bad shapes, radii or conductivities, currents not summing to zero, points
        outside the sphere.
    """
    V, _ = _tdcs_sphere(points_mm, electrodes_mm, currents_A, radii_mm,
                        conductivities_S_per_m, n_terms, want_field=False)
    return V


def tdcs_sphere_efield(
    points_mm,
    electrodes_mm,
    currents_A,
    radii_mm,
    conductivities_S_per_m,
    n_terms: int | None = None,
) -> np.ndarray:
    """Electric field ``E = -grad V`` of point electrodes on a concentric multi-layer sphere.

    Same model, parameters and method as :func:`tdcs_sphere_potential`; the gradient is
    evaluated analytically (radial derivative plus ``dP_n/dtheta`` terms, summed in each
    electrode's own axis frame and returned in Cartesian components).

    Returns
    -------
    numpy.ndarray, shape (P, 3)
        E in V/m.  At a point exactly on an interface the field of the inner shell is
        returned (the normal component jumps there).  Not finite at an electrode
        position; mask those nodes when comparing with a numerical solution.
    """
    _, E = _tdcs_sphere(points_mm, electrodes_mm, currents_A, radii_mm,
                        conductivities_S_per_m, n_terms, want_field=True)
    return E
