"""A-field NIfTI coils (SimNIBS convention): a grid sampled from the Magstim .ccd dipoles must
give the .ccd run's field; bad files, bad placements and points off the grid are caught.

Set-up as in test_tms.py: sphere3, coil centre 4 mm above the top at (0, 0, 99) mm, dI/dt 1e6 A/s.
"""

import json
import logging

import numpy as np
import pytest

from stimsim.analytic import rel_l2, tms_sphere_efield
from stimsim.coils import CoilError, GridCoil, load_coil, read_ccd, read_nifti_coil
from stimsim.errors import ProtocolError
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate
from stimsim.fem.primary import dipole_dadt

nib = pytest.importorskip("nibabel")

COND = {3: 1.0, 4: 0.01, 5: 1.0}
H = 3.0  # grid spacing, mm
# Trilinear interpolation errs by ~h²/8 |∇²A|; for a dipole field A ~ 1/r², |∇²A|/|A| ~ 6/r², so
# the relative error is ~0.75 h²/r².  The inner ball's top (85 mm) is 14 mm under the coil face
# and the Magstim windings lie >= 4.17 mm above it: r >= 18.2 mm, the worst point within ~2 %.
TOL = 0.75 * H**2 / (14.0 + 4.17) ** 2


def _protocol(coil_file, direction=(0, 1, 0), **kw):
    return validate_protocol({
        "kind": "tms", "head": "sphere", "conductivities": COND, "coil": {"file": str(coil_file)},
        "placement": {"center": [0, 0, 95], "direction": list(direction), "distance_mm": 4.0},
        "stimulator": {"didt_A_per_us": 1.0}, **kw,
    })


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def sphere3(sphere3_mesh):
    return sphere3_mesh


@pytest.fixture(scope="module")
def nifti_coil_file(magstim_ccd, tmp_path_factory):
    """The Magstim .ccd coil's A per unit dI/dt on a 3 mm grid covering sphere3 in the coil frame.

    The affine flips x and has a non-integer origin, so a reader that ignores it (or inverts it
    wrongly) samples the wrong voxels.
    """
    coil = read_ccd(magstim_ccd)
    n = 68  # 201 mm per axis: x, y in [-100.5, 100.5], z in [-1, 200] (the head spans z 4..194)
    affine = np.diag([-H, H, H, 1.0])
    affine[:3, 3] = [100.5, -100.5, -1.0]
    ijk = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    a = dipole_dadt(xyz, coil.positions_m * 1e3, coil.moments_m2, 1.0).reshape(n, n, n, 3)
    return _save(tmp_path_factory.mktemp("coil") / "magstim_afield.nii.gz", a.astype(np.float32), affine)


@pytest.mark.parametrize("direction", [(0, 1, 0), (1, 0, 0)], ids=["handle_y", "handle_x"])
def test_nifti_coil_matches_the_ccd_coil(sphere3, nifti_coil_file, direction, caplog):
    # handle along x: the vector components must be rotated from the coil frame, not just the points
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        grid = simulate(_protocol(nifti_coil_file, direction), mesh=sphere3)
    assert "outside the A-field grid" not in caplog.text  # the grid covers the head
    ccd = simulate(_protocol("Magstim_70mm_Fig8.ccd", direction), mesh=sphere3)
    sel = sphere3.tet_tags == 3
    assert rel_l2(grid.E[sel], ccd.E[sel]) < TOL  # measured 4.0e-4 (TOL 2.0e-2)
    assert rel_l2(grid.E, ccd.E) < TOL  # measured 4.4e-4 (scalp elements included)
    dpos, dmom = load_coil(ccd.protocol.coil).transformed(np.array(ccd.placement.matrix))
    ref = tms_sphere_efield(sphere3.centroids[sel], dpos, dmom, 1e6)
    assert abs(rel_l2(grid.E[sel], ref) - rel_l2(ccd.E[sel], ref)) < 0.01  # measured < 1e-5 (both 7.3-7.5 %)
    assert grid.coil_summary["grid_shape"] == [68, 68, 68]
    json.dumps(grid.tms_summary())  # the summary section is JSON-ready


def test_tms_model_uses_the_grid_coil(sphere3, nifti_coil_file):
    from stimsim.tms import TMSModel

    p = _protocol(nifti_coil_file, solver={"recovery": "none"})
    model = TMSModel(p, mesh=sphere3, rtol=1e-10)
    matrix = model.placement([0, 0, 95], [0, 1, 0]).matrix
    assert rel_l2(model.efield(matrix), simulate(p, mesh=sphere3).E) < 1e-6


def test_linear_field_is_interpolated_exactly_and_rotated(rng, caplog):
    # trilinear interpolation reproduces a linear field exactly, on any (here oblique) grid
    b, c = rng.normal(size=(3, 3)), rng.normal(size=3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q * [2.0, 1.5, 2.5]
    affine[:3, 3] = [-20.0, 5.0, 3.0]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (20, 25, 15)], indexing="ij"), axis=-1)
    coil = GridCoil("linear", (ijk @ affine[:3, :3].T + affine[:3, 3]) @ b.T + c, affine)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot *= np.sign(np.linalg.det(rot))
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rot, [10.0, -40.0, 70.0]
    inside_coil = (rng.uniform(0.5, [18.5, 23.5, 13.5], size=(200, 3))) @ affine[:3, :3].T + affine[:3, 3]
    head = inside_coil @ rot.T + matrix[:3, 3]
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        got = coil.dadt(head, matrix, 3.0)
    assert caplog.text == ""
    np.testing.assert_allclose(got, 3.0 * (inside_coil @ b.T + c) @ rot.T, rtol=1e-9, atol=1e-9)

    # points off the grid: zero there, and a warning that the field is under-estimated
    far = head + 1000.0 * matrix[:3, 2]
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        got = coil.dadt(np.vstack([head, far]), matrix, 3.0)
    assert np.all(got[200:] == 0) and np.all(got[:200] != 0)
    assert "200 of 400 points" in caplog.text and "under-estimates" in caplog.text


@pytest.mark.parametrize("kind, needle", [
    ("3d", "4D image"), ("axis", r"got shape \(4, 4, 4, 2\)"), ("nan", "non-finite"),
    ("singular", "affine is singular"), ("junk", "not a readable NIfTI"),
])
def test_bad_nifti_files(tmp_path, kind, needle):
    a = np.zeros((4, 4, 4, 3), np.float32)
    path = tmp_path / f"{kind}.nii"
    if kind == "3d":
        _save(path, a[..., 0], np.eye(4))
    elif kind == "axis":
        _save(path, a[..., :2], np.eye(4))
    elif kind == "nan":
        a[1, 2, 3, 1] = np.nan
        _save(path, a, np.eye(4))
    elif kind == "singular":
        img = nib.Nifti1Image(a, np.eye(4))
        img.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # a 2D "grid": no way back to voxels
        nib.save(img, str(path))
    else:
        path.write_bytes(b"not an image" * 40)
    with pytest.raises(CoilError, match=needle) as err:
        load_coil(_protocol(path).coil)
    assert f"{kind}.nii" in str(err.value)  # names the file


def test_missing_nibabel_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "nibabel", None)
    with pytest.raises(CoilError, match="pip install nibabel"):
        read_nifti_coil(tmp_path / "c.nii.gz")


def test_coil_centre_inside_the_head_is_refused(sphere3, nifti_coil_file):
    m = np.eye(4)
    m[:3, 0], m[:3, 2], m[:3, 3] = [-1, 0, 0], [0, 0, -1], [0, 0, 85]
    p = validate_protocol({"kind": "tms", "coil": {"file": str(nifti_coil_file)}, "placement": {"matrix": m.tolist()},
                           "stimulator": {"didt_A_per_us": 1.0}})
    with pytest.raises(ProtocolError, match=r"placement: the coil intersects the head \(its centre lies 10.0 mm"):
        simulate(p, mesh=sphere3)
    m[2, 3] = 96.0
    load_coil(p.coil).check_outside(sphere3, m)  # 1 mm above the scalp: accepted


def test_percent_mso_needs_the_protocols_didt_max(sphere3, nifti_coil_file):
    p = _protocol(nifti_coil_file)
    mso = p.stimulator.model_copy(update={"didt_A_per_us": None, "percent_mso": 40.0})
    with pytest.raises(ProtocolError, match="does not state its dI/dt"):
        simulate(p.model_copy(update={"stimulator": mso}), mesh=sphere3)
    coil = load_coil(p.coil.model_copy(update={"didt_max_A_per_us": 150.0}))
    assert isinstance(coil, GridCoil) and coil.didt_max_A_per_s == pytest.approx(150e6)


def test_a_grid_that_misses_part_of_the_head_warns_and_zeroes_the_primary_field(sphere3, magstim_ccd,
                                                                                 tmp_path, caplog):
    """An A-field grid covering only the top 40 mm below the coil: the run warns that the field is
    under-estimated, dA/dt is exactly zero at the nodes beyond the grid, and the field stays finite."""
    coil = read_ccd(magstim_ccd)
    n, top = 68, 14  # 14 slices of 3 mm: coil-frame z in [-1, 38] mm
    affine = np.diag([-H, H, H, 1.0])
    affine[:3, 3] = [100.5, -100.5, -1.0]
    ijk = np.stack(np.meshgrid(np.arange(n), np.arange(n), np.arange(top), indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    a = dipole_dadt(xyz, coil.positions_m * 1e3, coil.moments_m2, 1.0).reshape(n, n, top, 3)
    path = _save(tmp_path / "short.nii.gz", a.astype(np.float32), affine)
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        r = simulate(_protocol(path), mesh=sphere3)
    assert "outside the A-field grid" in caplog.text and "under-estimates" in caplog.text
    m = np.asarray(r.placement.matrix)
    depth = (sphere3.nodes - m[:3, 3]) @ m[:3, 2]  # distance below the coil along its z axis, mm
    beyond = depth > 38.0 + 2 * H  # past the last slice by more than the interpolation reach
    assert beyond.any() and np.all(r.dadt_V_per_m[beyond] == 0)
    assert np.all(np.isfinite(r.E)) and np.abs(r.dadt_V_per_m[depth < 30]).max() > 0


def test_coil_search_with_a_grid_coil(sphere3, nifti_coil_file):
    # an A-field grid has no dipoles: the search scores each placement exactly at every node, and agrees
    # with the dipole coil it was sampled from
    from stimsim.planning import search_tms
    from stimsim.tms import TMSModel

    kw = dict(grid_radius_mm=10, grid_step_mm=10, angles=6, roi_radius_mm=8, tags=[3], progress=False)
    grid = search_tms(TMSModel(_protocol(nifti_coil_file), mesh=sphere3), [25.0, 10.0, 75.0], **kw)
    ccd = search_tms(TMSModel(_protocol("Magstim_70mm_Fig8.ccd"), mesh=sphere3), [25.0, 10.0, 75.0], **kw)
    assert grid.objective_map.shape == ccd.objective_map.shape == (5, 6)
    np.testing.assert_allclose(grid.objective_map, ccd.objective_map, rtol=1e-2)
    assert grid.fem_objective_V_per_m == pytest.approx(grid.objective_V_per_m, rel=1e-4)
    with pytest.raises(ProtocolError, match="A-field grid, not dipoles"):
        search_tms(TMSModel(_protocol(nifti_coil_file), mesh=sphere3), [25.0, 10.0, 75.0], grid_radius_mm=30,
                   grid_step_mm=0.5, angles=360, progress=False)
