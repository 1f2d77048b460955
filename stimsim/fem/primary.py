r"""TMS primary field: dA/dt of magnetic dipoles at arbitrary points.

.. math:: \frac{\partial\mathbf A}{\partial t}(\mathbf r) = \frac{\mu_0}{4\pi}\,\frac{dI}{dt}
          \sum_k \frac{\mathbf m_k\times(\mathbf r-\mathbf r_k)}{|\mathbf r-\mathbf r_k|^3}

(vector potential of a point magnetic dipole; Jackson, Classical Electrodynamics, eq. 5.55).
The sum over dipoles is done by a numba kernel parallel over points when numba is
installed (exact, ~0.2 s for 1e5 points x 2.7e3 dipoles on 2 cores) and by chunked numpy
otherwise (exact, several times slower).  No Python loop over points or dipoles.
"""

from __future__ import annotations

import numpy as np

from . import kernels

MU0 = 4e-7 * np.pi  # vacuum permeability, H/m (the pre-2019 exact value; relative change 1e-10)

try:  # optional accelerator
    import numba

    # Structure-of-arrays dipole data and fastmath (reassociation only) let LLVM vectorise the
    # inner sum: 2.2x faster than an (k, 3) array layout, same result to 1e-15.  nogil: a run
    # computes dA/dt in a thread while the main thread assembles the stiffness matrix.
    # ``zero`` and ``one`` set the sums' type (numba compiles one version per type): float64 for
    # "double" and "single" (float32 inputs), float32 throughout for "fast", which LLVM then
    # vectorises twice as wide.
    @numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _dipole_sum_numba(points, px, py, pz, mx, my, mz, out, zero, one):  # pragma: no cover - compiled
        n = points.shape[0]
        k = px.shape[0]
        for i in numba.prange(n):
            x, y, z = points[i, 0], points[i, 1], points[i, 2]
            ax = zero
            ay = zero
            az = zero
            for j in range(k):
                rx = x - px[j]
                ry = y - py[j]
                rz = z - pz[j]
                r2 = rx * rx + ry * ry + rz * rz
                inv3 = one / (r2 * np.sqrt(r2))
                ax += (my[j] * rz - mz[j] * ry) * inv3
                ay += (mz[j] * rx - mx[j] * rz) * inv3
                az += (mx[j] * ry - my[j] * rx) * inv3
            out[i, 0] = ax
            out[i, 1] = ay
            out[i, 2] = az

    _COMPILED = True
except Exception:  # pragma: no cover - depends on the environment
    _COMPILED = False


def _dipole_sum_numpy(points, dpos, dmom, chunk=4096):
    out = np.empty_like(points)
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk]
        r = p[:, None, :] - dpos[None, :, :]  # (c, k, 3)
        inv3 = np.sum(r * r, axis=2) ** -1.5
        out[s:s + chunk, 0] = np.einsum("ck,ck->c", r[:, :, 2], inv3 * dmom[:, 1]) - np.einsum(
            "ck,ck->c", r[:, :, 1], inv3 * dmom[:, 2])
        out[s:s + chunk, 1] = np.einsum("ck,ck->c", r[:, :, 0], inv3 * dmom[:, 2]) - np.einsum(
            "ck,ck->c", r[:, :, 2], inv3 * dmom[:, 0])
        out[s:s + chunk, 2] = np.einsum("ck,ck->c", r[:, :, 1], inv3 * dmom[:, 0]) - np.einsum(
            "ck,ck->c", r[:, :, 0], inv3 * dmom[:, 1])
    return out


def dipole_dadt(points_mm: np.ndarray, dipole_positions_mm: np.ndarray, dipole_moments_m2: np.ndarray,
                didt_A_per_s: float, *, backend: str = "auto", precision: str = "double") -> np.ndarray:
    """dA/dt (V/m) at ``points_mm`` from dipoles (positions in mm, moments per ampere in m²).

    The primary electric field is ``-dA/dt``.  ``backend``: "auto", "numba" or "numpy".
    ``precision="single"`` runs the numba kernel on float32 copies with float64 sums: 1.5x faster,
    relative deviation ~3e-7 (five orders below the discretisation error); a single TMS run.
    ``precision="fast"`` sums in float32 too: another 2.3x faster, relative L2 deviation 1.3e-7 on
    Colin27's nodes (per node at most 1e-5, where the field is weakest); many placements
    (``TMSModel``, cortical modes).  Measured: docs/solver.md.
    """
    if precision not in ("double", "single", "fast"):
        raise ValueError(f"precision: {precision!r} is not 'double', 'single' or 'fast'")
    pts = np.ascontiguousarray(points_mm, float) * 1e-3
    dpos = np.ascontiguousarray(dipole_positions_mm, float) * 1e-3
    dmom = np.ascontiguousarray(dipole_moments_m2, float)
    if kernels.use_numba(backend) and _COMPILED:
        dt = np.float64 if precision == "double" else np.float32
        out = np.empty(pts.shape, dt)
        acc = np.float32 if precision == "fast" else np.float64
        _dipole_sum_numba(pts.astype(dt), *np.ascontiguousarray(dpos.T, dt), *np.ascontiguousarray(dmom.T, dt), out,
                          acc(0.0), acc(1.0))
        out = out.astype(np.float64, copy=False)
    else:
        out = _dipole_sum_numpy(pts, dpos, dmom)
    return out * (MU0 / (4 * np.pi) * didt_A_per_s)


def warm_up(precision: str = "double") -> None:
    """Load the compiled kernel (numba's on-disk cache, ~0.3 s) so the first real call is fast.

    A TMS run calls this in a background thread while it reads the head mesh.
    """
    if kernels.use_numba() and _COMPILED:
        dt = np.float64 if precision == "double" else np.float32
        pts = np.zeros((4, 3), dt)
        acc = np.float32 if precision == "fast" else np.float64
        _dipole_sum_numba(pts + 1, *np.zeros((6, 1), dt), np.empty_like(pts), acc(0.0), acc(1.0))
