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


__all__ = ["max_envelope", "envelope_along", "peak_combined_field"]
