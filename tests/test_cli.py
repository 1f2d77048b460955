import json

import meshio
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stimsim.cli import app
from stimsim.mesh import read_mesh

runner = CliRunner()

TDCS = {
    "kind": "tdcs", "head": "sphere", "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
    "electrodes": [
        {"name": "anode", "position": [0, 0, 95], "current_mA": 1.0, "shape": "disc", "diameter_mm": 25},
        {"name": "cathode", "position": [95, 0, 0], "current_mA": -1.0, "shape": "point"},
    ],
    "duration_min": 20,
}
TMS = {
    "kind": "tms", "head": "sphere", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
    "placement": {"center": [0, 0, 95], "direction": [0, 1, 0], "distance_mm": 4},
    "stimulator": {"didt_A_per_us": 100},
    "program": {"type": "rtms", "frequency_hz": 10, "pulses_per_train": 40, "trains": 75, "iti_s": 26,
                "intensity_pct_rmt": 120},
}


def _write(tmp_path, data, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _check_outputs(out, node_fields=("v",), rtol=1e-10):
    for name in ("fields.msh", "fields.vtu", "summary.json", "protocol.yaml"):
        assert (out / name).is_file(), name
    mesh, fields = read_mesh(out / "fields.msh")
    for key in ("E", "magnE", "J"):
        assert key in fields["element"]
    for key in node_fields:
        assert key in fields["node"]
    e = fields["element"]["E"]
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), fields["element"]["magnE"], rtol=1e-6)
    assert np.abs(mesh.nodes).max() > 90  # coordinates stay in mm
    for path in (out / "fields.msh", out / "fields.vtu"):  # other tools can read them too
        m = meshio.read(path)
        assert any("E" in k for k in m.cell_data) and "v" in m.point_data
    summary = json.loads((out / "summary.json").read_text())
    for key in ("stimsim_version", "inputs", "solver", "timings_s", "magnE_V_per_m"):
        assert key in summary
    assert summary["solver"]["relative_residual"] < 10 * rtol  # CG stopped where asked
    assert len(summary["inputs"]["head_sha256"]) == 64
    return summary


def test_demo(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    _check_outputs(tmp_path / "demo")


def test_run_tdcs(tmp_path):
    res = runner.invoke(app, ["run", str(_write(tmp_path, TDCS)), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = _check_outputs(tmp_path / "out")
    anode = summary["electrodes"][0]
    assert anode["delivered_current_mA"] == pytest.approx(1.0, rel=1e-6)
    assert anode["nominal_area_mm2"] > anode["meshed_area_mm2"] > 100
    stats = summary["magnE_V_per_m"]["csf"]
    assert stats["p50"] <= stats["p99"] <= stats["p99.9"] <= stats["max"]
    # a second run into the same folder needs --overwrite
    res = runner.invoke(app, ["run", str(_write(tmp_path, TDCS)), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_run_tms(tmp_path):
    res = runner.invoke(app, ["run", str(_write(tmp_path, TMS)), "--out", str(tmp_path / "tms")])
    assert res.exit_code == 0, res.output
    summary = _check_outputs(tmp_path / "tms", node_fields=("v", "dAdt"), rtol=1e-6)  # TMS default rtol
    assert summary["tms"]["program"]["total_pulses"] == 3000


def _bad(**changes):
    d = json.loads(json.dumps(TDCS))
    d.update(changes)
    return d


@pytest.mark.parametrize("data, needle", [
    (_bad(colour="red"), "colour"),
    (_bad(head="/nonexistent/head.msh"), "head"),
    (_bad(conductivities={4: -1}), "conductivities"),
    (_bad(electrodes=[dict(TDCS["electrodes"][0]), dict(TDCS["electrodes"][1], current_mA=-2)]), "sum to 0"),
    (_bad(electrodes=[dict(TDCS["electrodes"][0], position=[0, 0, 130]), TDCS["electrodes"][1]]),
     "35.0 mm from the scalp"),
    ("kind: tdcs\nelectrodes: [", "malformed YAML"),
])
def test_bad_input_exits_2_without_output(tmp_path, data, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    out = tmp_path / "never"
    res = runner.invoke(app, ["run", str(path), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert res.output.count("\n") <= 3  # one line, not a traceback
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_wrong_mesh_format_and_inverted_tets(tmp_path):
    (tmp_path / "head.msh").write_text("this is not a mesh\n")
    res = runner.invoke(app, ["run", str(_write(tmp_path, _bad(head="head.msh"))), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "error:" in res.output and not (tmp_path / "o").exists()

    from stimsim.mesh import write_msh
    from stimsim.simulation import resolve_head

    mesh, _ = read_mesh(resolve_head("sphere"))
    tets = mesh.tets.copy()
    tets[:10] = tets[:10][:, [1, 0, 2, 3]]  # invert 10 elements
    from stimsim.mesh import Mesh

    write_msh(tmp_path / "inverted.msh", Mesh(mesh.nodes, tets, mesh.tet_tags, mesh.tris, mesh.tri_tags))
    res = runner.invoke(app, ["run", str(_write(tmp_path, _bad(head="inverted.msh"))),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "inverted" in res.output and not (tmp_path / "o").exists()


def test_schema_command():
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    assert "TMSProtocol" in json.loads(res.output)["$defs"]


def test_check_exit_codes(tmp_path):
    ok = runner.invoke(app, ["check", str(_write(tmp_path, TDCS)), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["verdict"] in ("PASS", "WARN")
    strong = json.loads(json.dumps(TDCS))
    strong["electrodes"][0]["current_mA"], strong["electrodes"][1]["current_mA"] = 5.0, -5.0  # > 4 mA
    res = runner.invoke(app, ["check", str(_write(tmp_path, strong, "strong.yaml"))])
    assert res.exit_code == 1
    res = runner.invoke(app, ["check", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output


def test_summary_carries_safety_verdicts(tmp_path):
    res = runner.invoke(app, ["run", str(_write(tmp_path, TDCS)), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0
    safety = json.loads((tmp_path / "o" / "summary.json").read_text())["safety"]
    ids = {r["rule_id"] for r in safety["results"]}
    assert {"tes.current.total", "tes.field.brain_current_density"} <= ids


def test_leadfield_optimize_and_batch_commands(tmp_path):
    import numpy as np

    cap = tmp_path / "cap.tsv"
    i = np.arange(12) + 0.5
    z = 1 - i / 12
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    rows = [f"E{k}\t{x}\t{y}\t{w}" for k, (x, y, w) in enumerate(95 * np.column_stack([r * np.cos(phi),
                                                                                     r * np.sin(phi), z]))]
    cap.write_text("\n".join(rows + ["REF\t0\t0\t-95"]) + "\n")
    res = runner.invoke(app, ["leadfield", "sphere", "--positions", str(cap), "--reference", "REF",
                              "--out", str(tmp_path / "lf.npz")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["optimize", "tdcs", "--leadfield", str(tmp_path / "lf.npz"), "--head", "sphere",
                              "--target", "30,20,70", "--out", str(tmp_path / "best.yaml")])
    assert res.exit_code == 0, res.output
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    currents = [e["current_mA"] for e in best["electrodes"]]
    assert abs(sum(currents)) < 1e-9 and max(abs(c) for c in currents) <= 1.0 + 1e-9
    res = runner.invoke(app, ["optimize", "tdcs", "--leadfield", str(tmp_path / "lf.npz"), "--head", "sphere",
                              "--target", "0,0,300", "--out", str(tmp_path / "never.yaml")])
    assert res.exit_code == 2 and "no element" in res.output and not (tmp_path / "never.yaml").exists()
    res = runner.invoke(app, ["batch", str(tmp_path / "best.yaml"), "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0 and (tmp_path / "runs" / "best" / "summary.json").is_file()


def test_eeg_names_from_a_positions_file(tmp_path):
    (tmp_path / "caps.tsv").write_text("name\tx\ty\tz\nCz\t0\t0\t95\nT8\t95\t0\t0\n")
    p = dict(TDCS, positions="caps.tsv")
    p["electrodes"] = [dict(TDCS["electrodes"][0], position="cz"), dict(TDCS["electrodes"][1], position="T8")]
    res = runner.invoke(app, ["run", str(_write(tmp_path, p)), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    p["electrodes"][1] = dict(TDCS["electrodes"][1], position="T9")
    res = runner.invoke(app, ["run", str(_write(tmp_path, p)), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "T9" in res.output and not (tmp_path / "o2").exists()


def test_optimize_tms_cli_direction_and_output(tmp_path):
    from stimsim.protocol import load_protocol

    proto = _write(tmp_path, TMS)
    out = tmp_path / "best.yaml"
    res = runner.invoke(app, ["-q", "optimize", "tms", str(proto), "--target", "20,10,75", "--grid-radius", "10",
                              "--grid-step", "10", "--angles", "8", "--direction", "normal", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["roi_radius_mm"] == 5.0
    assert report["objective"].startswith("mean E . ") and report["evaluated"] == 5 * 8  # 360 degrees
    assert (tmp_path / "best_hotspot.png").read_bytes().startswith(b"\x89PNG")  # the hot-spot map beside --out
    # the mean of |E| bounds the mean of any component from above
    assert 0 < report["objective_V_per_m"] <= report["roi_mean_magnE_V_per_m"]
    best = load_protocol(out)
    np.testing.assert_allclose(best.placement.matrix, report["matrix"], atol=1e-6)
    import yaml

    written = yaml.safe_load(out.read_text())
    assert set(written["placement"]) == {"matrix"}  # no leftover centre/distance
    assert written["coil"] == {"file": "Magstim_70mm_Fig8.ccd"}  # no parametric winding fields beside a file
    bad = runner.invoke(app, ["optimize", "tms", str(proto), "--target", "20,10,75", "--direction", "1,2"])
    assert bad.exit_code == 2 and "--direction" in bad.output
    # the default output is a table that names the ROI radius given
    wide = runner.invoke(app, ["-q", "optimize", "tms", str(proto), "--target", "20,10,75", "--grid-radius", "0",
                               "--angles", "1", "--radius", "15"])
    assert wide.exit_code == 0, wide.output
    assert "ROI radius 15 mm" in wide.output and "mean |E| in the ROI" in wide.output
