"""Volume- or area-weighted statistics of element and node values (one implementation for the
summary, the report and the electrode doses)."""

from __future__ import annotations

import numpy as np


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs) -> list[float]:
    """Volume-weighted percentiles (q in 0..100): the values below which q % of the volume lies."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w)
    if cw[-1] <= 0:
        return [float("nan")] * len(qs)
    return [float(x) for x in np.interp(np.asarray(qs) / 100.0 * cw[-1], cw - 0.5 * w, v)]
