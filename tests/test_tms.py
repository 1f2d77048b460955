"""TMS against the analytic sphere (Heller & van Hulsteyn 1992) and placement/coil behaviour.

Set-up of the acceptance criteria: Magstim_70mm_Fig8.ccd, coil centre 4 mm above the top of
the sphere at (0, 0, 99) mm, coil z into the head, handle along +y, dI/dt = 1e6 A/s, sigma
1.0 / 0.01 / 1.0 S/m.  The reference tool reaches 7.50 % on sphere3.msh and 2.53 % on a
~665k-tet sphere; element-wise E must be within 8 % / 2.7 %, the recovered field >= 25 % better.
"""

import numpy as np
import pytest

from stimsim.analytic import mag, rdm, rel_l2, tms_sphere_efield
from stimsim.coils import load_coil, make_coil, place_coil, placement_from_matrix, read_ccd
from stimsim.errors import ProtocolError
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate

COND = {3: 1.0, 4: 0.01, 5: 1.0}


def _protocol(cond=COND, direction=(0, 1, 0), center=(0, 0, 95), distance=4.0, coil=None, **kw):
    return validate_protocol({
        "kind": "tms", "head": "sphere", "conductivities": cond,
        "coil": coil or {"file": "Magstim_70mm_Fig8.ccd"},
        "placement": {"center": list(center), "direction": list(direction), "distance_mm": distance},
        "stimulator": {"didt_A_per_us": 1.0}, **kw,
    })


def _analytic(result, sel, coil_file="Magstim_70mm_Fig8.ccd"):
    coil = load_coil(result.protocol.coil)
    dpos, dmom = coil.transformed(np.array(result.placement.matrix))
    return tms_sphere_efield(result.mesh.centroids[sel], dpos, dmom, result.didt_A_per_s)


@pytest.fixture(scope="module")
def sphere3(sphere3_mesh):
    return sphere3_mesh


@pytest.fixture(scope="module")
def sphere3_result(sphere3):
    return simulate(_protocol(), mesh=sphere3)


def test_placement_matches_the_acceptance_setup(sphere3_result):
    m = np.array(sphere3_result.placement.matrix)
    np.testing.assert_allclose(m[:3, 3], [0, 0, 99], atol=0.05)
    np.testing.assert_allclose(m[:3, 2], [0, 0, -1], atol=5e-3)  # z into the head
    np.testing.assert_allclose(m[:3, 1], [0, 1, 0], atol=5e-3)  # handle along +y
    assert sphere3_result.didt_A_per_s == 1e6


def test_sphere3_matches_analytic(sphere3_result):
    sel = sphere3_result.mesh.tet_tags == 3
    ref = _analytic(sphere3_result, sel)
    e, r = sphere3_result.E[sel], sphere3_result.E_recovered[sel]
    err = rel_l2(e, ref)
    assert err < 0.08, err
    assert rdm(e, ref) < 0.08 and mag(e, ref) < 0.02
    assert rel_l2(r, ref) <= 0.75 * err, (rel_l2(r, ref), err)


def test_large_sphere_matches_analytic(large_sphere_mesh):
    result = simulate(_protocol(), mesh=large_sphere_mesh)
    # a fixed random third of the inner-ball elements keeps the analytic evaluation short
    inner = np.flatnonzero(large_sphere_mesh.tet_tags == 3)
    sel = np.sort(np.random.default_rng(0).choice(inner, size=min(len(inner), 60_000), replace=False))
    ref = _analytic(result, sel)
    err = rel_l2(result.E[sel], ref)
    assert err < 0.027, err
    assert rel_l2(result.E_recovered[sel], ref) <= 0.75 * err


def test_field_does_not_depend_on_layer_conductivities(sphere3, sphere3_result):
    other = simulate(_protocol(cond={3: 0.3, 4: 0.1, 5: 2.0}), mesh=sphere3)
    sel = sphere3.tet_tags == 3
    # exact in the continuum; the discretisation error of the secondary field is all that changes
    assert rel_l2(other.E[sel], sphere3_result.E[sel]) < 0.03
    assert rel_l2(other.E[sel], _analytic(other, sel)) < 0.08


def test_rotating_the_coil_rotates_the_peak_field(sphere3):
    # the wings sit side by side across the handle, so under the centre E runs along the handle
    probe = np.argmin(np.linalg.norm(sphere3.centroids - [0, 0, 80], axis=1))
    for direction, axis in (((0, 1, 0), 1), ((1, 0, 0), 0)):
        e = simulate(_protocol(direction=direction), mesh=sphere3).E[probe]
        assert abs(e[axis]) / np.linalg.norm(e) > 0.97


def test_placement_matrix_round_trip(sphere3, rng):
    for _ in range(5):
        c = rng.normal(size=3)
        c = 95 * c / np.linalg.norm(c)
        d = rng.normal(size=3)
        pl = place_coil(sphere3, c, d, distance_mm=7.5)
        r = pl.matrix[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        back = placement_from_matrix(pl.matrix, sphere3)
        assert back.distance_mm == pytest.approx(7.5, abs=0.5)
        again = place_coil(sphere3, back.scalp_point_mm, back.handle_direction, back.distance_mm)
        np.testing.assert_allclose(again.matrix, pl.matrix, atol=0.02)


def test_matrix_protocol_gives_the_same_field(sphere3, sphere3_result):
    m = sphere3_result.placement.matrix
    p = validate_protocol({"kind": "tms", "head": "sphere", "conductivities": COND,
                           "coil": {"file": "Magstim_70mm_Fig8.ccd"}, "placement": {"matrix": m},
                           "stimulator": {"didt_A_per_us": 1.0}})
    # the same placement up to round-off in the matrix; CG stops at TMS's rtol 1e-6
    assert rel_l2(simulate(p, mesh=sphere3).E, sphere3_result.E) < 1e-6


def test_parametric_figure8_resembles_the_magstim_coil(sphere3, sphere3_result):
    # the Magstim 70 mm coil's windings: 9 turns per wing, 56-88 mm diameter, ~6.5 mm above the face
    para = simulate(_protocol(coil={"type": "figure8", "outer_diameter_mm": 88, "inner_diameter_mm": 56,
                                    "turns": 9, "winding_depth_mm": 6.5}), mesh=sphere3)
    sel = sphere3.tet_tags == 3
    assert rel_l2(para.E[sel], _analytic(para, sel)) < 0.08  # same physics, its own coil
    # same windings, independently discretised: the same field within 10 %
    assert rel_l2(para.E[sel], sphere3_result.E[sel]) < 0.10


def test_circular_coil_total_moment():
    coil = make_coil("circular", outer_diameter_mm=90, inner_diameter_mm=30, turns=5)
    radii = np.linspace(0.015, 0.045, 5)
    assert coil.moments_m2[:, 2].sum() == pytest.approx(np.pi * np.sum(radii**2), rel=1e-12)


def test_ccd_reader_errors(tmp_path, magstim_ccd):
    coil = read_ccd(magstim_ccd)
    assert coil.n_dipoles == 2712 and coil.didt_max_A_per_s is None
    lines = magstim_ccd.read_text().splitlines()
    (tmp_path / "trunc.ccd").write_text("\n".join(lines[:-10]))
    with pytest.raises(ProtocolError, match="header says 2712 dipoles"):
        read_ccd(tmp_path / "trunc.ccd")
    (tmp_path / "bad.ccd").write_text("# x\nmany\n# c\n1 2 3 4 5 6\n")
    with pytest.raises(ProtocolError, match="number of dipoles"):
        read_ccd(tmp_path / "bad.ccd")
    (tmp_path / "hdr.ccd").write_text("# c.ccd version 1.0;dIdtmax=147.2;stimulator=X\n1\n# c\n0 0 -0.01 0 0 1e-5\n")
    assert read_ccd(tmp_path / "hdr.ccd").didt_max_A_per_s == pytest.approx(147.2e6)


def test_percent_mso_needs_and_uses_didt_max(sphere3):
    base = _protocol()
    with pytest.raises(ProtocolError, match="dI/dt"):
        simulate(base.model_copy(update={"stimulator": base.stimulator.model_copy(
            update={"didt_A_per_us": None, "percent_mso": 50.0})}), mesh=sphere3)
    p = _protocol(coil={"file": "Magstim_70mm_Fig8.ccd", "didt_max_A_per_us": 150.0})
    p = p.model_copy(update={"stimulator": p.stimulator.model_copy(update={"didt_A_per_us": None,
                                                                           "percent_mso": 40.0})})
    assert simulate(p, mesh=sphere3).didt_A_per_s == pytest.approx(60e6)


@pytest.mark.parametrize("bad, needle", [
    ({"stimulator": {"didt_A_per_us": 0}}, "didt_A_per_us"),
    ({"stimulator": {"percent_mso": 120}}, "percent_mso"),
    ({"program": {"type": "rtms", "frequency_hz": -1, "pulses_per_train": 10}}, "frequency_hz"),
    ({"program": {"type": "rtms", "frequency_hz": 10, "pulses_per_train": 0}}, "pulses_per_train"),
    ({"program": {"type": "rtms", "frequency_hz": 10, "pulses_per_train": 2.5}}, "pulses_per_train"),
    ({"program": {"type": "rtms", "frequency_hz": 10, "pulses_per_train": 10, "trains": 5}}, "iti_s"),
    ({"program": {"type": "itbs", "pulses_per_burst": 20}}, "burst"),
    ({"placement": {"center": [0, 0, 95]}}, "direction"),
])
def test_bad_tms_protocols(bad, needle):
    d = {"kind": "tms", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
         "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {"didt_A_per_us": 1.0}}
    d.update(bad)
    with pytest.raises(ProtocolError, match=needle):
        validate_protocol(d)


def test_direction_along_normal_and_coil_inside_head(sphere3):
    with pytest.raises(ProtocolError, match="parallel to the scalp normal"):
        simulate(_protocol(direction=(0, 0, 1)), mesh=sphere3)
    m = np.eye(4)
    m[:3, 2] = [0, 0, -1]
    m[:3, 0] = [-1, 0, 0]
    m[:3, 3] = [0, 0, 85]
    p = validate_protocol({"kind": "tms", "coil": {"file": "Magstim_70mm_Fig8.ccd"}, "placement": {"matrix": m.tolist()},
                           "stimulator": {"didt_A_per_us": 1.0}})
    with pytest.raises(ProtocolError, match="intersects the head"):
        simulate(p, mesh=sphere3)


def test_programs_expand_to_published_totals():
    from stimsim.protocol import PulseProgram

    itbs = PulseProgram(type="itbs").expanded()
    assert itbs["total_pulses"] == 600 and itbs["train_duration_s"] == 2.0  # Huang et al. 2005
    ctbs = PulseProgram(type="ctbs").expanded()
    assert ctbs["total_pulses"] == 600 and ctbs["train_duration_s"] == 40.0
    r = PulseProgram(type="rtms", frequency_hz=10, pulses_per_train=40, trains=75, iti_s=26).expanded()
    assert r["total_pulses"] == 3000 and r["train_duration_s"] == 4.0
    assert r["session_duration_s"] == 75 * 4 + 74 * 26


def test_pulse_waveform_gives_peak_didt(sphere3):
    from stimsim.coils.waveform import peak_didt_A_per_s, pulse

    # lossless sine: dI/dt peaks at I_peak * 2 pi / T, for both shapes
    for kind in ("biphasic", "monophasic"):
        assert peak_didt_A_per_s(kind, 5000.0, 280.0) == pytest.approx(5000 * 2 * np.pi / 280e-6, rel=1e-3)
    t, i, didt = pulse("monophasic", 1000.0, 200.0, damping_per_us=0.005)
    assert i.min() >= -1e-9 and i.max() == pytest.approx(1000.0)  # never reverses
    t, i, didt = pulse("biphasic", 1000.0, 200.0)
    assert i.min() == pytest.approx(-1000.0, rel=1e-3)  # reverses once
    np.testing.assert_allclose(np.gradient(i, t * 1e-6)[5:-5], didt[5:-5], rtol=2e-3, atol=1e3)
    p = _protocol()
    p = p.model_copy(update={"stimulator": p.stimulator.model_copy(
        update={"didt_A_per_us": None, "peak_current_A": 5000.0, "period_us": 280.0})})
    assert simulate(p, mesh=sphere3).didt_A_per_s == pytest.approx(5000 * 2 * np.pi / 280e-6, rel=1e-3)


def test_tms_model_matches_simulate_and_its_adjoint_functional(sphere3, rng):
    """Many-placement model: same field as a full run; the adjoint ROI mean equals the direct one."""
    from stimsim.planning.optimize import roi_elements
    from stimsim.tms import TMSModel

    model = TMSModel(_protocol(), mesh=sphere3, rtol=1e-10)
    roi = roi_elements(sphere3, [10, -5, 78], 10, [3])
    q = model.target_functional(roi)
    w = sphere3.volumes_mm3[roi]
    for k in range(3):  # later solves start from the projection onto earlier solutions
        center = np.array([0, 0, 95.0]) + rng.normal(0, 8, 3)
        direction = [np.cos(k), np.sin(k), 0.0]
        e = model.efield(model.placement(center, direction).matrix)
        ref = simulate(_protocol(center=center, direction=direction, solver={"recovery": "none", "rtol": 1e-10}),
                       mesh=sphere3)
        assert rel_l2(e, ref.E) < 1e-6  # the model's primary field is single precision
        mean_direct = np.average(e[roi], axis=0, weights=w)
        mean_adjoint = np.einsum("cnk,nk->c", q, model.dadt(model.placement(center, direction).matrix))
        assert np.linalg.norm(mean_adjoint - mean_direct) < 1e-7 * np.linalg.norm(mean_direct)
    assert len(model.iterations) == 3
    swept = list(model.sweep([model.placement([0, 0, 95], [0, 1, 0]).matrix], elements=roi, progress=False))
    ref = simulate(_protocol(solver={"recovery": "none", "rtol": 1e-10}), mesh=sphere3)
    assert len(swept) == 1 and rel_l2(swept[0], ref.E[roi]) < 1e-6


def test_single_precision_primary_field(sphere3):
    from stimsim.fem.primary import dipole_dadt

    coil = load_coil(_protocol().coil)
    placement = place_coil(sphere3, [0, 0, 95], [0, 1, 0], 4.0)
    pos, mom = coil.transformed(placement.matrix)
    double = dipole_dadt(sphere3.nodes, pos, mom, 1e6)
    single = dipole_dadt(sphere3.nodes, pos, mom, 1e6, precision="single")
    numpy = dipole_dadt(sphere3.nodes[:500], pos, mom, 1e6, backend="numpy")
    assert single.dtype == np.float64
    assert rel_l2(single, double) < 1e-6 and rel_l2(single, double) > 0  # really computed in float32
    assert rel_l2(numpy, double[:500]) < 1e-12
    with pytest.raises(ValueError, match="precision"):
        dipole_dadt(sphere3.nodes, pos, mom, 1e6, precision="half")


def test_tms_model_reuses_earlier_solutions(sphere3):
    """The projected start of a repeated placement is already the solution; a dropped one is not."""
    from stimsim.tms import TMSModel

    model = TMSModel(_protocol(), mesh=sphere3, rtol=1e-8, reuse=2, backend="amg")  # CG: what reuse seeds
    mats = [model.placement(c, d).matrix for c, d in (([0, 0, 95], [0, 1, 0]), ([30, 0, 90], [1, 0, 0]),
                                                      ([0, 30, 90], [1, 1, 0]))]
    first = [model.efield(m) for m in mats]
    cold = model.iterations[0]
    assert cold > 5
    e_last = model.efield(mats[2])  # still in the 2-vector basis: converged from the start
    assert model.iterations[-1] <= 1 and rel_l2(e_last, first[2]) < 1e-6
    model.efield(mats[0])  # pushed out of the ring by the later two: a real solve again
    assert model.iterations[-1] > cold // 2


def test_tms_model_on_a_given_head_model(sphere3, sphere3_result):
    """TMSModel takes a HeadModel (no second read and assembly): it uses the head's conductivities and
    the factorisation already set up on it, and gives the field of a full run at that placement."""
    from stimsim.head_model import HeadModel
    from stimsim.tms import TMSModel

    head = HeadModel.from_mesh(sphere3, COND)
    factor = head.solver(head.grounded_system(), "splu")
    model = TMSModel(_protocol(), head=head, backend="splu", rtol=1e-10)
    assert model.head is head and model._factor is factor
    e = model.efield(sphere3_result.placement.matrix)
    assert rel_l2(e, sphere3_result.E) < 1e-5


def test_run_without_numba_kernels_gives_the_same_fields(sphere3, monkeypatch):
    """The numpy fallback (stored gradients, numpy assembly, pyamg's sequential V-cycle) and the
    numba kernels agree (CG to rtol 1e-10: the two V-cycles differ, so at TMS's default 1e-6 the
    fields would differ by the CG tolerance)."""
    import stimsim.fem.kernels as kernels
    import stimsim.fem.p1_numba as p1_numba

    def kernel_used(*args, **kwargs):
        raise AssertionError("a numba kernel ran although numba was switched off")

    import stimsim.fem.amg_kernels as amg_numba

    tight = _protocol(solver={"rtol": 1e-10})
    with_kernels = simulate(tight, mesh=sphere3)
    monkeypatch.setattr(kernels, "HAVE_NUMBA", False)
    for name in ("stiffness_matrix", "load_from_nodal_field", "tms_fields"):
        monkeypatch.setattr(p1_numba, name, kernel_used)
    for name in ("hybrid_gs", "matvec", "spgemm"):
        monkeypatch.setattr(amg_numba, name, kernel_used)
    fallback = simulate(tight, mesh=sphere3)
    for name in ("E", "J", "E_recovered"):
        a, b = getattr(fallback, name), getattr(with_kernels, name)
        assert np.abs(a - b).max() < 1e-6 * np.abs(b).max(), name


def test_tms_with_the_direct_solver_equals_amg_cg(sphere3, sphere3_result):
    """solver: {method: direct} (a factorisation) gives the AMG-CG field (CG stops at rtol 1e-6)."""
    direct = simulate(_protocol(solver={"method": "direct"}), mesh=sphere3)
    assert direct.solve_info.method != "amg-cg"
    rel = np.linalg.norm(direct.E - sphere3_result.E) / np.linalg.norm(direct.E)
    assert rel < 1e-5
