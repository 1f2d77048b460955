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


def brute_force(lf, mesh, avoid=(), ratio=0.5):
    """Every pair of disjoint pairs at every split: (mean target envelope, channels, mean envelope in
    each avoid region) of the best whose avoid means are all <= ratio x its target mean."""
    from stimsim.planning.optimize import roi_elements

    regions = [roi_elements(mesh, TARGET, RADIUS, (3,))] + [roi_elements(mesh, a[:3], a[3], (3,)) for a in avoid]
    elements = np.concatenate(regions)
    w = np.zeros((len(elements), len(regions)))  # column r: region r's volume weights on its rows
    start = np.cumsum([0] + [len(r) for r in regions])
    for r, idx in enumerate(regions):
        w[start[r]:start[r + 1], r] = mesh.volumes_mm3[idx] / mesh.volumes_mm3[idx].sum()
    cols = np.zeros((len(lf.names), len(elements), 3))
    cols[:-1] = lf.fields[:, elements]
    best = (-1.0, None, None)
    pairs = list(itertools.combinations(range(len(lf.names)), 2))
    for (a1, b1), (a2, b2) in itertools.combinations(pairs, 2):
        if len({a1, b1, a2, b2}) < 4:
            continue
        for s in SPLITS:
            env = max_envelope(s * TOTAL * 1e-3 * (cols[a1] - cols[b1]),
                               (1 - s) * TOTAL * 1e-3 * (cols[a2] - cols[b2]))
            means = env @ w
            if means[0] > best[0] and np.all(means[1:] <= ratio * means[0]):
                best = (float(means[0]), ((a1, b1, s), (a2, b2)), means[1:].tolist())
    return best[:2] if not avoid else best


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


def montage_envelope(lf, channels):
    """Maximum envelope (V/m) in every element of a searched montage, from the leadfield directly."""
    (a1, c1, i1), (a2, c2, i2) = channels
    return max_envelope(lf.field({a1: i1, c1: -i1}), lf.field({a2: i2, c2: -i2}))


def weighted_mean(mesh, env, center, radius):
    from stimsim.planning.optimize import roi_elements

    idx = roi_elements(mesh, center, radius, (3,))
    return float(np.average(env[idx], weights=mesh.volumes_mm3[idx]))


@pytest.fixture(scope="module")
def hot_spot(cap_leadfield, sphere3_mesh):
    """The unconstrained optimum (objective target) and an avoid region (8 mm) centred on its strongest
    envelope in the brain away from the target ROI."""
    free = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, total_mA=TOTAL, brain_tags=(3,), objective="target")
    env = montage_envelope(cap_leadfield, free.channels)
    c = sphere3_mesh.centroids
    away = ((sphere3_mesh.tet_tags == 3) & (np.linalg.norm(c - TARGET, axis=1) > RADIUS + 10)
            & (np.linalg.norm(c, axis=1) < 70))
    k = np.flatnonzero(away)[np.argmax(env[away])]
    return free, (*c[k].tolist(), 8.0)


def test_avoid_region_moves_the_montage_off_a_hot_spot(cap_leadfield, sphere3_mesh, hot_spot):
    free, region = hot_spot
    free_env = montage_envelope(cap_leadfield, free.channels)
    assert weighted_mean(sphere3_mesh, free_env, region[:3], region[3]) > 0.5 * free.target_envelope_V_per_m
    found = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, total_mA=TOTAL, brain_tags=(3,),
                      objective="target", avoid=[region], avoid_max_ratio=0.5)
    assert found.channels != free.channels
    env = montage_envelope(cap_leadfield, found.channels)  # independent of the search's superposition
    target = weighted_mean(sphere3_mesh, env, TARGET, RADIUS)
    in_avoid = weighted_mean(sphere3_mesh, env, region[:3], region[3])
    assert target == pytest.approx(found.target_envelope_V_per_m, rel=1e-5)
    assert in_avoid == pytest.approx(found.avoid_envelopes_V_per_m[0], rel=1e-5)
    assert in_avoid <= 0.5 * target
    assert found.target_envelope_V_per_m < free.target_envelope_V_per_m
    assert "avoid region 1" in ti_protocol(found, cap_leadfield, "sphere")["description"]


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_avoid_rule_equals_brute_force(cap_leadfield, sphere3_mesh, hot_spot, ratio):
    _, region = hot_spot
    best_value, best, best_avoid = brute_force(cap_leadfield, sphere3_mesh, avoid=[region], ratio=ratio)
    assert best is not None
    found = search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, total_mA=TOTAL, brain_tags=(3,),
                      objective="target", avoid=[region], avoid_max_ratio=ratio)
    assert found.target_envelope_V_per_m == pytest.approx(best_value, rel=1e-9)
    assert found.avoid_envelopes_V_per_m == pytest.approx(best_avoid, rel=1e-9)
    names = cap_leadfield.names
    (a1, b1, s), (a2, b2) = best
    assert {frozenset(c[:2]) for c in found.channels} == {frozenset((names[a1], names[b1])),
                                                          frozenset((names[a2], names[b2]))}


def test_no_admissible_montage_is_an_error(cap_leadfield, sphere3_mesh, hot_spot):
    from stimsim.errors import ProtocolError

    _, region = hot_spot
    with pytest.raises(ProtocolError, match="--avoid-max-ratio"):
        search_ti(cap_leadfield, sphere3_mesh, TARGET, RADIUS, brain_tags=(3,), avoid=[region],
                  avoid_max_ratio=0.01)


@pytest.mark.parametrize("avoid, message", [
    (["--avoid", "0,-30,55"], "four numbers"), (["--avoid", "0,-30,55,0"], "radius r > 0"),
    (["--avoid", "0,-30,55,nan"], "four finite"), (["--avoid", "0,-30,55,x"], "four numbers"),
    (["--avoid", "0,-30,55,5", "--avoid", "0,30,70,10"], "overlaps the target"),
    (["--avoid", "0,0,300,5"], "contains no brain element"),
    (["--avoid-mni", "0,-30,55,5"], "no MNI transform"),  # the sphere has none
    (["--avoid", "0,-30,55,5", "--avoid-max-ratio", "-1"], "ratio > 0")])
def test_cli_refuses_bad_avoid_regions(cap_leadfield, tmp_path, avoid, message):
    from typer.testing import CliRunner

    from stimsim.cli import app
    from stimsim.planning import save_leadfield

    lf = save_leadfield(cap_leadfield, tmp_path / "lf.npz")
    args = ["optimize", "ti", "--leadfield", str(lf), "--head", "sphere", "--target", "0,30,55", "--radius", "15",
            "--out", str(tmp_path / "ti.yaml")]
    r = CliRunner().invoke(app, args + avoid)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "--avoid" in lines[0] and message in lines[0]
    assert not (tmp_path / "ti.yaml").exists()


def test_cli_reports_avoid_regions(cap_leadfield, tmp_path, hot_spot):
    from typer.testing import CliRunner

    from stimsim.cli import app
    from stimsim.planning import save_leadfield
    from stimsim.protocol import load_protocol

    _, region = hot_spot
    lf = save_leadfield(cap_leadfield, tmp_path / "lf.npz")
    args = ["optimize", "ti", "--leadfield", str(lf), "--head", "sphere", "--target", "0,30,55", "--radius", "15",
            "--objective", "target", "--avoid", ",".join(f"{x!r}" for x in region), "--out", str(tmp_path / "ti.yaml")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "avoid region" in r.output
    assert "avoid region 1" in load_protocol(tmp_path / "ti.yaml").description
    bad = CliRunner().invoke(app, args[:-2] + ["--avoid-max-ratio", "0.01", "--out", str(tmp_path / "no.yaml")])
    assert bad.exit_code == 2 and bad.output.startswith("error:") and "--avoid" in bad.output
    assert not (tmp_path / "no.yaml").exists()
