"""Neuronavigation files (stimsim.coils.neuronav): known matrices, round trips, detection, hostile
input, and a protocol whose placement is a Localite marker on the sphere head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stimsim.outputs import OutputError

from stimsim.analytic import rel_l2
from stimsim.coils.neuronav import (detect_system, export_placement, navigator_matrix, read_placements,
                                    select_marker, write_placements)
from stimsim.errors import ProtocolError, StimsimError
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate

# a coil above the vertex at (10, 20, 80) mm: z into the head (down), handle along +y (anterior),
# so x = y cross z = -x_RAS
EXPECTED = np.array([[-1.0, 0, 0, 10], [0, 1, 0, 20], [0, 0, -1, 80], [0, 0, 0, 1]])


def _localite_xml(rows, space="RAS", root="InstrumentMarkerList"):
    """A hand-written Localite file whose markers hold the given 4x4 matrices (Localite axes)."""
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} coordinateSpace="{space}">']
    for k, m in enumerate(rows):
        data = " ".join(f'data{i}{j}="{m[i][j]}"' for i in range(4) for j in range(4))
        if root == "InstrumentMarkerList":
            out.append(f'<InstrumentMarker alwaysVisible="false" index="{k}" selected="false">'
                       f'<Marker color="#ff0000" description="M{k}" set="true"><Matrix4D {data}/></Marker>'
                       f"</InstrumentMarker>")
        else:
            out.append(f'<TriggerMarker description="" recordingTime="{1000 * k}"><ResponseValues>'
                       f'<Value key="valueA" response="{55.5 if k else "NaN"}"/><Value key="amplitudeA" '
                       f'response="60.0"/></ResponseValues><Matrix4D {data}/></TriggerMarker>')
    out.append(f"</{root}>")
    return "\n".join(out)


# the same coil in Localite axes: x_L = z (into the head), y_L = -y (handle backwards), z_L = x
LOCALITE_RAS = [[0, 0, -1, 10], [0, -1, 0, 20], [-1, 0, 0, 80], [0, 0, 0, 1]]
LOCALITE_LPS = [[0, 0, 1, -10], [0, 1, 0, -20], [-1, 0, 0, 80], [0, 0, 0, 1]]


def _random_matrix(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = q, rng.uniform(-90, 90, 3)
    return m


def test_localite_known_matrix_ras_and_lps(tmp_path):
    for space, rows in (("RAS", LOCALITE_RAS), ("LPS", LOCALITE_LPS)):
        f = tmp_path / f"InstrumentMarker_{space}.xml"
        f.write_text(_localite_xml([rows], space=space))
        marks = read_placements(f)
        assert len(marks) == 1 and marks[0].name == "M0" and marks[0].kind == "instrument"
        np.testing.assert_allclose(marks[0].matrix, EXPECTED, atol=1e-12)


def test_localite_trigger_markers_and_untracked(tmp_path):
    f = tmp_path / "TriggerMarkers_Coil0_1.xml"
    f.write_text(_localite_xml([np.eye(4).tolist(), LOCALITE_RAS], root="TriggerMarkerList"))
    marks = read_placements(f)
    assert [m.tracked for m in marks] == [False, True]
    assert marks[1].didt_A_per_us == 55.5 and marks[1].percent_mso == 60.0 and marks[0].didt_A_per_us is None
    np.testing.assert_allclose(select_marker(marks, 1).matrix, EXPECTED, atol=1e-12)
    with pytest.raises(ProtocolError, match="not tracked"):
        select_marker(marks, 0)


def test_brainsight_known_matrix_and_three_decimals(tmp_path):
    # Brainsight axes: x = -x, y = y, z = -z (out of the head): the coil above is the identity there
    head = ("# Version: 12\n# Coordinate system: NIfTI:Aligned\n# Encoding: UTF-8\n"
            "# Target Name\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\tm1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2\n"
            "T1\t10.000\t20.000\t80.000\t1.000\t0.000\t0.000\t0.000\t1.000\t0.000\t0.000\t0.000\t1.000\n")
    # a sample, rotated 30 degrees about z, written with 3 decimals like Brainsight
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    sample = ("# Sample Name\tSession Name\tIndex\tAssoc. Target\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\t"
              "m1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2\tDate\n"
              f"Sample 1\tSession 1\t1\t(null)\t1.0\t2.0\t3.0\t{c:.3f}\t{s:.3f}\t0.000\t{-s:.3f}\t{c:.3f}\t0.000\t"
              "0.000\t0.000\t1.000\t2021-06-25\n"
              "# Session Landmark Name\tSession Name\tLoc. X\tLoc. Y\tLoc. Z\nLPA\tSession 1\t1\t2\t3\n")
    f = tmp_path / "export.txt"
    f.write_text(head + sample)
    assert detect_system(f) == "brainsight"
    marks = read_placements(f)
    assert [(m.name, m.kind) for m in marks] == [("T1", "target"), ("Sample 1", "sample")]
    np.testing.assert_allclose(marks[0].matrix, EXPECTED, atol=1e-12)
    r = marks[1].matrix[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)  # snapped to a rotation
    np.testing.assert_allclose(r[:, 1], [-s, c, 0], atol=1e-3)  # handle = Brainsight y
    np.testing.assert_allclose(r[:, 2], [0, 0, -1], atol=1e-12)  # z = -Brainsight z


def test_ant_known_matrix(tmp_path):
    doc = {"Configuration": {"SourceInfo": {"AppName": "visor2"}},
           "TargetMarkers": [{"PointTarget": {}},
                             {"CoilTarget": {"Name": "hotspot", "CoordinateSystem": "ASSOCIATED_IMAGE",
                                             "PositionalUnit": "mm", "CoilAxesConvention": "simnibs",
                                             "CoilPose": {"RigidTransformMatrix4x4": EXPECTED.tolist()}}}]}
    f = tmp_path / "m.mrk"
    f.write_text(json.dumps(doc))
    assert detect_system(f) == "ant"
    np.testing.assert_array_equal(navigator_matrix(f, marker="hotspot"), EXPECTED)


@pytest.mark.parametrize("system", ["localite", "brainsight", "ant"])
def test_exact_round_trip(tmp_path, rng, system):
    mats = [_random_matrix(rng) for _ in range(3)]
    f = tmp_path / f"out.{system}"
    write_placements(f, [(f"p{k}", m) for k, m in enumerate(mats)], system)
    assert detect_system(f) == system
    back = read_placements(f)
    assert [p.name for p in back] == ["p0", "p1", "p2"]
    for m, p in zip(mats, back):
        np.testing.assert_array_equal(p.matrix, m)
    # a re-export replaces a file of the same system, atomically, and leaves no temporary file
    export_placement(mats[0], f, system=system, name="best")
    assert [p.name for p in read_placements(f)] == ["best"]
    assert sorted(x.name for x in tmp_path.iterdir()) == [f.name]
    # the navigator's own file of the same system (no stimsim mark) is never replaced
    theirs = tmp_path / "session"
    theirs.write_text(f.read_text().replace("stimsim", "navigator"))
    assert detect_system(theirs) == system
    with pytest.raises(OutputError, match="not written by stimsim"):
        export_placement(mats[1], theirs, system=system)
    assert "navigator" in theirs.read_text()


def _t1(tmp_path, qform, sform):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    path = tmp_path / "T1.nii.gz"
    nib.save(img, path)
    return path


def test_t1_frames_ant_and_brainsight(tmp_path, rng):
    q = np.diag([1.0, 1.0, 1.0, 1.0])
    q[:3, 3] = (-90, -126, -72)
    s = q.copy()
    s[:3, 3] += (2.0, -3.0, 5.0)  # an sform 2/-3/5 mm off the qform
    t1 = _t1(tmp_path, q, s)
    m = _random_matrix(rng)
    for system in ("ant", "brainsight"):
        f = tmp_path / f"t.{system}"
        export_placement(m, f, system=system, t1_affine=t1)
        np.testing.assert_allclose(read_placements(f, t1=t1)[0].matrix, m, atol=1e-9)
    # ANT stores the qform world: the file's centre is the head point moved by q s^-1
    raw = json.loads((tmp_path / "t.ant").read_text())
    pose = np.array(raw["TargetMarkers"][0]["CoilTarget"]["CoilPose"]["RigidTransformMatrix4x4"])
    np.testing.assert_allclose(pose[:3, 3], m[:3, 3] - (2.0, -3.0, 5.0), atol=1e-9)
    assert "Aligned" in (tmp_path / "t.brainsight").read_text().splitlines()[1]  # sform code 2
    # the .mrk names its image: another T1 is refused
    other = tmp_path / "other"
    other.mkdir()
    q2 = q.copy()
    q2[:3, 3] += 10
    with pytest.raises(ProtocolError, match="another image"):
        read_placements(tmp_path / "t.ant", t1=_t1(other, q2, q2))
    # Localite: which xform it used is unknown when they differ: refused, not guessed
    f = tmp_path / "InstrumentMarker.xml"
    f.write_text(_localite_xml([LOCALITE_RAS]))
    with pytest.raises(ProtocolError, match="qform and sform differ"):
        read_placements(f, t1=t1)


@pytest.mark.parametrize("content, needle", [
    ('<?xml version="1.0"?>\n<InstrumentMarkerList coordinateSpace="RAS"><InstrumentMarker><Marker>', "truncated"),
    ('<InstrumentMarkerList coordinateSpace="RAS"><InstrumentMarker><Marker description="a">'
     '<Matrix4D data00="1"/></Marker></InstrumentMarker></InstrumentMarkerList>', "lacks data01"),
    ('<InstrumentMarkerList><InstrumentMarker/></InstrumentMarkerList>', "coordinateSpace"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><InstrumentMarkerList coordinateSpace="RAS"/>', "DOCTYPE"),
    ("# Version: 7\n# Coordinate system: Brainsight\n# Target Name\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\t"
     "m1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2\nA\t1\t2\t3\t1\t0\t0\t0\t1\t0\t0\t0\t1\n", "NIfTI:Aligned"),
    ("# Coordinate system: NIfTI:Aligned\n# Target Name\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\t"
     "m1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2\nA\t1\t2\t3\t1\t0\t0\t0\t2\t0\t0\t0\t1\n", "orthonormal"),
    ("# Coordinate system: NIfTI:Aligned\n# Target Name\tLoc. X\tLoc. Y\tLoc. Z\tm0n0\tm0n1\tm0n2\t"
     "m1n0\tm1n1\tm1n2\tm2n0\tm2n1\tm2n2\nA\t1\t2\n", "truncated"),
    ('{"TargetMarkers": [{"CoilTarget": {"Name": "x", "CoordinateSystem": "ASSOCIATED_IMAGE", '
     '"PositionalUnit": "m", "CoilAxesConvention": "simnibs"}}]}', "PositionalUnit"),
    ('{"TargetMarkers": [{"CoilTarget": ', "not valid JSON"),
    ("hello", "is not a Localite"),
    ("", "is not a Localite"),
])
def test_hostile_files_give_one_line(tmp_path, content, needle):
    f = tmp_path / "bad.xml"
    f.write_text(content)
    with pytest.raises(ProtocolError, match=needle) as err:
        navigator_matrix(f, field_name="placement.localite", marker=0)
    assert "\n" not in str(err.value) and str(err.value).startswith("placement.localite")


def test_marker_choice_and_missing_file(tmp_path):
    f = tmp_path / "InstrumentMarker.xml"
    f.write_text(_localite_xml([LOCALITE_RAS, LOCALITE_LPS]))
    with pytest.raises(ProtocolError, match="holds 2 markers"):
        navigator_matrix(f)
    with pytest.raises(ProtocolError, match="marker 5 does not exist"):
        navigator_matrix(f, marker=5)
    with pytest.raises(ProtocolError, match="no marker is named"):
        navigator_matrix(f, marker="nope")
    with pytest.raises(ProtocolError, match="file not found"):
        navigator_matrix(tmp_path / "nothing.xml")
    with pytest.raises(ProtocolError, match="is a localite file, not ant"):
        read_placements(f, "ant")


def test_export_refuses_other_files(tmp_path):
    f = tmp_path / "notes.xml"
    f.write_text("my notes")
    with pytest.raises(StimsimError, match="not written by stimsim"):
        export_placement(EXPECTED, f, system="localite")
    assert f.read_text() == "my notes"
    with pytest.raises(ProtocolError, match="is not one of"):
        export_placement(EXPECTED, tmp_path / "x.xml", system="softaxic")


def test_protocol_rejects_mixed_placements():
    base = {"kind": "tms", "coil": {"file": "Magstim_70mm_Fig8.ccd"}, "stimulator": {"didt_A_per_us": 1.0}}
    for bad, needle in [({"localite": "a.xml", "matrix": EXPECTED.tolist()}, "drop matrix"),
                        ({"localite": "a.xml", "ant": "b.mrk"}, "one navigator file"),
                        ({"center": [0, 0, 95], "direction": [0, 1, 0], "marker": 1}, "belong to a navigator"),
                        ({"brainsight": "a.txt", "marker": True}, "not true/false")]:
        with pytest.raises(ProtocolError, match=needle):
            validate_protocol({**base, "placement": bad})


def test_localite_marker_protocol_gives_the_matrix_field(tmp_path, sphere3_mesh):
    from stimsim.coils.placement import place_coil

    m = place_coil(sphere3_mesh, (20.0, 10.0, 90.0), (0.3, 1.0, 0.0), 5.0).matrix
    base = {"kind": "tms", "head": "sphere", "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
            "coil": {"file": "Magstim_70mm_Fig8.ccd"}, "stimulator": {"didt_A_per_us": 1.0}}
    write_placements(tmp_path / "session.xml", [("other", EXPECTED), ("hotspot", m)], "localite")
    by_matrix = simulate(validate_protocol({**base, "placement": {"matrix": np.asarray(m).tolist()}}),
                         mesh=sphere3_mesh)
    for marker in (1, "hotspot"):
        p = validate_protocol({**base, "placement": {"localite": "session.xml", "marker": marker}})
        res = simulate(p, base_dir=tmp_path, mesh=sphere3_mesh)
        np.testing.assert_allclose(res.placement.matrix, m, atol=1e-12)
        assert rel_l2(res.E, by_matrix.E) < 1e-9
    with pytest.raises(ProtocolError, match="placement.marker: marker 2 does not exist"):
        simulate(validate_protocol({**base, "placement": {"localite": "session.xml", "marker": 2}}),
                 base_dir=tmp_path, mesh=sphere3_mesh)


def test_optimize_tms_from_a_navigator_protocol_writes_a_matrix_placement(tmp_path):
    # the search keeps the protocol's scalp distance; the protocol it writes holds the matrix alone
    # (no navigator file, marker or distance beside it) and loads again
    import yaml
    from typer.testing import CliRunner

    from stimsim.cli import app
    from stimsim.protocol import load_protocol

    top = np.diag([1.0, -1.0, -1.0, 1.0])  # above the vertex, z into the head
    top[:3, 3] = (0, 0, 99)
    write_placements(tmp_path / "nav.xml", [("m0", top)], "localite")
    p = {"kind": "tms", "head": "sphere", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
         "placement": {"localite": "nav.xml", "marker": 0}, "stimulator": {"didt_A_per_us": 1.0}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    out = tmp_path / "best.yaml"
    res = CliRunner().invoke(app, ["-q", "optimize", "tms", str(tmp_path / "p.yaml"), "--target", "25,10,75",
                                   "--grid-radius", "10", "--grid-step", "5", "--angles", "12", "--distance", "10",
                                   "--out", str(out), "--export-localite", str(tmp_path / "best.xml")])
    assert res.exit_code == 0, res.output
    written = yaml.safe_load(out.read_text())
    assert set(written["placement"]) == {"matrix"}
    best = load_protocol(out)
    centre = np.asarray(best.placement.matrix)[:3, 3]
    assert np.linalg.norm(centre) == pytest.approx(95.0 + 10.0, abs=0.6)  # 10 mm above the 95 mm scalp
    np.testing.assert_allclose(navigator_matrix(tmp_path / "best.xml"), best.placement.matrix, atol=1e-12)
    # one file may not serve two outputs
    again = CliRunner().invoke(app, ["-q", "optimize", "tms", str(tmp_path / "p.yaml"), "--target", "25,10,75",
                                     "--out", str(tmp_path / "x.yaml"), "--map", str(tmp_path / "x.yaml")])
    assert again.exit_code == 2 and "own file name" in again.output
