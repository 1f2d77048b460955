"""Error metrics for comparing a numerical field with a reference field.

All norms are Frobenius norms over every entry, so the same functions work for a
potential (shape ``(n,)``) and for a vector field (shape ``(n, 3)``).  The ``rdm`` and
``mag`` measures are those of Meijs et al. 1989, "On the numerical accuracy of the
boundary element method", IEEE Trans. Biomed. Eng. 36(10):1038-1049: ``rdm`` compares
shapes (it ignores a global scale factor, range 0..2) and ``mag`` compares overall size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rel_l2", "rdm", "mag"]


def _pair(test, ref) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(test, dtype=float)
    r = np.asarray(ref, dtype=float)
    if t.shape != r.shape:
        raise ValueError(f"test and ref must have the same shape, got {t.shape} and {r.shape}")
    return t, r


def rel_l2(test, ref) -> float:
    """Relative L2 error ``||test - ref|| / ||ref||``.

    Parameters
    ----------
    test, ref : array_like, shape (n,) or (n, 3)
        Field to assess and reference field, sampled at the same points.

    Returns
    -------
    float
        ``inf`` when ``ref`` is identically zero and ``test`` is not, ``0.0`` when both are.
    """
    t, r = _pair(test, ref)
    num = float(np.linalg.norm(t - r))
    den = float(np.linalg.norm(r))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def rdm(test, ref) -> float:
    """Relative difference measure ``|| test/||test|| - ref/||ref|| ||`` (Meijs et al. 1989).

    Parameters
    ----------
    test, ref : array_like, shape (n,) or (n, 3)

    Returns
    -------
    float
        Between 0 (same shape) and 2 (opposite); ``nan`` if either field is zero.
    """
    t, r = _pair(test, ref)
    nt, nr = np.linalg.norm(t), np.linalg.norm(r)
    if nt == 0.0 or nr == 0.0:
        return float("nan")
    return float(np.linalg.norm(t / nt - r / nr))


def mag(test, ref) -> float:
    """Magnitude error ``|ln(||test|| / ||ref||)|`` (log form of Meijs et al. 1989 MAG).

    Parameters
    ----------
    test, ref : array_like, shape (n,) or (n, 3)

    Returns
    -------
    float
        0 when both fields have the same norm; ``inf`` if exactly one of them is zero.
    """
    t, r = _pair(test, ref)
    nt, nr = float(np.linalg.norm(t)), float(np.linalg.norm(r))
    if nt == 0.0 and nr == 0.0:
        return 0.0
    if nt == 0.0 or nr == 0.0:
        return float("inf")
    return abs(float(np.log(nt / nr)))
