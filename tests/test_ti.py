"""Temporal interference: the envelope formula against brute force, TI runs against tDCS runs, protocols, CLI."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from typer.testing import CliRunner

from stimsim.cli import app
from stimsim.errors import ProtocolError
from stimsim.mesh import Mesh, read_mesh
from stimsim.protocol import protocol_json_schema, validate_protocol
from stimsim.safety import check
from stimsim.simulation import simulate
from stimsim.ti import cortical_normals, envelope_along, max_envelope, peak_combined_field

# ----------------------------------------------------------------------------------------- brute force

#: carrier phase theta and relative (beat) phase phi over one envelope period: t -> (w1 t, (w2 - w1) t)
#: runs through every (theta, phi) for carriers at distinct frequencies.  Both grids hold 0 and pi.
THETA = np.linspace(0, 2 * np.pi, 64, endpoint=False)
PHI = np.linspace(0, 2 * np.pi, 128, endpoint=False)


def modulation_sampled(a1, a2):
    """Envelope modulation (max - min of the envelope over a beat period) of a1 cos(theta) + a2 cos(theta + phi),
    the field component along a direction, sampled in time; a1, a2: (d,) components."""
    out = np.empty(len(a1))
    for s in range(0, len(a1), 256):
        x1, x2 = a1[s:s + 256, None, None], a2[s:s + 256, None, None]
        signal = np.abs(x1 * np.cos(THETA)[None, None] + x2 * np.cos(THETA[None, None] + PHI[None, :, None]))
        env = signal.max(axis=2)  # envelope at each beat phase: the largest |field| over a carrier cycle
        out[s:s + 256] = env.max(axis=1) - env.min(axis=1)
    return out


def sphere_grid(n):
    """n directions on the unit sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z ** 2)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def brute_force_max(e1, e2, n_grid=4000):
    """(largest sampled modulation on a direction grid, then refined by Nelder-Mead; modulations on the grid)."""
    dirs = sphere_grid(n_grid)
    mod = modulation_sampled(dirs @ e1, dirs @ e2)
    best = dirs[np.argmax(mod)]

    def neg(angles):
        t, p = angles
        n = np.array([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)])
        return -modulation_sampled(np.array([n @ e1]), np.array([n @ e2]))[0]

    start = [np.arccos(np.clip(best[2], -1, 1)), np.arctan2(best[1], best[0])]
    res = minimize(neg, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 2000})
    return max(-res.fun, mod.max()), mod


def _pairs():
    rng = np.random.default_rng(7)
    e = rng.normal(size=3)
    u = np.cross(e, rng.normal(size=3))
    cases = {
        "parallel": (e, 0.4 * e),
        "antiparallel": (e, -0.7 * e),
        "identical": (e, e.copy()),
        "orthogonal": (e, 0.5 * np.linalg.norm(e) * u / np.linalg.norm(u)),
        "orthogonal equal": (e, np.linalg.norm(e) * u / np.linalg.norm(u)),
        "weaker first": (0.3 * e, e + 0.5 * u / np.linalg.norm(u)),
        "one zero": (e, np.zeros(3)),
    }
    for k in range(14):
        a, b = rng.normal(size=3), rng.normal(size=3) * rng.uniform(0.1, 1.5)
        cases[f"random {k}"] = (a, b)
    return cases


PAIRS = _pairs()


@pytest.mark.parametrize("name", list(PAIRS))
def test_max_envelope_equals_brute_force_over_directions_and_time(name):
    e1, e2 = PAIRS[name]
    formula = float(max_envelope(e1, e2)[0])
    brute, on_grid = brute_force_max(e1, e2)
    scale = max(np.linalg.norm(e1), np.linalg.norm(e2))
    assert on_grid.max() <= formula + 1e-9 * scale  # no direction beats the formula
    assert brute == pytest.approx(formula, abs=1e-5 * scale)  # and the best direction reaches it
    # symmetric in the two channels and in either carrier's sign
    for a, b in ((e2, e1), (e1, -e2), (-e1, e2)):
        assert float(max_envelope(a, b)[0]) == pytest.approx(formula, abs=1e-12 * scale)


def test_both_cases_of_the_formula_are_exercised():
    first = second = 0
    for e1, e2 in PAIRS.values():
        a, b = (e1, e2) if np.linalg.norm(e1) >= np.linalg.norm(e2) else (e2, e1)
        if np.linalg.norm(b) ** 2 <= abs(a @ b):
            first += 1
        else:
            second += 1
    assert first >= 4 and second >= 4


def test_max_envelope_closed_forms():
    e = np.array([[3.0, 0, 0]])
    assert max_envelope(e, 0.5 * e)[0] == pytest.approx(3.0)  # parallel: 2 |E2|
    assert max_envelope(e, -0.5 * e)[0] == pytest.approx(3.0)  # antiparallel: the same
    assert max_envelope(e, e)[0] == pytest.approx(6.0)  # identical channels: 2 |E|
    assert max_envelope([1.0, 0, 0], [0, 1.0, 0])[0] == pytest.approx(np.sqrt(2))  # orthogonal, equal
    assert max_envelope([1.0, 0, 0], [0, 0.5, 0])[0] == pytest.approx(1 / np.sqrt(1.25))
    assert max_envelope(np.zeros(3), np.zeros(3))[0] == 0


def test_envelope_along_a_direction_in_real_time():
    """|(E1 cos w1 t + E2 cos w2 t) . n| sampled in time (200 and 201 Hz, one 1 s envelope period)."""
    rng = np.random.default_rng(3)
    f1, f2, per_cycle = 200.0, 201.0, 64
    t = np.arange(int(f1) * per_cycle) / (f1 * per_cycle)
    for _ in range(20):
        e1, e2, n = rng.normal(size=(3, 3))
        n /= np.linalg.norm(n)
        signal = np.abs((e1 @ n) * np.cos(2 * np.pi * f1 * t) + (e2 @ n) * np.cos(2 * np.pi * f2 * t))
        env = signal.reshape(int(f1), per_cycle).max(axis=1)  # largest |field| in each carrier cycle
        expected = envelope_along(e1, e2, n)[0]
        assert expected == pytest.approx(2 * min(abs(e1 @ n), abs(e2 @ n)))
        assert env.max() - env.min() == pytest.approx(expected, abs=0.03 * max(abs(e1 @ n), abs(e2 @ n)))


def test_peak_combined_field_is_the_peak_over_phases():
    rng = np.random.default_rng(5)
    fields = rng.normal(size=(3, 50, 3))
    peak = np.linalg.norm(peak_combined_field(fields), axis=1)
    c = np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False))  # holds +-1
    cs = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    sampled = np.linalg.norm(np.einsum("pk,kmd->pmd", cs, fields), axis=2).max(axis=0)
    np.testing.assert_allclose(peak, sampled, rtol=1e-12)


# ----------------------------------------------------------------------------------------- runs on the sphere

PADS = {"a1": [67.2, 0, 67.2], "b1": [67.2, 0, -67.2], "a2": [-67.2, 0, 67.2], "b2": [-67.2, 0, -67.2]}


def _pad(name, current):
    return {"name": name, "position": PADS[name], "current_mA": current, "shape": "disc", "diameter_mm": 20}


def _ti(**kw):
    return validate_protocol({
        "kind": "ti", "head": "sphere", "duration_min": 20,
        "channels": [{"frequency_hz": 2000, "electrodes": [_pad("a1", 1.0), _pad("b1", -1.0)]},
                     {"frequency_hz": 2010, "electrodes": [_pad("a2", 1.0), _pad("b2", -1.0)]}], **kw})


def _tdcs(currents, order=("a1", "b1", "a2", "b2")):
    return validate_protocol({"kind": "tdcs", "head": "sphere",
                              "electrodes": [_pad(n, currents.get(n, 0.0)) for n in order]})


@pytest.fixture(scope="module")
def ti_result():
    return simulate(_ti(envelope_direction=[0, 0, 1]))


def test_channels_equal_tdcs_runs_with_every_pad_present(ti_result):
    """Each channel's field is a tDCS run of its pads with the other channel's pads present at 0 mA."""
    for k, (a, b) in enumerate((("a1", "b1"), ("a2", "b2"))):
        for order in (("a1", "b1", "a2", "b2"), ("b2", "a2", "a1", "b1")):  # reference pad changes too
            tdcs = simulate(_tdcs({a: 1.0, b: -1.0}, order))
            scale = np.abs(tdcs.E).max()
            np.testing.assert_allclose(ti_result.channel_E[k], tdcs.E, rtol=0, atol=1e-7 * scale)
    both = simulate(_tdcs({"a1": 1.0, "b1": -1.0, "a2": 1.0, "b2": -1.0}))
    np.testing.assert_allclose(ti_result.channel_E.sum(axis=0), both.E, rtol=0, atol=1e-7 * np.abs(both.E).max())
    # the other channel's pads float: no net current through them
    assert max(ti_result.floating_currents_A.values()) < 1e-9 * 1e-3
    for name, current in ti_result.electrode_currents_A.items():
        assert current == pytest.approx(1e-3 if name.startswith("a") else -1e-3, rel=1e-6)


def test_envelope_fields_of_a_run(ti_result):
    e1, e2 = ti_result.channel_E
    env = ti_result.envelope_max()
    m1, m2 = np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1)
    # never more than twice the weaker field, never less than the envelope along any direction
    assert np.all(env <= 2 * np.minimum(m1, m2) * (1 + 1e-12))
    rng = np.random.default_rng(0)
    for n in rng.normal(size=(50, 3)):
        assert np.all(envelope_along(e1, e2, n) <= env * (1 + 1e-9) + 1e-15)
    # where the two channels' fields are parallel or antiparallel (within 0.8 degrees; the symmetric
    # montage's mid-plane z = 0, where both point along z), 2 min(|E1|, |E2|)
    cos = np.abs(np.einsum("ij,ij->i", e1, e2)) / (m1 * m2)
    parallel = cos > 1 - 1e-4
    assert parallel.sum() >= 100
    np.testing.assert_allclose(env[parallel], 2 * np.minimum(m1, m2)[parallel], rtol=1e-9)
    along_z = 2 * np.minimum(np.abs(e1[:, 2]), np.abs(e2[:, 2]))
    np.testing.assert_allclose(ti_result.envelopes[(0, 1)]["TI_dir"], along_z)
    # the combined field's peak: |E1 + E2| or |E1 - E2|, whichever is larger
    np.testing.assert_allclose(ti_result.magnE, np.maximum(np.linalg.norm(e1 + e2, axis=1),
                                                           np.linalg.norm(e1 - e2, axis=1)))
    assert ti_result.cortical_normals is None and "no grey matter" in ti_result.cortical_normals_note


def test_cortical_normals_are_radial_in_a_spherical_cortex(sphere3_mesh):
    """The sphere relabelled as white matter (r < 85 mm), grey matter (85-90) and CSF (90-95)."""
    from stimsim.head_model import HeadModel

    tags = np.select([sphere3_mesh.tet_tags == 3, sphere3_mesh.tet_tags == 4], [1, 2], 3)
    mesh = Mesh(sphere3_mesh.nodes, sphere3_mesh.tets, tags, sphere3_mesh.tris, sphere3_mesh.tri_tags)
    head = HeadModel.from_mesh(mesh)
    normals, note = cortical_normals(head.mesh, head.geometry)
    gm = tags == 2
    assert np.all(np.isfinite(normals[gm])) and np.all(np.isnan(normals[~gm]))
    radial = mesh.centroids[gm] / np.linalg.norm(mesh.centroids[gm], axis=1)[:, None]
    cos = np.einsum("ij,ij->i", normals[gm], radial)
    assert np.median(cos) > 0.98 and np.mean(cos > 0.9) > 0.9, (np.median(cos), note)


# ----------------------------------------------------------------------------------------- protocols


def _data():
    return {"kind": "ti", "channels": [
        {"frequency_hz": 2000, "electrodes": [_pad("a1", 1.0), _pad("b1", -1.0)]},
        {"frequency_hz": 2010, "electrodes": [_pad("a2", 1.0), _pad("b2", -1.0)]}]}


def _set(path, value):
    def edit(d):
        *head, last = path
        for key in head:
            d = d[key]
        d[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(["channels", 1, "frequency_hz"], 2000), "equal carriers give no envelope"),
    (_set(["channels", 1, "electrodes", 0, "current_mA"], 2.0), "channels[1]: channel 'ch2': electrode currents "
                                                                "must sum to 0 mA"),
    (_set(["channels", 1, "electrodes", 0, "name"], "a1"), "electrode names (over all channels) must be unique"),
    (_set(["channels", 1, "name"], "ch1"), "channel names must be unique"),
    (lambda d: d["channels"].pop(), "channels: List should have at least 2 items"),
    (lambda d: d["channels"].extend([d["channels"][0]] * 8), "channels: List should have at most 8 items"),
    (_set(["channels", 0, "frequency_hz"], 5e6), "channels[0].frequency_hz: must be at most 1000000 Hz"),
    (_set(["channels", 0, "electrodes", 0, "current_mA"], 2000.0), "must be between -1000 and 1000 mA"),
    (_set(["channels", 0, "frequency_hz"], float("nan")), "channels[0].frequency_hz"),
    (_set(["frequency_hz"], 10), "frequency_hz: unknown key"),
    (_set(["envelope_direction"], [0, 0, 0]), "envelope_direction: must not be the zero vector"),
])
def test_protocol_errors(edit, message):
    data = _data()
    edit(data)
    with pytest.raises(ProtocolError) as err:
        validate_protocol(data)
    assert message in str(err.value)


def test_protocol_defaults_and_schema():
    p = validate_protocol(_data())
    assert [c.name for c in p.channels] == ["ch1", "ch2"]
    assert p.envelope_frequencies_hz() == {("ch1", "ch2"): 10.0}
    assert [e.name for e in p.electrodes] == ["a1", "b1", "a2", "b2"]
    schema = protocol_json_schema()
    assert schema["discriminator"]["mapping"]["ti"].endswith("TIProtocol")
    assert "frequency_hz" in schema["$defs"]["TIChannel"]["required"]


def test_safety_checks_each_channel_and_says_no_ti_limit_is_known():
    report = check(_ti())
    rows = {(r.rule_id, r.subject): r for r in report.results}
    assert {s for (rid, s) in rows if rid == "tes.current.electrode"} == {"a1", "b1", "a2", "b2"}
    assert {s for (rid, s) in rows if rid == "tacs.frequency"} == {"ch1", "ch2"}
    assert rows[("tes.current.total", None)].value == pytest.approx(2.0)
    note = rows[("ti.specific_limits", None)]
    assert note.verdict == "NOT_CHECKED" and "temporal interference" in note.reason
    assert report.verdict != "FAIL"
    # tDCS limits are borrowed as indicative bounds: beyond them WARN, never FAIL
    loud = _data()
    for c in loud["channels"]:
        c["electrodes"][0]["current_mA"], c["electrodes"][1]["current_mA"] = 5.0, -5.0
    loud = check(validate_protocol(loud))
    over = [r for r in loud.results if r.rule_id in ("tes.current.electrode", "tes.current.total")]
    assert over and all(r.verdict == "WARN" for r in over)


# ----------------------------------------------------------------------------------------- command line


def test_cli_run_writes_the_ti_fields(tmp_path):
    import yaml

    proto = tmp_path / "ti.yaml"
    data = _data()
    data["envelope_direction"] = [0, 0, 1]
    proto.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(proto), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "ti"
    (pair,) = summary["ti"]["envelopes"]
    assert pair["envelope_frequency_hz"] == 10.0 and pair["channels"] == ["ch1", "ch2"]
    assert pair["TImax"]["field"] == "TImax" and "csf" in pair["TImax"]["V_per_m"]
    assert any(r["rule_id"] == "ti.specific_limits" for r in summary["safety"]["results"])
    for name in ("fields.msh", "fields.vtu"):
        mesh, fields = read_mesh(out / name)
        element = fields["element"]
        for key in ("E", "magnE", "E_ch1", "E_ch2", "magnE_ch1", "TImax", "TI_dir"):
            assert key in element, (name, sorted(element))
        assert {"v", "v_ch1", "v_ch2"} <= set(fields["node"])
    mesh, fields = read_mesh(out / "fields.msh")
    e = fields["element"]
    np.testing.assert_allclose(e["TImax"], max_envelope(e["E_ch1"], e["E_ch2"]), rtol=1e-12, atol=1e-15)
    assert "kind: ti" in (out / "protocol.yaml").read_text()
