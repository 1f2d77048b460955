"""The interference envelope of carrier fields (temporal interference), pure numpy.

Two carriers ``E1 cos(w1 t)`` and ``E2 cos(w2 t)`` at nearby frequencies sum to a field whose
component along a unit direction ``n`` beats at ``|f1 - f2|`` between ``|a1| + |a2|`` and
``||a1| - |a2||`` (``a_k = E_k . n``): the envelope amplitude ``2 min(|a1|, |a2|)``
(:func:`envelope_along`).  Its largest value over all directions has a closed form (Grossman et
al. 2017, Cell 169:1029, doi:10.1016/j.cell.2017.05.024): :func:`max_envelope`.  docs/ti.md
derives both.  Simulation code lives in :mod:`stimsim.ti`.
"""

from __future__ import annotations

import numpy as np



def _rows(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[None] if a.ndim == 1 else a


def _dot(a, b) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def max_envelope(e1, e2) -> np.ndarray:
    """Largest envelope amplitude over all directions of two carrier fields (Grossman et al. 2017).

    With the fields ordered so that ``|E1| >= |E2|`` and the sign of ``E2`` chosen so that the angle
    ``alpha`` between them is at most 90 degrees (one carrier's sign only shifts the envelope in time):

    * ``|E2| <= |E1| cos(alpha)``: ``2 |E2|`` (along E2, the weaker field sets the envelope);
    * otherwise: ``2 |E2 x (E1 - E2)| / |E1 - E2|`` (twice the distance from the origin to the line
      through E1 and E2), reached across that line.

    Parameters
    ----------
    e1, e2 : (m, 3) or (3,) peak carrier fields (any unit; the result has the same unit)

    Returns
    -------
    (m,) envelope amplitudes (for (3,) inputs, shape (1,))
    """
    e1, e2 = np.broadcast_arrays(_rows(e1), _rows(e2))
    n1, n2 = _dot(e1, e1), _dot(e2, e2)
    swap = n2 > n1
    big = np.where(swap[:, None], e2, e1)
    small = np.where(swap[:, None], e1, e2)
    dot = _dot(big, small)
    small = np.where((dot < 0)[:, None], -small, small)  # make the angle acute
    dot = np.abs(dot)
    small2 = np.minimum(n1, n2)
    # |E2| <= |E1| cos(alpha)  <=>  |E2|^2 <= E1 . E2 (multiplied by |E2| >= 0: no division, E2 = 0 included)
    first = small2 <= dot
    d = big - small
    cross = np.cross(small, d)
    dd = _dot(d, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        second = 2.0 * np.sqrt(_dot(cross, cross) / dd)
    # dd == 0 only when E1 == E2, which the first case covers
    return np.where(first, 2.0 * np.sqrt(small2), second)


def envelope_along(e1, e2, direction) -> np.ndarray:
    """Envelope amplitude of two carrier fields along ``direction``: ``||(E1 + E2).n| - |(E1 - E2).n||``
    ``= 2 min(|E1.n|, |E2.n|)`` with ``n`` the unit direction ((3,) for all elements or (m, 3);
    a zero or NaN row gives NaN)."""
    e1, e2 = _rows(e1), _rows(e2)
    n = np.asarray(direction, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    if n.ndim == 1:
        a1, a2 = e1 @ n, e2 @ n
    else:
        a1, a2 = _dot(e1, n), _dot(e2, n)
    return 2.0 * np.minimum(np.abs(a1), np.abs(a2))


def peak_combined_field(fields) -> np.ndarray:
    """Per element, ``sum_k s_k E_k`` with the signs ``s_k = +-1`` (s_0 = +1) that maximise its length.

    ``|sum_k E_k cos(theta_k)|`` is convex in ``(cos theta_k)`` in ``[-1, 1]^k``, so its largest value
    over all carrier phases is at a corner: the peak |E| over time of carriers at distinct
    frequencies (reached when they pass through those phases together, an upper bound otherwise).
    """
    fields = np.asarray(fields, dtype=float)
    k = len(fields)
    best = fields[0].copy()
    best2 = _dot(best, best) if k == 1 else np.full(len(best), -1.0)
    for pattern in range(2 ** (k - 1)):
        total = fields[0].copy()
        for j in range(1, k):
            total += -fields[j] if pattern >> (j - 1) & 1 else fields[j]
        t2 = _dot(total, total)
        better = t2 > best2
        best[better] = total[better]
        best2 = np.where(better, t2, best2)
    return best


#: samples per cycle of the fastest channel when a common period is sampled (error < 0.2 % of the peak)
SAMPLES_PER_CYCLE = 64
#: longest common period sampled, in cycles of the fastest channel; beyond it the peak is the
#: supremum over independent phases (:func:`peak_combined_field`)
MAX_SAMPLED_CYCLES = 64


def _common_period_cycles(freqs_hz) -> int | None:
    """Cycles of the fastest frequency in the common period of all (None: no short common period)."""
    from fractions import Fraction
    from math import gcd, lcm

    fr = [Fraction(float(f)).limit_denominator(1000) for f in freqs_hz]
    den = lcm(*[f.denominator for f in fr])
    ints = [int(f * den) for f in fr]
    g = gcd(*ints)
    cycles = max(ints) // g  # T = 1 / (g / den); fastest cycles in T = f_max * T
    return cycles if cycles <= MAX_SAMPLED_CYCLES else None


def peak_over_period(fields, freqs_hz, phases_deg, *, chunk: int = 8192):
    """Per element, the combined field ``sum_k E_k cos(2 pi f_k t + phi_k)`` at its largest magnitude
    over time: ``(E_peak (m, 3), phase_deg (m,) or None, method)``.

    * all frequencies equal: exact.  With ``C = sum_k E_k exp(i phi_k) = a + i b`` the field traces
      an ellipse ``a cos(theta) - b sin(theta)``; its semi-major axis is the peak, at the carrier
      phase ``theta*`` returned as ``phase_deg`` (the phase map: where in the cycle each element
      peaks).
    * a common period of at most :data:`MAX_SAMPLED_CYCLES` cycles of the fastest channel: sampled at
      :data:`SAMPLES_PER_CYCLE` per cycle, then refined by a parabola through the best sample.
    * otherwise: the supremum over independent phases (:func:`peak_combined_field`), which the
      field approaches when the carriers drift through all phase combinations.
    """
    e = np.asarray(fields, dtype=float)
    f = np.asarray(freqs_hz, dtype=float)
    phi = np.radians(np.asarray(phases_deg, dtype=float))
    if np.all(f == f[0]):
        a = np.einsum("k,kmd->md", np.cos(phi), e)
        b = np.einsum("k,kmd->md", np.sin(phi), e)
        aa, bb, ab = _dot(a, a), _dot(b, b), _dot(a, b)
        theta = 0.5 * np.arctan2(-2.0 * ab, aa - bb)
        peak = a * np.cos(theta)[:, None] - b * np.sin(theta)[:, None]
        return peak, np.degrees(theta) % 360.0, "exact (one frequency)"
    cycles = _common_period_cycles(f)
    if cycles is None:
        return peak_combined_field(e), None, "supremum over independent phases (no short common period)"
    n = SAMPLES_PER_CYCLE * cycles
    t = np.arange(n) / n * (cycles / f.max())  # one common period
    carriers = np.cos(2 * np.pi * f[:, None] * t[None, :] + phi[:, None])  # (k, n)
    out = np.empty(e.shape[1:])
    for lo in range(0, e.shape[1], chunk):
        block = np.einsum("kmd,kn->mnd", e[:, lo:lo + chunk], carriers)  # (c, n, 3)
        mag2 = np.einsum("mnd,mnd->mn", block, block)
        best = np.argmax(mag2, axis=1)
        rows = np.arange(len(best))
        # parabola through the best sample and its neighbours (periodic) for the time of the peak
        m0, m1, m2 = mag2[rows, best - 1], mag2[rows, best], mag2[rows, (best + 1) % n]
        den = m0 - 2 * m1 + m2
        shift = np.where(den < 0, 0.5 * (m0 - m2) / np.where(den < 0, den, 1.0), 0.0)
        tt = t[best] + np.clip(shift, -0.5, 0.5) * (t[1] - t[0])
        c = np.cos(2 * np.pi * f[:, None] * tt[None, :] + phi[:, None])  # (k, c)
        out[lo:lo + chunk] = np.einsum("kmd,km->md", e[:, lo:lo + chunk], c)
    return out, None, f"sampled over the common period ({cycles} cycles of {f.max():g} Hz)"


__all__ = ["max_envelope", "envelope_along", "peak_combined_field", "peak_over_period"]
