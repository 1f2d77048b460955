"""Multichannel tACS: channels at their own frequencies and phases, the peak of the combined field
over time (not the sum of peaks), checked against tDCS superposition and brute-force time sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stimsim.errors import ProtocolError
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate

PADS = [{"name": "a", "position": [0, 0, 95], "current_mA": 1.0, "shape": "disc", "diameter_mm": 20},
        {"name": "b", "position": [95, 0, 0], "current_mA": -1.0, "shape": "disc", "diameter_mm": 20},
        {"name": "c", "position": [0, 95, 0], "current_mA": 0.5, "shape": "disc", "diameter_mm": 20},
        {"name": "d", "position": [0, -67.2, 67.2], "current_mA": -0.5, "shape": "disc", "diameter_mm": 20}]


def tacs(f1=10.0, f2=10.0, ph1=0.0, ph2=0.0, pads=PADS):
    return validate_protocol({"kind": "tacs", "head": "sphere", "electrodes": pads, "channels": [
        {"name": "x", "frequency_hz": f1, "phase_deg": ph1, "electrodes": ["a", "b"]},
        {"name": "y", "frequency_hz": f2, "phase_deg": ph2, "electrodes": ["c", "d"]}]})


def tdcs(sign2=1.0):
    pads = [dict(p, current_mA=p["current_mA"] * (sign2 if p["name"] in "cd" else 1.0)) for p in PADS]
    return validate_protocol({"kind": "tdcs", "head": "sphere", "electrodes": pads})


def sampled_peak(e1, e2, f, ph, n=20000, seconds=None):
    t = np.linspace(0, seconds or 1.0 / np.gcd.reduce(np.asarray(f, int)), n)[:, None, None]
    x = (e1 * np.cos(2 * np.pi * f[0] * t + np.radians(ph[0]))
         + e2 * np.cos(2 * np.pi * f[1] * t + np.radians(ph[1])))
    return np.sqrt((x * x).sum(-1)).max(axis=0)


@pytest.mark.parametrize("ph2, sign2", [(0.0, 1.0), (180.0, -1.0)])
def test_in_phase_and_antiphase_channels_equal_the_tdcs_sum(sphere3_mesh, ph2, sign2):
    multi = simulate(tacs(ph2=ph2), mesh=sphere3_mesh)
    ref = simulate(tdcs(sign2), mesh=sphere3_mesh)
    rel = np.linalg.norm(multi.magnE - ref.magnE) / np.linalg.norm(ref.magnE)
    assert rel < 1e-6
    assert multi.floating_currents_A["x"] < 1e-9 and multi.floating_currents_A["y"] < 1e-9


def test_quadrature_channels_peak_is_the_ellipse_not_the_sum(sphere3_mesh):
    r = simulate(tacs(ph2=90.0), mesh=sphere3_mesh)
    e1, e2 = r.channel_E
    sel = np.arange(0, sphere3_mesh.n_tets, 97)
    want = sampled_peak(e1[sel], e2[sel], (10, 10), (0, 90))
    np.testing.assert_allclose(r.magnE[sel], want, rtol=1e-6)
    summed = np.linalg.norm(e1, axis=1) + np.linalg.norm(e2, axis=1)
    assert np.all(r.magnE <= summed + 1e-12) and np.mean(r.magnE < 0.999 * summed) > 0.5
    assert r.peak_phase_deg is not None and r.peak_phase_deg.shape == (sphere3_mesh.n_tets,)


def test_two_frequencies_peak_over_the_common_period(sphere3_mesh):
    r = simulate(tacs(f1=10.0, f2=20.0, ph2=30.0), mesh=sphere3_mesh)
    e1, e2 = r.channel_E
    sel = np.arange(0, sphere3_mesh.n_tets, 211)
    want = sampled_peak(e1[sel], e2[sel], (10, 20), (0, 30), n=200001, seconds=0.1)
    np.testing.assert_allclose(r.magnE[sel], want, rtol=2e-3)
    assert r.peak_phase_deg is None and "common period" in r.peak_method


def test_channels_are_validated():
    with pytest.raises(ProtocolError, match="exactly one channel"):
        validate_protocol({"kind": "tacs", "head": "sphere", "electrodes": PADS, "channels": [
            {"name": "x", "frequency_hz": 10, "electrodes": ["a", "b"]},
            {"name": "y", "frequency_hz": 10, "electrodes": ["a", "b"]}]})
    with pytest.raises(ProtocolError, match="sum to 0"):
        validate_protocol({"kind": "tacs", "head": "sphere", "electrodes": PADS, "channels": [
            {"name": "x", "frequency_hz": 10, "electrodes": ["a", "c"]},
            {"name": "y", "frequency_hz": 10, "electrodes": ["b", "d"]}]})
    with pytest.raises(ProtocolError, match="per channel"):
        validate_protocol({"kind": "tacs", "head": "sphere", "electrodes": PADS, "frequency_hz": 10, "channels": [
            {"name": "x", "frequency_hz": 10, "electrodes": ["a", "b"]},
            {"name": "y", "frequency_hz": 10, "electrodes": ["c", "d"]}]})
    with pytest.raises(ProtocolError, match="kind 'tacs'"):
        validate_protocol({"kind": "tdcs", "head": "sphere", "electrodes": PADS, "channels": [
            {"name": "x", "frequency_hz": 10, "electrodes": ["a", "b"]},
            {"name": "y", "frequency_hz": 10, "electrodes": ["c", "d"]}]})


def test_cli_writes_channel_fields_and_summary(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from stimsim.cli import app
    from stimsim.mesh import read_mesh
    from stimsim.protocol import protocol_to_dict

    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(protocol_to_dict(tacs(ph2=90.0))))
    res = CliRunner().invoke(app, ["-q", "run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["name"] for c in summary["tacs_channels"]["channels"]] == ["x", "y"]
    _, fields = read_mesh(tmp_path / "out" / "fields.vtu")
    assert {"E_x", "E_y", "peak_phase_deg"} <= set(fields["element"])
