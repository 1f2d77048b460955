"""Protocols on head folders (``head: subj/``) and positions in MNI space (``{mni: [x, y, z]}``).

A head folder is built here by hand from the embedded sphere (what ``stimsim head`` writes, minus
the segmentation), with a known subject->MNI affine, so every expected position is computed from
that affine, independently of the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from stimsim.errors import ProtocolError
from stimsim.head.eeg import project_to_scalp, read_positions
from stimsim.head.folder import HEAD_FORMAT
from stimsim.head_model import mni_to_head, resolve_head
from stimsim.mesh import read_mesh
from stimsim.protocol import validate_protocol
from stimsim.simulation import electrode_specs, resolve_position, simulate

# subject -> MNI: a 10 % scaling and a shift, as an affine registration gives
SUBJECT_TO_MNI = np.array([[1.1, 0, 0, 5.0], [0, 1.1, 0, -3.0], [0, 0, 1.1, 2.0], [0, 0, 0, 1]])


@pytest.fixture
def sphere_folder(tmp_path, sphere3_mesh):
    subj = tmp_path / "subj"
    subj.mkdir()
    (subj / "head.msh").write_bytes(resolve_head("sphere").read_bytes())  # gzip MSH: read by content
    (subj / "labels.nii.gz").write_bytes(b"not read by the tests")
    (subj / "positions.tsv").write_text("name\tx_mm\ty_mm\tz_mm\nTOP\t0\t0\t95\nSIDE\t95\t0\t0\n")
    (subj / "head.json").write_text(json.dumps({"format": HEAD_FORMAT, "mni": {"subject_to_mni":
                                                                           SUBJECT_TO_MNI.tolist()}}))
    return subj


def tdcs(head, anode, cathode, **kw):
    return validate_protocol({"kind": "tdcs", "head": head, "electrodes": [
        {"name": "a", "position": anode, "current_mA": 1.0, "shape": "disc", "diameter_mm": 20},
        {"name": "c", "position": cathode, "current_mA": -1.0, "shape": "disc", "diameter_mm": 20}], **kw})


def test_head_folder_runs_with_its_positions_and_mni_points(sphere_folder, sphere3_mesh, tmp_path):
    mni_top = SUBJECT_TO_MNI[:3, :3] @ np.array([0, 0, 97.0]) + SUBJECT_TO_MNI[:3, 3]  # 2 mm above the top
    p = tdcs("subj", "SIDE", {"mni": mni_top.tolist()})
    specs = electrode_specs(p, tmp_path, sphere3_mesh)
    assert specs[0].position_mm == pytest.approx((95, 0, 0))  # from the folder's positions.tsv
    assert specs[1].position_mm == pytest.approx((0, 0, 95), abs=0.2)  # MNI -> subject -> onto the scalp
    result = simulate(p, base_dir=tmp_path)
    assert result.inputs["head_file"] == "head.msh"
    assert result.electrode_currents_A["a"] == pytest.approx(1e-3, rel=1e-6)


def test_mni_point_on_colin27_lands_where_the_eeg_name_does():
    """Colin27's frame is MNI: C3's own coordinates as an MNI point give C3's electrode."""
    from importlib import resources

    mesh, _ = read_mesh(resolve_head("colin27"))
    c3 = read_positions(str(resources.files("stimsim") / "data" / "colin27_1005.tsv"))["C3"]
    p = tdcs("colin27", "C3", {"mni": list(map(float, c3))})
    by_name, by_mni = electrode_specs(p, None, mesh)
    assert np.linalg.norm(np.subtract(by_name.position_mm, by_mni.position_mm)) < 0.5


def test_mni_needs_a_head_with_a_transform(sphere3_mesh):
    p = tdcs("sphere", [0, 0, 95], {"mni": [95, 0, 0]})
    with pytest.raises(ProtocolError, match="no MNI transform"):
        electrode_specs(p, None, sphere3_mesh)


def test_tms_placement_and_target_in_mni(sphere_folder, sphere3_mesh, tmp_path):
    from stimsim.cli.planning import target_point

    p = validate_protocol({"kind": "tms", "head": "subj", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                           "placement": {"center": {"mni": [5.0, -3.0, 2.0 + 1.1 * 95]}, "direction": [0, 1, 0]},
                           "stimulator": {"didt_A_per_us": 1}})
    centre = resolve_position(p.placement.center, p, sphere3_mesh, tmp_path, "placement.center")
    assert centre == pytest.approx(tuple(project_to_scalp(sphere3_mesh, [[0, 0, 95]])[0]), abs=1e-6)
    want = np.linalg.solve(SUBJECT_TO_MNI, [10.0, 20.0, 30.0, 1.0])[:3]
    assert target_point(None, "10,20,30", "subj", tmp_path) == pytest.approx(want.tolist())
    assert np.allclose(mni_to_head("subj", tmp_path) @ SUBJECT_TO_MNI, np.eye(4))


def test_folder_that_is_not_a_head_folder_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("mine")
    p = tdcs("notes", [0, 0, 95], [95, 0, 0])
    with pytest.raises(Exception, match="head.json"):
        simulate(p, base_dir=tmp_path)
