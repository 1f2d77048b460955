"""A simple TMS pulse model: coil current I(t) of an RLC discharge, and its peak dI/dt.

The stimulator discharges a capacitor through the coil, an under-damped series RLC circuit
(Barker et al. 1991, Neurosurgery 29:453; Peterchev et al. 2008, IEEE TBME 55:1588).  With
damping rate alpha and ringing angular frequency omega::

    I(t) = I_peak_scale * exp(-alpha t) * sin(omega t)

A **biphasic** pulse is one full period (the current reverses once, the pulse ends at
t = 2 pi / omega); a **monophasic** pulse is the first half period only (a diode and
resistor then let the current decay without reversing).  The induced field follows dI/dt,
which peaks at t = 0 for both: dI/dt(0) = I_peak_scale * omega.  Given the peak coil current
and the period, this gives the dI/dt that scales stimsim's fields.
"""

from __future__ import annotations

import numpy as np

from ..errors import ProtocolError


def pulse(kind: str, peak_current_A: float, period_us: float, damping_per_us: float = 0.0, samples: int = 400):
    """Sampled coil current of one pulse: returns (t_us, current_A, didt_A_per_s).

    ``peak_current_A`` is the largest |I| of the pulse; ``period_us`` the ringing period
    2 pi / omega; ``damping_per_us`` the exponential decay rate alpha (0 = lossless).
    """
    if kind not in ("biphasic", "monophasic"):
        raise ProtocolError(f"stimulator.waveform: {kind!r} is not 'biphasic' or 'monophasic'")
    if peak_current_A <= 0 or period_us <= 0 or damping_per_us < 0:
        raise ProtocolError("stimulator: peak_current_A and period_us must be > 0, damping_per_us >= 0")
    omega = 2 * np.pi / period_us  # rad/us
    end = period_us if kind == "biphasic" else period_us / 2
    t = np.linspace(0.0, end, samples)
    shape = np.exp(-damping_per_us * t) * np.sin(omega * t)
    scale = peak_current_A / np.abs(shape).max()
    current = scale * shape
    didt = scale * np.exp(-damping_per_us * t) * (omega * np.cos(omega * t) - damping_per_us * np.sin(omega * t))
    return t, current, didt * 1e6  # A/us -> A/s


def peak_didt_A_per_s(kind: str, peak_current_A: float, period_us: float, damping_per_us: float = 0.0) -> float:
    """Largest |dI/dt| of the pulse (A/s)."""
    return float(np.abs(pulse(kind, peak_current_A, period_us, damping_per_us)[2]).max())
