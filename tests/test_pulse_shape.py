"""Pulse measures (peak dI/dt, width, charge) of sampled and nominal pulses, measured waveform
files (stimulator.waveform_file) and their use in the dI/dt and the summary."""

from __future__ import annotations

import numpy as np
import pytest

from stimsim.coils.waveform import pulse_measures, pulse_summary, read_waveform_tsv
from stimsim.errors import ProtocolError
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate

I0, T = 5000.0, 280.0  # A, µs
W = 2 * np.pi / T


def _sine(n_periods: float, samples: int = 20001, pad: int = 0):
    t = np.linspace(0.0, n_periods * T, samples)
    d = I0 * W * np.cos(W * t)  # A/µs: I = I0 sin(w t)
    if pad:
        dt = t[1] - t[0]
        t = np.concatenate([t[0] - dt * np.arange(pad, 0, -1), t, t[-1] + dt * np.arange(1, pad + 1)])
        d = np.concatenate([np.zeros(pad), d, np.zeros(pad)])
    return t, d


def test_half_sine_measures():
    m = pulse_measures(*_sine(0.5))
    assert m["peak_didt_A_per_us"] == pytest.approx(I0 * W, rel=1e-12)
    assert m["peak_current_A"] == pytest.approx(I0, rel=1e-6)
    assert m["width_us"] == pytest.approx(T / 2, rel=1e-9)
    assert m["charge_C"] == pytest.approx(I0 * T * 1e-6 / np.pi, rel=1e-6)  # I T / pi


def test_full_sine_and_baseline():
    plain = pulse_measures(*_sine(1.0))
    assert plain["width_us"] == pytest.approx(T, rel=1e-9)
    assert plain["charge_C"] == pytest.approx(2 * I0 * T * 1e-6 / np.pi, rel=1e-6)
    padded = pulse_measures(*_sine(1.0, pad=500))  # zero baseline before and after the pulse
    assert padded["width_us"] == pytest.approx(T, rel=1e-3)
    # the step from the baseline to the pulse costs half a sample of current (trapezoidal rule)
    assert padded["charge_C"] == pytest.approx(plain["charge_C"], rel=1e-4)


def test_damped_sine_charge_is_analytic():
    a = 0.004  # 1/µs
    t = np.linspace(0.0, T, 40001)
    d = I0 * np.exp(-a * t) * (W * np.cos(W * t) - a * np.sin(W * t))  # dI/dt of I0 e^-at sin wt

    def prim(x):  # antiderivative of e^-ax sin wx
        return -np.exp(-a * x) * (a * np.sin(W * x) + W * np.cos(W * x)) / (a * a + W * W)

    charge = I0 * (abs(prim(T / 2) - prim(0)) + abs(prim(T) - prim(T / 2))) * 1e-6
    m = pulse_measures(t, d)
    assert m["charge_C"] == pytest.approx(charge, rel=1e-6)
    assert m["peak_didt_A_per_us"] == pytest.approx(I0 * W, rel=1e-9)
    assert m["width_us"] == pytest.approx(T, rel=1e-9)


def test_nominal_shapes_in_the_summary():
    st = validate_protocol(_base(stimulator={"peak_current_A": I0, "period_us": T})).stimulator
    s = pulse_summary(st, I0 * W * 1e6)
    assert s["shape"] == "biphasic" and not s["period_assumed"]
    assert s["peak_current_A"] == pytest.approx(I0, rel=1e-4)
    assert s["width_us"] == pytest.approx(T, rel=1e-6)
    assert s["charge_C"] == pytest.approx(2 * I0 * T * 1e-6 / np.pi, rel=1e-4)
    mono = validate_protocol(_base(stimulator={"didt_A_per_us": 100.0, "waveform": "monophasic"})).stimulator
    s = pulse_summary(mono, 100e6)
    assert s["period_assumed"] and s["width_us"] == pytest.approx(s["period_us"] / 2, rel=1e-6)
    assert s["peak_didt_A_per_us"] == pytest.approx(100.0)
    # half sine with dI/dt(0) = 100 A/µs: I = 100 / w, charge = I T / pi
    i = 100.0 / (2 * np.pi / s["period_us"])
    assert s["charge_C"] == pytest.approx(i * s["period_us"] * 1e-6 / np.pi, rel=1e-4)


def _write_tsv(path, t, d, header="time_us\tdidt_A_per_us"):
    path.write_text(header + "\n" + "".join(f"{float(a)!r}\t{float(b)!r}\n" for a, b in zip(t, d)))
    return path


def _base(**kw):
    d = {"kind": "tms", "head": "sphere", "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
         "coil": {"file": "Magstim_70mm_Fig8.ccd", "didt_max_A_per_us": 150.0},
         "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {"didt_A_per_us": 1.0}}
    d.update(kw)
    return d


def test_tsv_round_trip_and_scaling(tmp_path):
    t, d = _sine(1.0, samples=2001)
    f = _write_tsv(tmp_path / "pulse.tsv", t, d)
    t2, d2 = read_waveform_tsv(f)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(d2, d)
    from stimsim.coils.library import load_coil
    from stimsim.tms import coil_didt_A_per_s

    cases = [({}, I0 * W), ({"didt_A_per_us": 80.0}, 80.0), ({"percent_mso": 50}, 75.0),
             ({"peak_current_A": 2 * I0}, 2 * I0 * W)]
    for extra, want in cases:
        p = validate_protocol(_base(stimulator={"waveform_file": "pulse.tsv", **extra}))
        got = coil_didt_A_per_s(p, load_coil(p.coil), tmp_path) / 1e6
        assert got == pytest.approx(want, rel=1e-5), extra
        s = pulse_summary(p.stimulator, got * 1e6, tmp_path)
        assert s["shape"] == "measured" and s["file"] == "pulse.tsv" and s["samples"] == 2001
        assert s["peak_didt_A_per_us"] == pytest.approx(got, rel=1e-12)
        assert s["width_us"] == pytest.approx(T, rel=1e-9)
        assert s["charge_C"] == pytest.approx(2 * (got / W) * T * 1e-6 / np.pi, rel=1e-5)


def test_simulate_with_a_measured_pulse(tmp_path, sphere3_mesh, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the file is found from the protocol's folder, not the current one
    t, d = _sine(0.5, samples=501)
    _write_tsv(tmp_path / "mono.tsv", t, d / 50.0)
    p = validate_protocol(_base(stimulator={"waveform_file": "mono.tsv"}))
    from stimsim.tms import run_tms

    res = run_tms(p, tmp_path, sphere3_mesh)
    assert res.didt_A_per_s == pytest.approx(I0 * W / 50.0 * 1e6, rel=1e-9)
    summary = res.tms_summary()["pulse"]
    assert summary["shape"] == "measured"
    assert summary["width_us"] == pytest.approx(T / 2, rel=1e-9)
    assert summary["peak_didt_A_per_us"] == pytest.approx(res.didt_A_per_s / 1e6)


@pytest.mark.parametrize("name, text, needle", [
    ("p.tsv", "time\tdidt\n0\t1\n1\t2\n2\t3\n", "no columns time_us and didt_A_per_us"),
    ("p.tsv", "time_us\tdidt_A_per_us\n0\t1\n2\t2\n1\t3\n", "must increase"),
    ("p.tsv", "time_us\tdidt_A_per_us\n0\t1\n1\tnan\n2\t3\n", "NaN"),
    ("p.tsv", "time_us\tdidt_A_per_us\n0\t1\n1\t2\n", "at least 3"),
    ("p.tsv", "time_us\tdidt_A_per_us\n0\t1\n1\tabc\n2\t3\n", "non-numeric"),
    ("p.tsv", "time_us\tdidt_A_per_us\n0\t0\n1\t0\n2\t0\n", "zero throughout"),
    ("p.csv", "time_us,didt_A_per_us\n0,1\n1,2\n2,3\n", "not a .tsv"),
    ("p.tsv", "", "empty"),
])
def test_bad_waveform_files(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    p = validate_protocol(_base(stimulator={"waveform_file": str(tmp_path / name)}))
    from stimsim.coils.library import load_coil
    from stimsim.tms import coil_didt_A_per_s

    with pytest.raises(ProtocolError, match=needle) as err:
        coil_didt_A_per_s(p, load_coil(p.coil))
    assert str(err.value).startswith("stimulator.waveform_file") and "\n" not in str(err.value)


def test_missing_waveform_file_and_bad_combinations(tmp_path):
    from stimsim.coils.library import load_coil
    from stimsim.tms import coil_didt_A_per_s

    p = validate_protocol(_base(stimulator={"waveform_file": "nowhere.tsv"}))
    with pytest.raises(ProtocolError, match="stimulator.waveform_file: file not found"):
        coil_didt_A_per_s(p, load_coil(p.coil), tmp_path)
    for st, needle in [({"waveform_file": "a.tsv", "didt_A_per_us": 1, "percent_mso": 50}, "at most one"),
                       ({"waveform_file": "a.tsv", "period_us": 280}, "drop period_us"),
                       ({"waveform_file": "a.tsv", "waveform": "monophasic"}, "drop waveform")]:
        with pytest.raises(ProtocolError, match=needle):
            validate_protocol(_base(stimulator=st))


def test_a_measured_pulse_protocol_survives_saving(tmp_path):
    # a saved protocol writes every default back out (waveform: biphasic, damping 0): it must load again
    from stimsim.protocol import load_protocol, protocol_to_dict, save_protocol

    t, d = _sine(1.0)
    _write_tsv(tmp_path / "pulse.tsv", t, d)
    p = validate_protocol(_base(stimulator={"waveform_file": "pulse.tsv", "percent_mso": 50}))
    assert protocol_to_dict(validate_protocol(protocol_to_dict(p))) == protocol_to_dict(p)
    save_protocol(p, tmp_path / "p.yaml")
    assert protocol_to_dict(load_protocol(tmp_path / "p.yaml")) == protocol_to_dict(p)
