"""Input that must be refused (or flagged), not run: absurd doses, YAML bombs, duplicate keys,
oversized, binary and non-UTF-8 files, bad positions files, conductivities for missing tags.

Every refusal is a StimsimError with one line that names the field or file; through the CLI it
is one ``error:`` line, exit code 2 and no output written.
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stimsim.cli import app
from stimsim.conductivity import conductivity_table, element_conductivities
from stimsim.errors import MAX_MESSAGE_CHARS, MAX_VALUE_CHARS, ProtocolError, StimsimError, shown
from stimsim.head.eeg import PositionsError, read_positions
from stimsim.protocol import load_protocol, validate_protocol
from stimsim.protocol.io import MAX_ALIASES, MAX_PROTOCOL_BYTES

runner = CliRunner()

TDCS = {
    "kind": "tdcs", "head": "sphere", "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
    "electrodes": [
        {"name": "anode", "position": [0, 0, 95], "current_mA": 1.0},
        {"name": "cathode", "position": [95, 0, 0], "current_mA": -1.0},
    ],
    "duration_min": 20,
}
TMS = {
    "kind": "tms", "head": "sphere", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
    "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]},
    "stimulator": {"didt_A_per_us": 100},
}

# the classic "billion laughs": 9 levels of 9 aliases, ~400 bytes that expand to 9^9 strings
BOMB = "kind: tdcs\n" + "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))


def _set(base, path, value):
    d = json.loads(json.dumps(base))
    cur = d
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return d


def _yaml(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output[:2000]
    assert lines[0].startswith("error: ")
    assert len(lines[0]) <= len("error: ") + MAX_MESSAGE_CHARS
    return lines[0]


def _cli_refuses(tmp_path, args):
    out = tmp_path / "never"
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output[:2000]
    line = _one_error_line(res.output)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    return line


# ---- 1. physically absurd values -------------------------------------------------------------------------
def _currents(value):
    d = _set(TDCS, ["electrodes", 0, "current_mA"], value)
    d["electrodes"][1]["current_mA"] = -value if isinstance(value, float) else value
    return d


@pytest.mark.parametrize("data, needles", [
    (_currents(1e30), ["electrodes[0].current_mA", "1000 mA", "ECT"]),
    (_currents(1001.0), ["current_mA", "1000 mA"]),
    (_currents(float("nan")), ["current_mA", "finite"]),
    (_currents(float("inf")), ["current_mA", "finite"]),
    (_currents("1e30"), ["current_mA", "1000 mA"]),  # as YAML reads 1e30: a string pydantic converts
    (_set(TDCS, ["electrodes", 0, "current_mA"], 10**400), ["current_mA", "1000 mA"]),
    (_set(TDCS, ["electrodes", 0, "position"], [0, float("nan"), 95]), ["position[1]", "finite"]),
    (_set(TDCS, ["electrodes", 0, "position"], [0, 1e300, 95]), ["position[1]", "10000 mm"]),
    (_set(TDCS, ["electrodes", 0, "direction"], [0, 0, 0]), ["direction", "zero vector"]),
    (_set(_set(TDCS, ["electrodes", 0, "shape"], "disc"), ["electrodes", 0, "diameter_mm"], 1e9),
     ["diameter_mm", "1 m"]),
    (_set(TDCS, ["duration_min"], 1e9), ["duration_min", "10080 min"]),
    (_set(TDCS, ["duration_min"], float("inf")), ["duration_min", "finite"]),
    (_set(TDCS, ["ramp_up_s"], 1e300), ["ramp_up_s", "3600 s"]),
    (_set(TDCS, ["sessions"], 10**30), ["sessions", "10000"]),
    (_set(TDCS, ["phase_deg"], float("nan")), ["phase_deg", "finite"]),
    (_set(_set(TDCS, ["kind"], "tacs"), ["frequency_hz"], 1e12), ["frequency_hz", "quasi-static"]),
    (_set(TDCS, ["conductivities"], {3: 1e300}), ["conductivities[3]", "1e+08 S/m"]),
    (_set(TDCS, ["conductivities"], {3: 1e-300}), ["conductivities[3]", "1e-12"]),
    (_set(TDCS, ["conductivities"], {"csf": 1.0, 3: 2.0}), ["'csf' and 3", "tag 3"]),
    (_set(TDCS, ["solver"], {"rtol": 1e-300}), ["solver.rtol", "double precision"]),
    (_set(TDCS, ["head"], "head\0.msh"), ["head", "control characters"]),
    (_set(TDCS, ["positions"], "x" * 5000), ["positions", "4096"]),
    (_set(TMS, ["stimulator", "didt_A_per_us"], 1e300), ["stimulator.didt_A_per_us", "10000 A/µs", "inductance"]),
    (_set(TMS, ["stimulator", "didt_A_per_us"], float("inf")), ["didt_A_per_us", "finite"]),
    (_set(TMS, ["stimulator"], {"percent_mso": float("nan")}), ["percent_mso", "finite"]),
    (_set(TMS, ["stimulator"], {"percent_mso": 101}), ["percent_mso", "100 %"]),
    (_set(TMS, ["stimulator"], {"peak_current_A": 1e30, "period_us": 280}), ["peak_current_A", "50000 A"]),
    (_set(TMS, ["stimulator"], {"peak_current_A": 40000, "period_us": 1}), ["dI/dt of at least", "A/µs"]),
    (_set(TMS, ["stimulator"], {"peak_current_A": 5000, "period_us": 1e-300}), ["period_us", ">= 1 µs"]),
    (_set(TMS, ["stimulator"], {"peak_current_A": 5000, "period_us": 280, "damping_per_us": 1e300}),
     ["damping_per_us", "1/µs"]),
    (_set(TMS, ["coil"], {"file": "Magstim_70mm_Fig8.ccd", "didt_max_A_per_us": 1e300}),
     ["coil.didt_max_A_per_us", "A/µs"]),
    (_set(TMS, ["coil"], {"type": "figure8", "turns": 10**9}), ["coil.turns", "1000"]),
    (_set(TMS, ["placement"], {"matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1e30], [0, 0, 0, 1]]}),
     ["placement.matrix[2][3]", "mm"]),
    (_set(TMS, ["placement", "direction"], [0, 0, 0]), ["placement.direction", "zero vector"]),
    (_set(TMS, ["placement", "distance_mm"], float("nan")), ["distance_mm", "finite"]),
    (_set(TMS, ["program"], {"type": "rtms", "frequency_hz": 1e6, "pulses_per_train": 10}),
     ["program.frequency_hz", "1000 Hz"]),
    (_set(TMS, ["program"], {"type": "rtms", "frequency_hz": 10, "pulses_per_train": 100000, "trains": 100,
                             "iti_s": 10}), ["pulses in one session", "18 000"]),
    (_set(TMS, ["program"], {"type": "rtms", "frequency_hz": 0.001, "pulses_per_train": 100000}),
     ["session would last", "days"]),
    (_set(TMS, ["program"], {"type": "single", "pulses": 10**30}), ["program.pulses", "100000"]),
    (_set(TMS, ["program"], {"type": "rtms", "frequency_hz": 10, "pulses_per_train": 40,
                             "intensity_pct_rmt": 1e9}), ["intensity_pct_rmt", "1000 %"]),
])
def test_absurd_values_are_refused_with_the_bound_and_its_reason(data, needles):
    with pytest.raises(ProtocolError) as info:
        validate_protocol(data)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize("data", [
    _currents(900.0),  # ECT
    _currents(0.001),  # 1 µA: animal work
    _set(_set(TDCS, ["kind"], "tacs"), ["frequency_hz"], 2000.0),  # temporal interference carrier
    _set(_set(_set(TDCS, ["kind"], "tacs"), ["frequency_hz"], 1e5), ["phase_deg"], -180),
    _set(_set(TDCS, ["kind"], "tacs"), ["frequency_hz"], 0.75),  # slow oscillation
    _set(TDCS, ["duration_min"], 24 * 60.0),  # day-long animal stimulation
    _set(TDCS, ["conductivities"], {3: 1.0, 4: 0.01, 5: 1.0, 100: 5.8e7, 500: 1e-10}),  # copper, insulator
    _set(TDCS, ["sessions"], 500),
    _set(TMS, ["stimulator", "didt_A_per_us"], 1000.0),  # small animal coil
    _set(TMS, ["stimulator"], {"peak_current_A": 8000, "period_us": 280, "damping_per_us": 0.005}),
    _set(TMS, ["stimulator"], {"peak_current_A": 3000, "period_us": 20, "waveform": "monophasic"}),  # cTMS
    _set(TMS, ["coil"], {"type": "circular", "outer_diameter_mm": 25, "turns": 200}),  # rodent coil
    _set(TMS, ["program"], {"type": "rtms", "frequency_hz": 666.7, "pulses_per_train": 4}),  # quadripulse
    _set(TMS, ["program"], {"type": "itbs", "intensity_pct_rmt": 90, "trains": 60}),  # SAINT: 1800 pulses
    _set(TMS, ["program"], {"type": "single", "pulses": 500, "interval_s": 5}),  # motor mapping
    {**TMS, "sessions": 50, "sessions_per_day": 10},  # accelerated
])
def test_every_legitimate_extreme_passes(data):
    validate_protocol(data)


def test_schema_states_the_bounds():
    from stimsim.protocol import protocol_json_schema

    props = protocol_json_schema()["$defs"]["Electrode"]["properties"]["current_mA"]
    assert props["maximum"] == 1000 and props["minimum"] == -1000


@pytest.mark.parametrize("text, needle", [
    ("stimulator: {didt_A_per_us: 1e300}", "didt_A_per_us"),
    ("stimulator: {didt_A_per_us: 1.0e+300}", "didt_A_per_us"),
    ("stimulator: {didt_A_per_us: .nan}", "finite"),
])
def test_cli_refuses_an_absurd_didt(tmp_path, text, needle):
    body = yaml.safe_dump({k: v for k, v in TMS.items() if k != "stimulator"}) + text + "\n"
    line = _cli_refuses(tmp_path, ["run", str(_yaml(tmp_path, body))])
    assert needle in line and "A/µs" in line or "finite" in line
    assert "mesh" not in line


def test_cli_refuses_an_absurd_current(tmp_path):
    path = _yaml(tmp_path, yaml.safe_dump(_currents(1e30)))
    line = _cli_refuses(tmp_path, ["run", str(path)])
    assert "current_mA" in line and "1000 mA" in line


# ---- 2. YAML bombs, size, message length ------------------------------------------------------------------
def test_billion_laughs_is_refused_quickly_with_a_short_message(tmp_path):
    path = _yaml(tmp_path, BOMB)
    assert path.stat().st_size < 600
    with pytest.raises(ProtocolError, match="alias") as info:
        load_protocol(path)
    assert len(str(info.value)) < 400


def test_billion_laughs_inside_a_valid_protocol_is_refused(tmp_path):
    body = BOMB.replace("kind: tdcs\n", "") + yaml.safe_dump(_set(TDCS, ["electrodes", 0, "name"], "X")).replace(
        "name: X", "name: *l8")
    with pytest.raises(ProtocolError, match="expand") as info:
        load_protocol(_yaml(tmp_path, body))
    assert len(str(info.value)) < 400


def test_billion_laughs_through_the_cli_subprocess(tmp_path):
    path = _yaml(tmp_path, BOMB)
    out = tmp_path / "x"
    res = subprocess.run([sys.executable, "-m", "stimsim.cli", "run", str(path), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    line = _one_error_line(res.stdout + res.stderr)
    assert "alias" in line and len(line) < 400
    assert not out.exists()


def test_too_many_aliases(tmp_path):
    body = "kind: tdcs\nx: &x 1\nys: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(ProtocolError, match=f"more than {MAX_ALIASES} aliases"):
        load_protocol(_yaml(tmp_path, body))


def test_recursive_alias(tmp_path):
    with pytest.raises(ProtocolError, match="recursive"):
        load_protocol(_yaml(tmp_path, "kind: tdcs\nelectrodes: &e [*e, *e]\n"))


def test_a_few_aliases_and_merge_keys_still_work(tmp_path):
    body = """\
kind: tdcs
head: sphere
pad: &pad {shape: disc, diameter_mm: 25}
"""
    with pytest.raises(ProtocolError, match="pad: unknown key"):  # parsed fine, then validated
        load_protocol(_yaml(tmp_path, body + "electrodes: []\n"))
    body = """\
kind: tdcs
head: sphere
electrodes:
  - &a {name: anode, position: [0, 0, 95], current_mA: 1.0, shape: disc, diameter_mm: 25}
  - <<: *a
    name: cathode
    position: [95, 0, 0]
    current_mA: -1.0
"""
    p = load_protocol(_yaml(tmp_path, body))
    assert p.electrodes[1].diameter_mm == 25 and p.electrodes[1].current_mA == -1.0


def test_deep_nesting_and_huge_integers(tmp_path):
    with pytest.raises(ProtocolError, match="nested more than"):
        load_protocol(_yaml(tmp_path, "kind: tdcs\nx: " + "[" * 5000 + "]" * 5000 + "\n"))
    with pytest.raises(ProtocolError, match="integer of 5000 characters"):
        load_protocol(_yaml(tmp_path, "kind: tdcs\nsessions: " + "9" * 5000 + "\n"))


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = _yaml(tmp_path, yaml.safe_dump(TDCS) + "#" * MAX_PROTOCOL_BYTES + "\n")
    with pytest.raises(ProtocolError, match="larger than 1 MiB"):
        load_protocol(path)


def test_long_values_are_capped_in_messages(tmp_path):
    data = _set(TDCS, ["electrodes", 0, "shape"], "x" * 100_000)
    path = _yaml(tmp_path, yaml.safe_dump(data, width=10**6))
    with pytest.raises(ProtocolError, match="shape") as info:
        load_protocol(path)
    msg = str(info.value)
    assert len(msg) < 3 * MAX_VALUE_CHARS + len(str(path)) + 200 and "..." in msg
    line = _cli_refuses(tmp_path, ["run", str(path)])
    assert len(line) < 3 * MAX_VALUE_CHARS + len(str(path)) + 200


def test_many_problems_are_summarised(tmp_path):
    electrodes = [{"name": f"e{i}", "position": [0, 0, 95], "current_mA": "x" * 1000} for i in range(500)]
    with pytest.raises(ProtocolError, match="more problems") as info:
        validate_protocol(_set(TDCS, ["electrodes"], electrodes))
    assert len(str(info.value)) <= MAX_MESSAGE_CHARS


def test_every_stimsim_error_is_one_bounded_line():
    err = StimsimError("a\nb" + "c" * 10**6)
    assert "\n" not in str(err) and len(str(err)) == MAX_MESSAGE_CHARS and str(err).endswith("…")
    assert len(shown(list(range(10**6)))) <= MAX_VALUE_CHARS
    nested = []
    nested.append(nested)
    assert len(shown(nested)) <= MAX_VALUE_CHARS


# ---- 3. duplicate keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, key, line", [
    ("kind: tdcs\nduration_min: 20\nhead: sphere\nduration_min: 30\n", "duration_min", 4),
    ("kind: tdcs\nelectrodes:\n  - name: a\n    current_mA: 1\n    current_mA: 2\n", "current_mA", 5),
    ("kind: tdcs\nelectrodes: [{name: a, name: b}]\n", "name", 2),
    ("kind: tms\nstimulator:\n  didt_A_per_us: 100\n  didt_A_per_us: 1e300\n", "didt_A_per_us", 4),
    ("kind: tdcs\nconductivities: {3: 1.0, 3: 2.0}\n", "3", 2),
])
def test_duplicate_keys_are_refused_with_key_and_line(tmp_path, text, key, line):
    with pytest.raises(ProtocolError) as info:
        load_protocol(_yaml(tmp_path, text))
    msg = str(info.value)
    assert f"line {line}" in msg and "duplicate key" in msg and key in msg, msg


def test_duplicate_key_through_the_cli(tmp_path):
    body = yaml.safe_dump(TDCS) + "duration_min: 40\n"
    line = _cli_refuses(tmp_path, ["run", str(_yaml(tmp_path, body))])
    assert "duplicate key 'duration_min'" in line


# ---- 4. conductivities for tags the mesh does not have ------------------------------------------------------
def test_conductivity_for_a_missing_tag_is_named_in_a_warning(caplog):
    table = conductivity_table({3: 1.0, 7: 0.3, "muscle": 0.2})
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        sigma = element_conductivities(np.array([3, 4, 5, 3]), table)
    assert sigma.tolist() == [1.0, 0.01, 0.465, 1.0]
    messages = [r.getMessage() for r in caplog.records if r.name == "stimsim"]
    assert "conductivities: tag 7 is not in the head mesh (tags 3, 4, 5); ignored" in messages
    assert "conductivities: 'muscle' (tag 10) is not in the head mesh (tags 3, 4, 5); ignored" in messages
    assert len(messages) == 2  # nothing about tags the protocol did not set


def test_no_warning_when_every_given_tag_is_in_the_mesh(caplog):
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        element_conductivities(np.array([3, 4, 5]), conductivity_table({3: 1.0, 4: 0.01, 5: 1.0}))
        element_conductivities(np.array([3, 4, 5]), {3: 1.0, 4: 0.01, 5: 1.0})  # a plain dict works too
    assert not [r for r in caplog.records if r.name == "stimsim"]


# ---- 5. positions files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, needles", [
    ("cap.tsv", bytes(range(256)) * 8, ["binary"]),
    ("cap.csv", b"\x89PNG\r\n\x1a\n" + bytes(200), ["binary"]),
    ("cap.tsv", "name x y z\nCz 0 0 95\nC3 nan 0 80\n", [":3", "'C3'", "not finite"]),
    ("cap.csv", "Electrode,0,0,95,Cz\nElectrode,inf,0,80,C3\n", [":2", "'C3'", "not finite"]),
    ("cap.elc", "Positions\n0 0 95\n1 nan 2\nLabels\nCz C3\n", ["'C3'", "not finite"]),
    ("cap.tsv", "name x y z\nCz 0 0 95\nC3 -50 0 80\nCz 0 10 95\n", [":4", "'Cz'", "twice", "lines 2 and 4"]),
    ("cap.tsv", "name x y z\nCz 0 0 95\nCZ 0 10 95\n", ["'Cz' and 'CZ'", "case"]),
    ("cap.csv", "Electrode,0,0,95,Cz\nElectrode,0,0,1e12,C3\n", ["'C3'", "mm"]),
    ("cap.tsv", "name x y z\nCz 0 0 95\nC3 x 0 80\n", [":3", "name x y z"]),
    ("cap.tsv", "name x y z\nCz 0 0 95 # caf\xe9\n".encode("latin-1"), ["UTF-8"]),
], ids=["binary", "png", "nan", "inf", "elc-nan", "duplicate", "case", "absurd", "unreadable-row", "latin-1"])
def test_bad_positions_files(tmp_path, name, content, needles):
    path = _yaml(tmp_path, content, name=name)
    with pytest.raises(PositionsError) as info:
        read_positions(path)
    msg = str(info.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg
    assert "\n" not in msg and len(msg) < 600


def test_positions_same_electrode_listed_twice_at_one_point_is_fine(tmp_path):
    # SimNIBS caps list Iz both as an Electrode and as a Fiducial row
    path = _yaml(tmp_path, "Electrode,0,0,95,Cz\nElectrode,0,-110,-30,Iz\nFiducial,0,-110,-30,Iz\n", name="cap.csv")
    assert sorted(read_positions(path)) == ["Cz", "Iz"]


def test_positions_path_problems(tmp_path):
    (tmp_path / "dir.tsv").mkdir()
    with pytest.raises(PositionsError, match="is a directory"):
        read_positions(tmp_path / "dir.tsv")
    plain = _yaml(tmp_path, "x", name="plain.txt")
    with pytest.raises(PositionsError, match="cannot read") as info:
        read_positions(plain / "cap.tsv")  # a path through a file: an OSError other than 'not found'
    assert str(plain / "cap.tsv") in str(info.value)
    with pytest.raises(PositionsError, match="not found"):
        read_positions(tmp_path / "missing.tsv")


def test_leadfield_cli_refuses_a_bad_positions_file(tmp_path):
    cap = _yaml(tmp_path, "name x y z\nREF 0 0 -95\nCz 0 0 95\nCz 0 10 95\n", name="cap.tsv")
    line = _cli_refuses(tmp_path, ["leadfield", "sphere", "--positions", str(cap), "--reference", "REF"])
    assert str(cap) in line and "'Cz'" in line


def test_protocol_positions_file_with_nan_is_refused(tmp_path):
    _yaml(tmp_path, "name x y z\nCz 0 0 95\nT8 nan 0 0\n", name="caps.tsv")
    data = {**TDCS, "positions": "caps.tsv",
            "electrodes": [dict(TDCS["electrodes"][0], position="Cz"), dict(TDCS["electrodes"][1], position="T8")]}
    line = _cli_refuses(tmp_path, ["run", str(_yaml(tmp_path, yaml.safe_dump(data)))])
    assert "caps.tsv:3" in line and "'T8'" in line


# ---- 6. protocol files that are not text -----------------------------------------------------------------------
@pytest.mark.parametrize("content, needle", [
    (bytes(range(256)) * 4, "binary"),
    (b"\x7fELF\x02\x01\x01" + bytes(64), "binary"),
    ("kind: tdcs\nname: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("kind: tdcs\n".encode("utf-16"), "UTF-16"),
], ids=["binary", "elf", "latin-1", "utf-16"])
def test_protocol_files_that_are_not_utf8_text(tmp_path, content, needle):
    path = _yaml(tmp_path, content)
    with pytest.raises(ProtocolError, match=needle) as info:
        load_protocol(path)
    assert str(path) in str(info.value)
    line = _cli_refuses(tmp_path, ["run", str(path)])
    assert needle in line


def test_protocol_path_problems(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ProtocolError, match="is a directory"):
        load_protocol(tmp_path / "dir.yaml")
    line = _cli_refuses(tmp_path, ["run", str(tmp_path / "dir.yaml")])
    assert str(tmp_path / "dir.yaml") in line
    plain = _yaml(tmp_path, "x", name="plain.txt")
    with pytest.raises(ProtocolError, match="cannot read"):
        load_protocol(plain / "p.yaml")
    with pytest.raises(ProtocolError, match="not found"):
        load_protocol(tmp_path / "missing.yaml")


def test_utf8_with_bom_is_fine(tmp_path):
    path = _yaml(tmp_path, b"\xef\xbb\xbf" + yaml.safe_dump(TDCS).encode())
    assert load_protocol(path).kind == "tdcs"
