"""Synthetic label volumes shared by the meshing tests (imported by test modules, not collected)."""

from __future__ import annotations

import numpy as np


def nested_balls(n: int, radii, centre=None) -> np.ndarray:
    """Colin27-style labels as nested balls in an n^3 grid of 1 mm voxels: label k inside radii[k-1]
    (radii outermost first: 1 scalp, 2 skull, 3 CSF, 4 GM, 5 WM)."""
    c = (n - 1) / 2 if centre is None else centre
    x, y, z = np.mgrid[:n, :n, :n] - c
    r = np.sqrt(x * x + y * y + z * z)
    vol = np.zeros((n, n, n), np.uint8)
    for lab, rad in enumerate(radii, 1):
        vol[r <= rad] = lab
    return vol


def simnibs_balls(n: int = 44, radii=(20, 17, 14, 12, 8)) -> np.ndarray:
    """:func:`nested_balls` with SimNIBS tags (5 scalp, 4 bone, 3 CSF, 2 GM, 1 WM; radii outermost
    first); by default the small five-layer head of the TetGen fallback tests."""
    vol = nested_balls(n, radii)
    return np.where(vol > 0, 6 - vol, 0).astype(np.int16)
