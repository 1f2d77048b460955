"""TI montage search on a leadfield: exhaustive step, the refinement heuristic against evaluating
every candidate at every current split, and the optimum reproduced by a direct TI run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stimsim.envelope import max_envelope
from stimsim.planning import compute_leadfield
from stimsim.planning.ti_search import SPLITS, search_ti, ti_protocol
from stimsim.protocol import validate_protocol

TARGET, RADIUS, TOTAL = (0.0, 30.0, 55.0), 15.0, 2.0


@pytest.fixture(scope="module")
def cap_leadfield(sphere3_mesh):
    """Nine point electrodes on the sphere's upper half (r = 95 mm), the last one the reference."""
    pos = {}
    for k, (theta, phi) in enumerate([(20, 0), (40, 60), (40, 180), (40, 300), (70, 30), (70, 110),
                                      (70, 200), (70, 290), (90, 150)]):
        t, p = np.radians(theta), np.radians(phi)
        pos[f"E{k}"] = (95 * np.sin(t) * np.cos(p), 95 * np.sin(t) * np.sin(p), 95 * np.cos(t))
    return compute_leadfield(sphere3_mesh, pos, "E8", progress=False)


def brute_force(lf, mesh):
    """Every pair of disjoint pairs at every split: (mean target envelope, channels) of the best."""
    from stimsim.planning.optimize import roi_elements

    roi = roi_elements(mesh, TARGET, RADIUS, (3,))
    w = mesh.volumes_mm3[roi] / mesh.volumes_mm3[roi].sum()
    cols = np.zeros((len(lf.names), len(roi), 3))
    cols[:-1] = lf.fields[:, roi]
    best = (-1.0, None)
    pairs = list(itertools.combinations(range(len(lf.names)), 2))
    for (a1, b1), (a2, b2) in itertools.combinations(pairs, 2):
        if len({a1, b1, a2, b2}) < 4:
            continue
        for s in SPLITS:
            env = max_envelope(s * TOTAL * 1e-3 * (cols[a1] - cols[b1]),
                               (1 - s) * TOTAL * 1e-3 * (cols[a2] - cols[b2]))
            value = float(env @ w)
            if value > best[0]:
                best = (value, ((a1, b1, s), (a2, b2)))
    return best


def test_search_finds_the_exhaustive_optimum(cap_leadfield, sphere3_mesh):
    best_value, _ = brute_force(cap_leadfield, sphere3_mesh)
    found = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, total_mA=TOTAL, brain_tags=(3,),
                      objective="target", top=20)
    assert found.candidates == 9 * 8 // 2 * (7 * 6 // 2) // 2  # 36 pairs, each with 21 disjoint ones, unordered
    assert found.target_envelope_V_per_m == pytest.approx(best_value, rel=1e-9)
    total = sum(c[2] for c in found.channels)
    assert total == pytest.approx(TOTAL)


def test_focality_objective_trades_target_for_the_outside(cap_leadfield, sphere3_mesh):
    strong = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,), objective="target")
    focal = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,), objective="focality",
                      min_target_fraction=0.5)
    assert focal.focality >= strong.focality
    assert focal.target_envelope_V_per_m >= 0.5 * strong.target_envelope_V_per_m - 1e-12


def test_written_protocol_reproduces_the_envelope(cap_leadfield, sphere3_mesh):
    """The search's numbers come from leadfield superposition; a direct TI run must agree."""
    from stimsim.planning.optimize import roi_elements
    from stimsim.simulation import simulate

    found = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,), objective="target")
    p = validate_protocol(ti_protocol(found, cap_leadfield, "sphere"))
    assert [e.current_mA for c in p.channels for e in c.electrodes] == pytest.approx(
        [found.channels[0][2], -found.channels[0][2], found.channels[1][2], -found.channels[1][2]])
    r = simulate(p, mesh=sphere3_mesh)
    roi = roi_elements(sphere3_mesh, TARGET, RADIUS, (3,))
    w = sphere3_mesh.volumes_mm3[roi]
    direct = float(np.average(max_envelope(r.channel_E[0][roi], r.channel_E[1][roi]), weights=w))
    assert direct == pytest.approx(found.target_envelope_V_per_m, rel=0.01)


def test_bad_arguments(cap_leadfield, sphere3_mesh):
    from stimsim.errors import ProtocolError

    with pytest.raises(ProtocolError, match="objective"):
        search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,), objective="max")
    with pytest.raises(ProtocolError, match="exclude"):
        search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,), exclude=["Cz"])
    with pytest.raises(ProtocolError, match="4 electrodes"):
        search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,),
                  exclude=["E0", "E1", "E2", "E3", "E4", "E5"])


def test_cli_writes_a_ti_protocol_and_refuses_unsafe_currents(cap_leadfield, tmp_path):
    from typer.testing import CliRunner

    from stimsim.cli import app
    from stimsim.planning import save_leadfield
    from stimsim.protocol import load_protocol

    lf = save_leadfield(cap_leadfield, tmp_path / "lf.npz")
    args = ["optimize", "ti", "--leadfield", str(lf), "--head", "sphere", "--target", "0,30,55", "--radius", "15"]
    ok = CliRunner().invoke(app, args + ["--out", str(tmp_path / "ti.yaml"), "--frequencies", "1000,1005"])
    assert ok.exit_code == 0, ok.output
    p = load_protocol(tmp_path / "ti.yaml")
    assert p.kind == "ti" and [c.frequency_hz for c in p.channels] == [1000.0, 1005.0]
    unsafe = CliRunner().invoke(app, args + ["--out", str(tmp_path / "unsafe.yaml"), "--total-mA", "10"])
    assert unsafe.exit_code == 2 and "--total-mA" in unsafe.output
    assert not (tmp_path / "unsafe.yaml").exists()


def test_a_sampled_roi_still_finds_a_near_optimal_montage(cap_leadfield, sphere3_mesh):
    """Step 1 on 8 sampled ROI elements (step 2 on all of them) lands within 10 % of the optimum."""
    best_value, _ = brute_force(cap_leadfield, sphere3_mesh)
    found = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, total_mA=TOTAL, brain_tags=(3,),
                      objective="target", roi_samples=8)
    assert found.target_envelope_V_per_m <= best_value * (1 + 1e-9)
    assert found.target_envelope_V_per_m >= 0.9 * best_value
