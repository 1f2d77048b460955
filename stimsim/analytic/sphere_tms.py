"""Induced electric field of magnetic dipoles outside a spherically symmetric conductor.

Physics
-------
Quasi-static induction: ``E = -dA/dt - grad(phi)``, with the vector potential of a
magnetic dipole ``m`` at ``r0`` (SI, Coulomb gauge)::

    A(r) = mu0/(4 pi) m x (r - r0) / |r - r0|^3 ,

and ``phi`` the potential of the charges that build up so that no current leaves the
conductor.  For a conductor whose conductivity depends only on the distance to a centre
(any number of concentric shells) the total field has a closed form (Heller & van
Hulsteyn 1992, "Brain stimulation using electromagnetic sources: theoretical aspects",
Biophys. J. 63:129-138; Eaton 1992, "Electric field induced in a spherical volume
conductor from arbitrary coils", Med. Biol. Eng. Comput. 30:433-440).  With coordinates
relative to the centre, ``a = r0 - r``, ``a = |a|``, ``r0 = |r0|``::

    E(r) = mu0/(4 pi F^2) [ F (mdot x r) - (mdot . grad F) (r0 x r) ]
    F    = a (r0 a + r0 . a)
    grad F = (a^2/r0 + a.r0/a + 2a + 2 r0) r0 - (a + 2 r0 + a.r0/a) r

where ``mdot = m dI/dt`` (``grad F`` is taken with respect to ``r0``).  This is obtained
from Sarvas' formula for the magnetic field outside a spherical conductor of a current
dipole inside it (Sarvas 1987, Phys. Med. Biol. 32:11-22) through reciprocity,
``Q . E(r) = -mdot . B_Q(r0)``.  Consequences used by the tests: ``E`` does not depend on
the conductivities, is tangential (``E . r = 0``) everywhere inside, vanishes at the
centre, is divergence-free, and ``curl E = -dB/dt``.  A radially oriented dipole produces
no charges at all, so there ``E = -dA/dt`` exactly.

Numerics
--------
Summing over dipoles ``d``, ``E = mu0/(4 pi) r x sum_d (g_d r0_d - mdot_d / F_d)`` with the
scalar ``g_d = (mdot_d . grad F_d) / F_d^2``.  Only scalars are formed per (point, dipole)
pair; the sums over dipoles are matrix products.  Points are processed in chunks so that
the pair arrays stay ~16 MB.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tms_sphere_efield", "dipole_dadt", "MU0"]

#: vacuum permeability in T m / A (the classical 4 pi 1e-7; CODATA differs by ~5e-10)
MU0 = 4e-7 * np.pi
_PAIRS_PER_CHUNK = 2_000_000


def _inputs(points_mm, dipole_positions_mm, dipole_moments_Am2, didt_A_per_s, center_mm):
    pts = np.asarray(points_mm, dtype=float)
    pos = np.atleast_2d(np.asarray(dipole_positions_mm, dtype=float))
    mom = np.atleast_2d(np.asarray(dipole_moments_Am2, dtype=float))
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points_mm must have shape (n, 3), got {pts.shape}")
    if pos.ndim != 2 or pos.shape[1] != 3 or mom.shape != pos.shape:
        raise ValueError(
            "dipole_positions_mm and dipole_moments_Am2 must both have shape (n_dipoles, 3), "
            f"got {pos.shape} and {mom.shape}"
        )
    didt = float(didt_A_per_s)
    c = np.asarray(center_mm, dtype=float).reshape(3)
    # SI, relative to the centre; moments per ampere times dI/dt give dm/dt in A m^2/s
    return (pts - c) * 1e-3, (pos - c) * 1e-3, mom * didt


def _chunks(n_points: int, n_dipoles: int):
    step = max(1, _PAIRS_PER_CHUNK // max(n_dipoles, 1))
    for start in range(0, n_points, step):
        yield slice(start, min(start + step, n_points))


def dipole_dadt(points_mm, dipole_positions_mm, dipole_moments_Am2, didt_A_per_s) -> np.ndarray:
    """Time derivative of the magnetic vector potential of magnetic dipoles (free space).

    ``dA/dt(r) = mu0/(4 pi) sum_d mdot_d x (r - r0_d) / |r - r0_d|^3`` with
    ``mdot_d = m_d * dI/dt``.  **Sign:** this returns ``+dA/dt``; the primary induced field
    is ``E_primary = -dA/dt``.

    Parameters
    ----------
    points_mm : array_like, shape (P, 3)
        Field points in mm.
    dipole_positions_mm : array_like, shape (D, 3)
        Dipole positions in mm.
    dipole_moments_Am2 : array_like, shape (D, 3)
        Dipole moments per ampere of coil current (A m^2 per A = m^2, as in coil dipole
        files).
    didt_A_per_s : float
        Rate of change of the coil current in A/s.

    Returns
    -------
    numpy.ndarray, shape (P, 3)
        dA/dt in V/m.
    """
    r, r0, mdot = _inputs(points_mm, dipole_positions_mm, dipole_moments_Am2, didt_A_per_s,
                          (0.0, 0.0, 0.0))
    out = np.empty_like(r)
    m_x_r0 = np.cross(mdot, r0)
    r0sq = np.einsum("ij,ij->i", r0, r0)
    for sl in _chunks(len(r), len(r0)):
        rc = r[sl]
        # sum_d mdot x (r - r0)/a^3 = (sum_d mdot/a^3) x r - sum_d (mdot x r0)/a^3
        a2 = np.einsum("ij,ij->i", rc, rc)[:, None] + r0sq[None, :] - 2.0 * (rc @ r0.T)
        w = a2 ** -1.5
        out[sl] = np.cross(w @ mdot, rc) - w @ m_x_r0
    return MU0 / (4.0 * np.pi) * out


def tms_sphere_efield(
    points_mm,
    dipole_positions_mm,
    dipole_moments_Am2,
    didt_A_per_s,
    center_mm=(0.0, 0.0, 0.0),
) -> np.ndarray:
    """Total induced E field inside a spherically symmetric conductor (Heller & van Hulsteyn 1992).

    Closed-form field of Heller & van Hulsteyn 1992 (Biophys. J. 63:129) / Eaton 1992
    (Med. Biol. Eng. Comput. 30:433): primary ``-dA/dt`` plus the field of the surface
    charges, for any radial conductivity profile (the result does not depend on it).

    Parameters
    ----------
    points_mm : array_like, shape (P, 3)
        Field points in mm, inside the conductor.
    dipole_positions_mm : array_like, shape (D, 3)
        Magnetic dipole positions in mm, outside the conductor.
    dipole_moments_Am2 : array_like, shape (D, 3)
        Dipole moments per ampere of coil current (m^2, as in coil dipole files).
    didt_A_per_s : float
        Rate of change of the coil current in A/s.
    center_mm : array_like, shape (3,)
        Centre of the spherical conductor in mm.

    Returns
    -------
    numpy.ndarray, shape (P, 3)
        E in V/m, with ``E = -dA/dt - grad(phi)``.

    Raises
    ------
    ValueError
        Bad shapes, or a dipole not farther from the centre than every point (no sphere
        about the centre then separates the dipoles from the conductor).
    """
    r, r0, mdot = _inputs(points_mm, dipole_positions_mm, dipole_moments_Am2, didt_A_per_s,
                          center_mm)
    r0n = np.linalg.norm(r0, axis=1)
    if len(r) and len(r0) and r0n.min() <= np.linalg.norm(r, axis=1).max():
        raise ValueError(
            "every dipole must lie farther from center_mm than every field point "
            f"(closest dipole {r0n.min() * 1e3:.4g} mm, farthest point "
            f"{np.linalg.norm(r, axis=1).max() * 1e3:.4g} mm from the centre)"
        )
    out = np.empty_like(r)
    r0sq = r0n * r0n
    m_r0 = np.einsum("ij,ij->i", mdot, r0)
    for sl in _chunks(len(r), len(r0)):
        rc = r[sl]
        r_r0 = rc @ r0.T  # (p, d)
        m_r = rc @ mdot.T
        a2 = np.einsum("ij,ij->i", rc, rc)[:, None] + r0sq[None, :] - 2.0 * r_r0
        a = np.sqrt(a2)
        a_r0 = r0sq[None, :] - r_r0  # a . r0
        a_r0_over_a = a_r0 / a
        F = a * (r0n[None, :] * a + a_r0)
        m_gradF = (a2 / r0n[None, :] + a_r0_over_a + 2.0 * a + 2.0 * r0n[None, :]) * m_r0[None, :] \
            - (a + 2.0 * r0n[None, :] + a_r0_over_a) * m_r
        inv_F = 1.0 / F
        g = m_gradF * inv_F * inv_F
        # F (mdot x r) - (mdot.gradF)(r0 x r)  summed over d, divided by F^2:
        #   = r x (sum_d g_d r0_d - sum_d mdot_d / F_d)
        out[sl] = np.cross(rc, g @ r0 - inv_F @ mdot)
    return MU0 / (4.0 * np.pi) * out
