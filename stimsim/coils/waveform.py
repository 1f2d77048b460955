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


# --- pulse measures and measured waveforms ---------------------------------------------------------
#
# Definitions (docs/neuronavigation.md, measured pulses), for a pulse sampled as dI/dt(t):
#   current      I(t) = integral of dI/dt from the first sample (I = 0 there), trapezoidal rule
#   peak dI/dt   max |dI/dt|; this is the dI/dt that scales stimsim's fields
#   pulse width  time from the first to the last instant at which |dI/dt| reaches 1 % of its peak
#                (crossings linearly interpolated): one period for a biphasic RLC pulse, half a
#                period for the nominal monophasic one; a baseline before or after is not counted
#   charge       integral of |I| dt over the record, in coulomb (the charge moved through the coil)

#: |dI/dt| threshold of the pulse width, as a fraction of the peak
WIDTH_THRESHOLD = 0.01
#: period assumed for a nominal pulse whose protocol gives only dI/dt or % MSO (a typical
#: biphasic pulse; MagVenture and Magstim Rapid biphasic pulses last ~280-300 µs)
DEFAULT_PERIOD_US = 280.0
#: a measured record holds one pulse: at most this many samples
MAX_SAMPLES = 1_000_000

_TIME_COLUMNS = ("time_us",)
_DIDT_COLUMNS = ("didt_A_per_us",)


def pulse_measures(t_us, didt_A_per_us) -> dict:
    """Peak dI/dt (A/µs), peak current (A), pulse width (µs) and charge per pulse (C) of a sampled pulse."""
    t = np.asarray(t_us, float)
    d = np.asarray(didt_A_per_us, float)
    # current in A: dI/dt in A/µs integrated over µs
    current = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(t))])
    a = np.abs(d)
    peak = float(a.max())
    width = 0.0
    if peak > 0:
        level = WIDTH_THRESHOLD * peak
        above = np.flatnonzero(a >= level)
        i, j = above[0], above[-1]

        def cross(k0, k1):  # time where |dI/dt| passes `level` between samples k0 and k1
            if a[k1] == a[k0]:
                return t[k1]
            return t[k0] + (level - a[k0]) / (a[k1] - a[k0]) * (t[k1] - t[k0])

        start = t[i] if i == 0 else cross(i - 1, i)
        end = t[j] if j == len(t) - 1 else cross(j + 1, j)
        width = float(end - start)
    ai = np.abs(current)
    charge_C = float(np.sum(0.5 * (ai[1:] + ai[:-1]) * np.diff(t)) * 1e-6)  # A µs -> C
    return {"peak_didt_A_per_us": peak, "peak_current_A": float(ai.max()), "width_us": width,
            "charge_C": charge_C}


def read_waveform_tsv(path, field: str = "stimulator.waveform_file") -> tuple[np.ndarray, np.ndarray]:
    """A measured pulse: ``(t_us, didt_A_per_us)`` from a tab-separated file with a header row naming
    the columns ``time_us`` and ``didt_A_per_us`` (other columns are ignored; ``#`` lines are comments)."""
    from pathlib import Path

    path = Path(path)
    fix = "a .tsv with a header row 'time_us<TAB>didt_A_per_us' and one sample per row"
    if path.suffix.lower() not in (".tsv", ".txt"):
        raise ProtocolError(f"{field}: {path.name} is not a .tsv file; give {fix}")
    try:
        if path.stat().st_size > 64 * 1024 * 1024:
            raise ProtocolError(f"{field}: {path.name} is larger than 64 MiB, not one pulse; give {fix}")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ProtocolError(f"{field}: file not found: {path}; check the path (relative paths are taken from "
                            "the protocol's folder)") from None
    except UnicodeDecodeError:
        raise ProtocolError(f"{field}: {path.name} is not UTF-8 text; give {fix}") from None
    except OSError as err:
        raise ProtocolError(f"{field}: cannot read {path}: {err.strerror}") from None
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows:
        raise ProtocolError(f"{field}: {path.name} is empty; give {fix}")
    header = [h.strip() for h in rows[0].split("\t")]
    try:
        ti = next(header.index(c) for c in _TIME_COLUMNS if c in header)
        di = next(header.index(c) for c in _DIDT_COLUMNS if c in header)
    except StopIteration:
        raise ProtocolError(f"{field}: {path.name} has no columns time_us and didt_A_per_us in its header row "
                            f"(found {', '.join(map(repr, header[:6]))}); give {fix}") from None
    if len(rows) - 1 > MAX_SAMPLES:
        raise ProtocolError(f"{field}: {path.name} has more than {MAX_SAMPLES} samples, not one pulse; give {fix}")
    t, d = np.empty(len(rows) - 1), np.empty(len(rows) - 1)
    for k, line in enumerate(rows[1:]):
        cells = line.split("\t")
        try:
            t[k], d[k] = float(cells[ti]), float(cells[di])
        except (IndexError, ValueError):
            raise ProtocolError(f"{field}: {path.name} row {k + 2}: missing or non-numeric time_us/didt_A_per_us; "
                                f"give {fix}") from None
    if len(t) < 3:
        raise ProtocolError(f"{field}: {path.name} has {len(t)} samples; a pulse needs at least 3")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(d))):
        raise ProtocolError(f"{field}: {path.name} holds NaN or infinite values; remove or fill those samples")
    if np.any(np.diff(t) <= 0):
        k = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 3
        raise ProtocolError(f"{field}: {path.name}: time_us must increase from row to row (row {k} does not); "
                            "sort the samples by time")
    if not np.any(d != 0):
        raise ProtocolError(f"{field}: {path.name}: dI/dt is zero throughout; give the measured pulse")
    return t, d


def measured_waveform(stimulator, base_dir=None) -> tuple[str, np.ndarray, np.ndarray]:
    """``(path, t_us, didt_A_per_us)`` of ``stimulator.waveform_file`` as given in the file (unscaled);
    a relative path is taken from ``base_dir`` (the protocol's folder), else the current folder."""
    from pathlib import Path

    p = Path(stimulator.waveform_file)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    t, d = read_waveform_tsv(p)
    return str(p), t, d


def waveform_didt_A_per_s(stimulator, coil_didt_max_A_per_s=None, base_dir=None) -> float:
    """Peak dI/dt (A/s) of a stimulator with a measured ``waveform_file``: the file's own peak, or
    its shape scaled to ``didt_A_per_us``, to ``percent_mso`` of the coil's maximum, or so that its
    peak current is ``peak_current_A``."""
    _, t, d = measured_waveform(stimulator, base_dir)
    m = pulse_measures(t, d)
    if stimulator.didt_A_per_us is not None:
        return stimulator.didt_A_per_us * 1e6
    if stimulator.percent_mso is not None:
        if coil_didt_max_A_per_s is None:
            raise ProtocolError("stimulator.percent_mso: this coil does not state its dI/dt at 100 % output; give "
                                "stimulator.didt_A_per_us instead, or coil.didt_max_A_per_us")
        return stimulator.percent_mso / 100.0 * coil_didt_max_A_per_s
    if stimulator.peak_current_A is not None:
        if m["peak_current_A"] <= 0:
            raise ProtocolError("stimulator.waveform_file: the measured pulse carries no current, so it cannot "
                                "be scaled to peak_current_A; give didt_A_per_us instead")
        return m["peak_didt_A_per_us"] * stimulator.peak_current_A / m["peak_current_A"] * 1e6
    return m["peak_didt_A_per_us"] * 1e6


def pulse_summary(stimulator, didt_A_per_s: float, base_dir=None) -> dict:
    """The summary's ``pulse`` section: shape, peak dI/dt, peak current, width and charge of one pulse.

    A measured ``waveform_file`` is scaled so that its peak |dI/dt| equals ``didt_A_per_s`` (the
    dI/dt the field was computed with); a nominal shape uses the protocol's ``period_us`` and
    ``damping_per_us`` (period :data:`DEFAULT_PERIOD_US` when the protocol gives none, marked
    ``period_assumed``).  Never raises: an unreadable file gives ``{"shape": "measured", "error": ...}``.
    """
    didt_us = float(didt_A_per_s) / 1e6
    if getattr(stimulator, "waveform_file", None) is not None:
        try:
            path, t, d = measured_waveform(stimulator, base_dir)
        except ProtocolError as err:
            return {"shape": "measured", "file": stimulator.waveform_file, "error": str(err)}
        peak = float(np.abs(d).max())
        m = pulse_measures(t, d * (didt_us / peak))
        from pathlib import Path

        return {"shape": "measured", "file": Path(path).name, "samples": int(len(t)), **m,
                "file_peak_didt_A_per_us": peak}
    period = stimulator.period_us or DEFAULT_PERIOD_US
    t, current, didt = pulse(stimulator.waveform, 1.0, period, stimulator.damping_per_us, samples=4001)
    d = didt / 1e6  # A/µs for 1 A peak
    m = pulse_measures(t, d * (didt_us / np.abs(d).max()))
    return {"shape": stimulator.waveform, "period_us": period, "period_assumed": stimulator.period_us is None,
            "damping_per_us": stimulator.damping_per_us, **m}
