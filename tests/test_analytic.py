"""Checks of the analytic reference solutions against physics, not against themselves.

tDCS: an independently written closed form for the homogeneous sphere (itself checked
for Laplace, the Neumann condition and its Legendre expansion), a dense per-degree
linear solve of the layered problem, finite differences, interface and boundary
conditions, and current conservation through a plane.

TMS: curl E = -dB/dt, div E = 0 and E.n = 0 on the surface determine E uniquely inside
the sphere; each is checked numerically, plus the radial-dipole and uniform-field cases.
"""

import numpy as np
import pytest
from numpy.polynomial import legendre as npleg

from stimsim.analytic import (
    MU0,
    auto_n_terms,
    dipole_dadt,
    mag,
    rdm,
    rel_l2,
    tdcs_sphere_efield,
    tdcs_sphere_potential,
    tms_sphere_efield,
)
from stimsim.analytic import sphere_tms

R_OUT = 95.0
MODEL3 = ([85.0, 90.0, 95.0], [0.33, 0.0042, 0.43])
MODEL4 = ([80.0, 85.0, 90.0, 95.0], [1.79, 0.33, 0.01, 0.43])


def _on_sphere(theta, phi, R=R_OUT):
    return R * np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])


ELECTRODES = np.array([_on_sphere(0.4, 0.3), _on_sphere(2.1, 2.5), _on_sphere(1.2, -1.9)])
CURRENTS = np.array([1.5e-3, -1.0e-3, -0.5e-3])


def _random_points(n, rho_max, rng, rho_min=0.0):
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    rho = rng.uniform(rho_min, rho_max, n)
    return v * (rho * R_OUT)[:, None]


def _away_from(points, electrodes, dist_mm):
    d = np.linalg.norm(points[:, None, :] - electrodes[None], axis=-1).min(axis=1)
    return points[d > dist_mm]


def _homogeneous_closed_form(points_mm, electrodes_mm, currents, sigma, R_mm=R_OUT):
    """Point source I on the surface of a homogeneous sphere (up to a constant per source).

    V = I/(4 pi sigma) [2/d + (1/R) ln(2R / (R - r cos(gamma) + d))], derived from the
    series sum (2n+1)/(n) rho^n P_n = 2 (1/D - 1) + ln(2 / (1 - rho x + D)) with
    D = sqrt(1 - 2 rho x + rho^2); checked below for Laplace, Neumann and the series.
    """
    R = R_mm * 1e-3
    V = np.zeros(len(points_mm))
    for e, current in zip(electrodes_mm, currents):
        e = e / np.linalg.norm(e) * R
        r = points_mm * 1e-3
        d = np.linalg.norm(r - e, axis=1)
        r_cos = r @ e / R
        V += current / (4 * np.pi * sigma) * (2 / d + np.log(2 * R / (R - r_cos + d)) / R)
    return V


def _fd_grad(f, pts, h_mm):
    g = np.zeros((len(pts), 3))
    for j in range(3):
        dp = np.zeros(3)
        dp[j] = h_mm
        g[:, j] = (f(pts + dp) - f(pts - dp)) / (2 * h_mm * 1e-3)
    return g


def _fd_jacobian(f, pts, h_mm):
    """J[p, i, j] = d f_i / d x_j (SI) by central differences."""
    J = np.zeros((len(pts), 3, 3))
    for j in range(3):
        dp = np.zeros(3)
        dp[j] = h_mm
        J[:, :, j] = (f(pts + dp) - f(pts - dp)) / (2 * h_mm * 1e-3)
    return J


def _layered_series_dense(points_mm, electrodes_mm, currents, radii_mm, sigmas, n_max):
    """Plain Legendre series, one dense linear system per degree (no recursion, no Kummer)."""
    radii = np.asarray(radii_mm) / radii_mm[-1]
    K = len(radii)
    rho = np.linalg.norm(points_mm, axis=1) / radii_mm[-1]
    shell = np.minimum(np.searchsorted(radii, rho), K - 1)
    R = radii_mm[-1] * 1e-3
    r_pts = np.linalg.norm(points_mm, axis=1)
    cosg = [points_mm @ (e / np.linalg.norm(e)) / r_pts for e in electrodes_mm]
    V = np.zeros(len(points_mm))
    for n in range(1, n_max + 1):
        # unknowns: a_0, then (a_k, b_k) for k >= 1, in u = a rho^n + b rho^-(n+1)
        nu = 2 * K - 1
        M = np.zeros((nu, nu))
        rhs = np.zeros(nu)

        def cols(k):
            return (0, None) if k == 0 else (2 * k - 1, 2 * k)

        for k in range(K - 1):
            s = radii[k]
            (ia, ib), (ja, jb) = cols(k), cols(k + 1)
            row = 2 * k
            M[row, ia] += s**n
            M[row + 1, ia] += sigmas[k] * n * s ** (n - 1)
            if ib is not None:
                M[row, ib] += s ** (-n - 1)
                M[row + 1, ib] += -sigmas[k] * (n + 1) * s ** (-n - 2)
            M[row, ja] -= s**n
            M[row, jb] -= s ** (-n - 1)
            M[row + 1, ja] -= sigmas[k + 1] * n * s ** (n - 1)
            M[row + 1, jb] -= -sigmas[k + 1] * (n + 1) * s ** (-n - 2)
        ja, jb = cols(K - 1)
        M[-1, ja] = sigmas[-1] * n
        if jb is not None:
            M[-1, jb] = -sigmas[-1] * (n + 1)
        rhs[-1] = (2 * n + 1) / (4 * np.pi * R**2) * R  # sigma du/dr = J_n, d/dr = d/drho / R
        c = np.linalg.solve(M, rhs)
        u = np.zeros(len(points_mm))
        for k in range(K):
            ia, ib = cols(k)
            sel = shell == k
            u[sel] = c[ia] * rho[sel] ** n + (c[ib] * rho[sel] ** (-n - 1) if ib is not None else 0)
        coef = np.zeros(n + 1)
        coef[n] = 1.0
        for x, current in zip(cosg, currents):
            V += current * u * npleg.legval(x, coef)
    return V


# ----------------------------------------------------------------------------- metrics


def test_metrics():
    ref = np.array([[1.0, 0, 0], [0, 2.0, 0]])
    assert rel_l2(ref, ref) == 0.0
    assert rel_l2(1.1 * ref, ref) == pytest.approx(0.1)
    assert rdm(3.0 * ref, ref) == pytest.approx(0.0, abs=1e-15)
    assert rdm(-ref, ref) == pytest.approx(2.0)
    assert mag(2.0 * ref, ref) == pytest.approx(np.log(2.0))
    assert mag(0.5 * ref, ref) == pytest.approx(np.log(2.0))
    assert isinstance(rel_l2(ref[:, 0], ref[:, 0]), float)
    with pytest.raises(ValueError):
        rel_l2(ref, ref[:, 0])


# ----------------------------------------------------------------------------- tDCS


def test_closed_form_reference_is_a_solution():
    """The test's own closed form: harmonic, no normal current on the surface, right series."""
    rng = np.random.default_rng(0)
    el, cur, sigma = ELECTRODES[:2], np.array([1.0, -1.0]), 0.3
    V = lambda p: _homogeneous_closed_form(p, el, cur, sigma)  # noqa: E731
    # Laplace: sum of second differences vanishes relative to their size
    pts = _away_from(_random_points(40, 0.97, rng), el, 15.0)
    h = 0.01  # truncation ~ (h/15 mm)^2 ~ 5e-7 relative, round-off well below
    d2 = np.zeros((len(pts), 3))
    for j in range(3):
        dp = np.zeros(3)
        dp[j] = h
        d2[:, j] = (V(pts + dp) - 2 * V(pts) + V(pts - dp)) / (h * 1e-3) ** 2
    assert np.all(np.abs(d2.sum(1)) < 1e-5 * np.abs(d2).sum(1))
    # Neumann: radial derivative zero on the surface away from the electrodes
    surf = _away_from(_random_points(40, 1.0, rng, rho_min=1.0), el, 15.0)
    g = _fd_grad(V, surf, 1e-3)
    g_r = np.sum(g * surf, axis=1) / R_OUT
    assert np.all(np.abs(g_r) < 1e-6 * np.linalg.norm(g, axis=1))
    # its Legendre expansion is sum (2n+1)/(4 pi sigma R n) rho^n P_n(x) (+ constant)
    inner = _random_points(30, 0.5, rng)
    n = np.arange(0, 90)
    coef = np.zeros(90)
    coef[1:] = (2 * n[1:] + 1) / (4 * np.pi * sigma * R_OUT * 1e-3 * n[1:])
    series = np.zeros(len(inner))
    for e, c in zip(el, cur):
        rho = np.linalg.norm(inner, axis=1) / R_OUT
        x = inner @ e / (np.linalg.norm(inner, axis=1) * R_OUT)
        series += c * np.array([npleg.legval(xi, coef * ri ** n) for xi, ri in zip(x, rho)])
    assert rel_l2(V(inner), series) < 1e-12


@pytest.mark.parametrize("radii,sigmas", [([95.0], [0.3]), ([90.0, 95.0], [0.3, 0.3]),
                                          ([85.0, 90.0, 95.0], [0.3, 0.3, 0.3])])
def test_homogeneous_sphere_matches_closed_form(radii, sigmas):
    rng = np.random.default_rng(1)
    pts = np.vstack([_random_points(200, 0.97, rng), _random_points(50, 1.0, rng, rho_min=1.0)])
    pts = _away_from(pts, ELECTRODES, 2.0)
    V = tdcs_sphere_potential(pts, ELECTRODES, CURRENTS, radii, sigmas)
    ref = _homogeneous_closed_form(pts, ELECTRODES, CURRENTS, sigmas[0])
    ref -= ref.mean() - V.mean()  # closed form defined up to a constant
    assert rel_l2(V, ref) < 1e-10


@pytest.mark.parametrize("radii,sigmas", [MODEL3, MODEL4, ([85.0, 90.0, 95.0], [1.0, 0.01, 1.0]),
                                          ([60.0, 95.0], [0.01, 1.0])])
def test_layered_sphere_matches_dense_solve(radii, sigmas):
    rng = np.random.default_rng(2)
    pts = _random_points(60, 0.6, rng, rho_min=0.05)
    V = tdcs_sphere_potential(pts, ELECTRODES, CURRENTS, radii, sigmas)
    ref = _layered_series_dense(pts, ELECTRODES, CURRENTS, radii, sigmas, 80)
    assert rel_l2(V, ref) < 1e-10


def test_explicit_n_terms_warns_and_truncates():
    rng = np.random.default_rng(3)
    pts = _random_points(20, 0.8, rng)
    with pytest.warns(UserWarning, match="n_terms"):
        V5 = tdcs_sphere_potential(pts, ELECTRODES, CURRENTS, *MODEL3, n_terms=5)
    V = tdcs_sphere_potential(pts, ELECTRODES, CURRENTS, *MODEL3)
    assert 1e-6 < rel_l2(V5, V) < 0.5
    assert auto_n_terms([95.0]) == 0
    assert auto_n_terms(MODEL3[0]) > auto_n_terms([85.0, 90.0]) > 100


@pytest.mark.parametrize("model", [MODEL3, MODEL4])
def test_efield_is_minus_grad_potential(model):
    radii, sigmas = model
    rng = np.random.default_rng(4)
    pts = np.vstack([_random_points(150, 0.999, rng), np.zeros((1, 3)), [[0.0, 0.0, 30.0]]])
    r = np.linalg.norm(pts, axis=1)
    pts = pts[np.min(np.abs(r[:, None] - np.asarray(radii)[None, :-1]), axis=1) > 0.05]
    pts = _away_from(pts, ELECTRODES, 10.0)
    E = tdcs_sphere_efield(pts, ELECTRODES, CURRENTS, radii, sigmas)
    g = _fd_grad(lambda p: tdcs_sphere_potential(p, ELECTRODES, CURRENTS, radii, sigmas), pts, 1e-3)
    assert np.all(np.isfinite(E))
    assert rel_l2(E, -g) < 1e-7


def test_points_on_electrode_axis_and_centre_are_finite():
    radii, sigmas = MODEL3
    el = np.array([[0.0, 0.0, R_OUT], [0.0, 0.0, -R_OUT]])
    pts = np.array([[0.0, 0.0, z] for z in (-94.0, -88.0, -50.0, 0.0, 50.0, 87.0, 94.0)])
    E = tdcs_sphere_efield(pts, el, [1e-3, -1e-3], radii, sigmas)
    assert np.all(np.isfinite(E))
    assert np.allclose(E[:, :2], 0.0, atol=1e-12 * np.abs(E).max())  # axial symmetry
    assert np.all(E[:, 2] < 0)  # current flows from +z to -z, E points down


@pytest.mark.parametrize("model", [MODEL3, MODEL4])
def test_interface_conditions(model):
    """V, sigma E_r and tangential E continuous across every internal interface."""
    radii, sigmas = model
    rng = np.random.default_rng(5)
    dirs = _random_points(40, 1.0, rng, rho_min=1.0) / R_OUT
    for k, rk in enumerate(radii[:-1]):
        # 1e-12 relative either side: the jump from the step itself (E_r dr) stays < 1e-9
        inside, outside = dirs * rk * (1 - 1e-12), dirs * rk * (1 + 1e-12)
        Ei = tdcs_sphere_efield(inside, ELECTRODES, CURRENTS, radii, sigmas)
        Eo = tdcs_sphere_efield(outside, ELECTRODES, CURRENTS, radii, sigmas)
        Vi = tdcs_sphere_potential(inside, ELECTRODES, CURRENTS, radii, sigmas)
        Vo = tdcs_sphere_potential(outside, ELECTRODES, CURRENTS, radii, sigmas)
        Ji_r = sigmas[k] * np.sum(Ei * dirs, axis=1)
        Jo_r = sigmas[k + 1] * np.sum(Eo * dirs, axis=1)
        tan_i = Ei - np.sum(Ei * dirs, axis=1)[:, None] * dirs
        tan_o = Eo - np.sum(Eo * dirs, axis=1)[:, None] * dirs
        assert rel_l2(Vo, Vi) < 1e-8
        assert rel_l2(Jo_r, Ji_r) < 1e-7
        assert rel_l2(tan_o, tan_i) < 1e-7
        # and the normal E really jumps by the conductivity ratio (the test is not vacuous)
        assert abs(np.linalg.norm(np.sum(Eo * dirs, 1)) / np.linalg.norm(np.sum(Ei * dirs, 1))
                   - sigmas[k] / sigmas[k + 1]) < 1e-6 * sigmas[k] / sigmas[k + 1]


@pytest.mark.parametrize("model", [MODEL3, MODEL4])
def test_no_normal_current_through_outer_surface(model):
    radii, sigmas = model
    rng = np.random.default_rng(6)
    surf = _away_from(_random_points(200, 1.0, rng, rho_min=1.0), ELECTRODES, 5.0)
    E = tdcs_sphere_efield(surf, ELECTRODES, CURRENTS, radii, sigmas)
    E_r = np.sum(E * surf, axis=1) / R_OUT
    assert np.all(np.abs(E_r) < 1e-8 * np.linalg.norm(E, axis=1))
    # just inside the surface the radial field is not zero (the check has teeth)
    E2 = tdcs_sphere_efield(surf * 0.98, ELECTRODES, CURRENTS, radii, sigmas)
    assert np.max(np.abs(np.sum(E2 * surf, axis=1)) / R_OUT / np.linalg.norm(E2, axis=1)) > 1e-3


@pytest.mark.parametrize("model", [([95.0], [0.3]), MODEL3, MODEL4])
def test_current_through_a_plane_equals_electrode_current(model):
    """Flux of J = sigma E through the disc z = 0 equals the current injected above it."""
    radii, sigmas = model
    el = np.array([_on_sphere(0.5, 0.7), _on_sphere(2.0, -2.2), _on_sphere(1.1, 2.9)])
    cur = np.array([2e-3, -1.5e-3, -0.5e-3])  # electrodes 0 and 2 are above the plane
    s_nodes, s_w, shell_sigma = [], [], []
    x, w = np.polynomial.legendre.leggauss(24)
    lo = 0.0
    for rk, sk in zip(radii, sigmas):
        s_nodes.append(lo + (x + 1) * (rk - lo) / 2)
        s_w.append(w * (rk - lo) / 2)
        shell_sigma.append(np.full(x.size, sk))
        lo = rk
    s, ws, sig = (np.concatenate(a) for a in (s_nodes, s_w, shell_sigma))
    n_phi = 96
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    S, P = np.meshgrid(s, phi, indexing="ij")
    pts = np.stack([S * np.cos(P), S * np.sin(P), np.zeros_like(S)], -1).reshape(-1, 3)
    E = tdcs_sphere_efield(pts, el, cur, radii, sigmas)
    Jz = (sig[:, None] * E[:, 2].reshape(S.shape))
    flux = np.sum(Jz * (ws * s)[:, None]) * (2 * np.pi / n_phi) * 1e-6  # mm^2 -> m^2
    # the net current injected above the plane leaves downward, i.e. along -z
    assert flux == pytest.approx(-(cur[0] + cur[2]), rel=1e-8)


def test_linearity_and_superposition():
    radii, sigmas = MODEL3
    rng = np.random.default_rng(7)
    pts = _random_points(50, 0.95, rng)
    E1 = tdcs_sphere_efield(pts, ELECTRODES[:2], [1e-3, -1e-3], radii, sigmas)
    E2 = tdcs_sphere_efield(pts, ELECTRODES[1:], [1e-3, -1e-3], radii, sigmas)
    E12 = tdcs_sphere_efield(pts, ELECTRODES, [1e-3, 0.0, -1e-3], radii, sigmas)
    assert rel_l2(E1 + E2, E12) < 1e-12
    assert rel_l2(tdcs_sphere_efield(pts, ELECTRODES[:2], [-2.5e-3, 2.5e-3], radii, sigmas),
                  -2.5 * E1) < 1e-12
    # electrodes given slightly off the sphere are projected radially
    off = ELECTRODES[:2] * np.array([[1.002], [0.999]])
    assert rel_l2(tdcs_sphere_efield(pts, off, [1e-3, -1e-3], radii, sigmas), E1) < 1e-12


def test_tdcs_input_errors():
    radii, sigmas = MODEL3
    pts = np.zeros((1, 3))
    with pytest.raises(ValueError, match="sum to zero"):
        tdcs_sphere_potential(pts, ELECTRODES[:2], [1e-3, -0.9e-3], radii, sigmas)
    with pytest.raises(ValueError, match="outside"):
        tdcs_sphere_potential([[0, 0, 96.0]], ELECTRODES[:2], [1e-3, -1e-3], radii, sigmas)
    with pytest.raises(ValueError, match="ascending"):
        tdcs_sphere_potential(pts, ELECTRODES[:2], [1e-3, -1e-3], [90, 85, 95], sigmas)
    with pytest.raises(ValueError, match="same length"):
        tdcs_sphere_potential(pts, ELECTRODES[:2], [1e-3, -1e-3], radii, sigmas[:2])


# ----------------------------------------------------------------------------- TMS

DIP_POS = np.array([[10.0, 20.0, 120.0], [-30.0, 5.0, 110.0], [60.0, -40.0, 100.0]])
DIP_MOM = np.array([[0.3, -0.5, 0.2], [0.1, 0.4, -0.7], [-0.2, 0.05, 0.3]]) * 1e-2
DIDT = 1e8


def _dbdt(points_mm, pos_mm, mom, didt):
    """dB/dt of magnetic dipoles in T/s: mu0/(4 pi) (3 rhat (m.rhat) - m) / |r|^3."""
    r = (points_mm[:, None, :] - pos_mm[None]) * 1e-3
    d = np.linalg.norm(r, axis=-1)
    rh = r / d[..., None]
    m = mom * didt
    b = (3 * rh * np.sum(rh * m, -1)[..., None] - m) / d[..., None] ** 3
    return MU0 / (4 * np.pi) * b.sum(1)


def _curl_div(J):
    curl = np.stack([J[:, 2, 1] - J[:, 1, 2], J[:, 0, 2] - J[:, 2, 0], J[:, 1, 0] - J[:, 0, 1]], 1)
    return curl, np.trace(J, axis1=1, axis2=2)


def test_tms_curl_div_and_boundary_determine_the_field():
    rng = np.random.default_rng(10)
    pts = _random_points(40, 0.95, rng)
    E = lambda p: tms_sphere_efield(p, DIP_POS, DIP_MOM, DIDT)  # noqa: E731
    curl, div = _curl_div(_fd_jacobian(E, pts, 1e-3))
    dbdt = _dbdt(pts, DIP_POS, DIP_MOM, DIDT)
    assert rel_l2(curl, -dbdt) < 1e-7  # Faraday
    assert np.max(np.abs(div)) < 1e-7 * np.max(np.abs(curl))  # no volume charge
    surf = _random_points(100, 1.0, rng, rho_min=1.0)
    Es = E(surf)
    assert np.all(np.abs(np.sum(Es * surf, 1)) / R_OUT < 1e-12 * np.linalg.norm(Es, axis=1))
    # the primary field alone violates the boundary condition (charges matter)
    Ep = -dipole_dadt(surf, DIP_POS, DIP_MOM, DIDT)
    assert np.max(np.abs(np.sum(Ep * surf, 1)) / R_OUT / np.linalg.norm(Ep, axis=1)) > 0.05


def test_dadt_curl_is_dbdt():
    rng = np.random.default_rng(11)
    pts = _random_points(30, 0.95, rng)
    curl, div = _curl_div(_fd_jacobian(lambda p: dipole_dadt(p, DIP_POS, DIP_MOM, DIDT), pts, 1e-3))
    assert rel_l2(curl, _dbdt(pts, DIP_POS, DIP_MOM, DIDT)) < 1e-7
    assert np.max(np.abs(div)) < 1e-7 * np.max(np.abs(curl))  # Coulomb gauge


def test_tms_centre_is_zero_and_field_is_tangential():
    rng = np.random.default_rng(12)
    pts = np.vstack([np.zeros((1, 3)), _random_points(50, 1.0, rng)])
    E = tms_sphere_efield(pts, DIP_POS, DIP_MOM, DIDT)
    assert np.all(E[0] == 0.0)
    assert np.max(np.abs(np.sum(E[1:] * pts[1:], 1)) / np.linalg.norm(pts[1:], axis=1)) \
        < 1e-12 * np.abs(E).max()


def test_tms_radial_dipole_equals_primary_field():
    rng = np.random.default_rng(13)
    pts = _random_points(50, 1.0, rng)
    pos = np.array([[20.0, -30.0, 110.0]])
    mom = pos / np.linalg.norm(pos) * 3e-3
    E = tms_sphere_efield(pts, pos, mom, DIDT)
    assert rel_l2(E, -dipole_dadt(pts, pos, mom, DIDT)) < 1e-12
    # a tangential dipole does not (the comparison can fail)
    mom_t = np.cross(mom, [1.0, 0.0, 0.0])
    E_t = tms_sphere_efield(pts, pos, mom_t, DIDT)
    assert rel_l2(E_t, -dipole_dadt(pts, pos, mom_t, DIDT)) > 0.05


def test_tms_far_dipole_gives_uniform_field_solution():
    """Uniform dB/dt: E = -(1/2) dB/dt x r inside any sphere about the centre."""
    rng = np.random.default_rng(14)
    pts = _random_points(50, 1.0, rng)
    pos = np.array([[3e5, -4e5, 1e5]])  # ~0.5 km away
    mom = np.array([[1e3, 2e3, -5e2]])
    E = tms_sphere_efield(pts, pos, mom, DIDT)
    b0 = _dbdt(np.zeros((1, 3)), pos, mom, DIDT)[0]
    assert rel_l2(E, -0.5 * np.cross(b0, pts * 1e-3)) < 1e-3


def test_tms_centre_shift_chunks_and_errors(monkeypatch):
    rng = np.random.default_rng(15)
    pts = _random_points(37, 0.9, rng)
    E = tms_sphere_efield(pts, DIP_POS, DIP_MOM, DIDT)
    shift = np.array([12.0, -7.0, 30.0])
    Es = tms_sphere_efield(pts + shift, DIP_POS + shift, DIP_MOM, DIDT, center_mm=shift)
    assert rel_l2(Es, E) < 1e-12
    assert rel_l2(tms_sphere_efield(pts, DIP_POS, DIP_MOM, -2 * DIDT), -2 * E) < 1e-14
    monkeypatch.setattr(sphere_tms, "_PAIRS_PER_CHUNK", 7)  # many small chunks
    assert rel_l2(tms_sphere_efield(pts, DIP_POS, DIP_MOM, DIDT), E) < 1e-14
    with pytest.raises(ValueError, match="farther"):
        tms_sphere_efield([[0.0, 0.0, 130.0]], DIP_POS, DIP_MOM, DIDT)
