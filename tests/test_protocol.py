import json

import pytest
import yaml

from stimsim.errors import ProtocolError
from stimsim.protocol import load_protocol, protocol_json_schema, save_protocol, validate_protocol

BASE = {
    "kind": "tdcs",
    "head": "sphere",
    "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
    "electrodes": [
        {"name": "anode", "position": [0, 0, 95], "current_mA": 1.0, "shape": "point"},
        {"name": "cathode", "position": [95, 0, 0], "current_mA": -1.0, "shape": "point"},
    ],
    "duration_min": 20,
}


def _with(**changes):
    d = json.loads(json.dumps(BASE))
    d.update(changes)
    return d


def test_issue_example_loads_and_converts_mA_to_A(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(BASE))
    p = load_protocol(path)
    assert p.kind == "tdcs"
    assert p.electrodes[0].current_A == pytest.approx(1e-3)
    assert p.electrodes[1].current_A == pytest.approx(-1e-3)
    assert p.conductivities == {3: 1.0, 4: 0.01, 5: 1.0}


def test_save_load_round_trip(tmp_path):
    p = validate_protocol(_with(electrodes=[
        {"name": "a", "position": [0, 0, 95], "current_mA": 2.0, "shape": "disc", "diameter_mm": 20},
        {"name": "b", "position": [95, 0, 0], "current_mA": -2.0, "shape": "rect", "size_mm": [50, 70],
         "direction": [0, 1, 0]},
    ]))
    out = save_protocol(p, tmp_path / "sub" / "copy.yaml")
    assert load_protocol(out) == p


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"kind": "ect"}, "kind"),
        ({"duration_min": -5}, "duration_min"),
        ({"conductivities": {3: 0.0}}, "conductivities"),
        ({"conductivities": {3: float("nan")}}, "conductivities"),
        ({"conductivities": {"brainz": 0.3}}, "unknown tissue"),
        ({"kind": "tacs"}, "frequency_hz"),
        ({"frequency_hz": 10}, "frequency_hz"),
    ],
)
def test_bad_protocols_name_the_field(changes, needle):
    with pytest.raises(ProtocolError, match=needle):
        validate_protocol(_with(**changes))


def test_currents_must_sum_to_zero():
    bad = _with()
    bad["electrodes"][1]["current_mA"] = -0.5
    with pytest.raises(ProtocolError, match="sum to 0"):
        validate_protocol(bad)


def test_electrode_field_errors():
    bad = _with()
    bad["electrodes"][0]["current_mA"] = "lots"
    with pytest.raises(ProtocolError, match=r"electrodes\[0\]\.current_mA"):
        validate_protocol(bad)
    bad = _with()
    bad["electrodes"][0]["shape"] = "disc"
    with pytest.raises(ProtocolError, match="diameter_mm"):
        validate_protocol(bad)
    bad = _with()
    bad["electrodes"][0]["shape"] = "hexagon"
    with pytest.raises(ProtocolError, match="shape"):
        validate_protocol(bad)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: tdcs\nelectrodes: [\n  {name: a,\n")
    with pytest.raises(ProtocolError, match="malformed YAML at line"):
        load_protocol(path)


def test_missing_file():
    with pytest.raises(ProtocolError, match="not found"):
        load_protocol("/nonexistent/protocol.yaml")


def test_schema_describes_fields():
    schema = protocol_json_schema()
    assert set(schema["discriminator"]["mapping"]) == {"tdcs", "tacs", "ti", "tms"}
    tes = schema["$defs"]["TESProtocol"]
    for key in ("kind", "head", "electrodes", "conductivities", "duration_min", "frequency_hz"):
        assert key in tes["properties"]
    assert tes["additionalProperties"] is False
    tms = schema["$defs"]["TMSProtocol"]
    for key in ("coil", "placement", "stimulator", "program"):
        assert key in tms["properties"]


def test_messages_name_the_field_once():
    bad = _with()
    bad["electrodes"][0]["position"] = [0, float("nan"), 95]
    with pytest.raises(ProtocolError) as info:
        validate_protocol(bad)
    msg = str(info.value)
    assert "electrodes[0].position[1]: must be a finite number" in msg
    assert ".str" not in msg and "valid string" not in msg  # the [x, y, z] | name union's other branch
    tms = {"kind": "tms", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
           "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {}}
    with pytest.raises(ProtocolError) as info:
        validate_protocol(tms)
    assert "stimulator: stimulator:" not in str(info.value)
    assert "protocol: stimulator: give exactly one of" in str(info.value)


def test_check_option_lists_the_allowed_values_and_suggests_the_nearest():
    from stimsim.errors import ProtocolError, StimsimError, check_option

    assert check_option("recovery", "spr", ("none", "nodal_average", "spr")) == "spr"
    with pytest.raises(ProtocolError, match=r"recovery: 'nodal_averge' is not one of none, nodal_average, spr; "
                                            r"did you mean 'nodal_average'\?"):
        check_option("recovery", "nodal_averge", ("none", "nodal_average", "spr"))
    with pytest.raises(StimsimError) as info:
        check_option("kind", "x" * 10_000, ("tdcs", "tms"), error=StimsimError)
    assert "did you mean" not in str(info.value) and len(str(info.value)) < 400


def test_coil_file_protocols_carry_no_parametric_winding_fields():
    from stimsim.protocol import protocol_to_dict

    base = {"kind": "tms", "head": "sphere", "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]},
            "stimulator": {"didt_A_per_us": 1.0}}
    # a file coil is written back as just its file; older stimsim wrote the parametric defaults beside it
    for coil in ({"file": "Magstim_70mm_Fig8.ccd"},
                 {"file": "Magstim_70mm_Fig8.ccd", "outer_diameter_mm": 70.0, "turns": 9, "winding_depth_mm": 5.0}):
        assert protocol_to_dict(validate_protocol(dict(base, coil=coil)))["coil"] == {"file": "Magstim_70mm_Fig8.ccd"}
    # a parametric coil keeps its defaults written out
    d = protocol_to_dict(validate_protocol(dict(base, coil={"type": "circular", "turns": 5})))["coil"]
    assert d == {"type": "circular", "outer_diameter_mm": 70.0, "turns": 5, "winding_depth_mm": 5.0}
    # a winding value that would be ignored is refused, naming the field
    for key, value in (("turns", 12), ("inner_diameter_mm", 30.0), ("winding_depth_mm", 2.0)):
        with pytest.raises(ProtocolError, match=f"coil.{key} describes a parametric coil"):
            validate_protocol(dict(base, coil={"file": "Magstim_70mm_Fig8.ccd", key: value}))
