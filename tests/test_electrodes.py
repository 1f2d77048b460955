import numpy as np
import pytest

from stimsim.errors import ProtocolError
from stimsim.fem.assembly import P1Geometry, assemble_stiffness
from stimsim.fem.electrodes import ElectrodeSpec, electrode_system, place_electrodes
from stimsim.fem.linear import FactorizedSolver, amg_cg


def _pair(shape="point", **kw):
    return [ElectrodeSpec("a", (0.0, 0.0, 95.0), 1e-3, shape, **kw),
            ElectrodeSpec("c", (95.0, 0.0, 0.0), -1e-3, shape, **kw)]


def test_point_electrode_is_nearest_scalp_node(sphere3_mesh):
    placed = place_electrodes(sphere3_mesh, _pair())
    for e, target in zip(placed, ([0, 0, 95], [95, 0, 0])):
        d = np.linalg.norm(sphere3_mesh.nodes[sphere3_mesh.boundary_nodes] - target, axis=1)
        assert e.center_node == sphere3_mesh.boundary_nodes[np.argmin(d)]
        assert np.linalg.norm(sphere3_mesh.nodes[e.center_node]) == pytest.approx(95, abs=1e-6)


def test_currents_must_sum_to_zero(sphere3_mesh):
    specs = _pair()
    specs[1] = ElectrodeSpec("c", (95.0, 0.0, 0.0), -0.5e-3)
    with pytest.raises(ProtocolError, match="sum to zero"):
        place_electrodes(sphere3_mesh, specs)


def test_far_electrode_says_the_distance(sphere3_mesh):
    specs = _pair()
    specs[0] = ElectrodeSpec("a", (0.0, 0.0, 120.0), 1e-3)
    with pytest.raises(ProtocolError, match=r"25\.0 mm from the scalp"):
        place_electrodes(sphere3_mesh, specs)


def test_overlapping_pads_are_refused(sphere3_mesh):
    specs = [ElectrodeSpec("a", (0.0, 0.0, 95.0), 1e-3, "disc", diameter_mm=40),
             ElectrodeSpec("c", (10.0, 0.0, 94.5), -1e-3, "disc", diameter_mm=40)]
    with pytest.raises(ProtocolError, match="overlaps"):
        place_electrodes(sphere3_mesh, specs)


def test_disc_and_rect_patches_have_the_right_size_and_orientation(fine_sphere_mesh):
    mesh = fine_sphere_mesh
    d = 30.0
    (disc, _) = place_electrodes(mesh, [ElectrodeSpec("a", (0.0, 0.0, 95.0), 1e-3, "disc", diameter_mm=d),
                                        ElectrodeSpec("c", (0.0, 0.0, -95.0), -1e-3)])
    # triangles wholly inside the disc under-fill it by about one edge length at the rim
    assert 0.55 * np.pi * d**2 / 4 < disc.area_mm2 < 1.05 * np.pi * d**2 / 4
    p = mesh.nodes[disc.nodes]
    assert np.all(np.hypot(p[:, 0], p[:, 1]) <= d / 2 + 1e-6)
    assert np.hypot(p[:, 0], p[:, 1]).max() > d / 2 - 5  # reaches the rim

    for direction, long_axis in (((1.0, 0.0, 0.0), 0), ((0.0, 1.0, 0.0), 1)):
        (rect, _) = place_electrodes(mesh, [
            ElectrodeSpec("a", (0.0, 0.0, 95.0), 1e-3, "rect", size_mm=(60.0, 20.0), direction=direction),
            ElectrodeSpec("c", (0.0, 0.0, -95.0), -1e-3)])
        q = mesh.nodes[rect.nodes]
        extent = q.max(axis=0) - q.min(axis=0)
        assert extent[long_axis] > 45 and extent[1 - long_axis] < 21


def test_equipotential_patch_delivers_its_current(sphere3_mesh):
    mesh = sphere3_mesh
    geometry = P1Geometry.from_mesh(mesh)
    sigma = np.where(mesh.tet_tags == 4, 0.01, 1.0)
    k = assemble_stiffness(geometry, sigma)
    placed = place_electrodes(mesh, [ElectrodeSpec("a", (0.0, 0.0, 95.0), 2e-3, "disc", diameter_mm=40),
                                     ElectrodeSpec("b", (95.0, 0.0, 0.0), -0.5e-3),
                                     ElectrodeSpec("c", (0.0, 95.0, 0.0), -1.5e-3, "rect", size_mm=(40, 30))])
    system = electrode_system(k, placed)
    x, info = amg_cg(rtol=1e-12)(system.matrix, system.rhs([e.current_A for e in placed]))
    v = system.expand(x)
    flux = k @ v
    for e in placed:
        assert flux[e.nodes].sum() == pytest.approx(e.current_A, rel=1e-6)
        assert np.ptp(v[e.nodes]) < 1e-12  # equipotential
    interior = np.ones(mesh.n_nodes, bool)
    for e in placed:
        interior[e.nodes] = False
    assert np.abs(flux[interior]).max() < 1e-8 * 2e-3
    # the direct path gives the same potentials
    x2 = FactorizedSolver(system.matrix, backend="splu").solve(system.rhs([e.current_A for e in placed]))
    np.testing.assert_allclose(x2, x, rtol=0, atol=1e-8 * np.abs(x).max())


def test_grounding_in_place_equals_the_copy():
    import scipy.sparse as sp

    from stimsim.fem.electrodes import grounded_system

    rng = np.random.default_rng(3)
    m = sp.random(40, 40, density=0.2, random_state=4, format="csr")
    k = (m + m.T + sp.diags(rng.uniform(1, 2, 40))).tocsr()  # stored diagonal, canonical
    k.sum_duplicates()
    k.sort_indices()
    for node in (0, 17, 39):
        copy = grounded_system(k, node).matrix
        inplace = grounded_system(k.copy(), node, inplace=True).matrix
        assert abs(copy - inplace).max() == 0.0
        assert inplace[node, node] == 1.0
        assert inplace[[node], :].count_nonzero() == 1 and inplace[:, [node]].count_nonzero() == 1


# ------------------------------------------------------------------------------ layered (sponge) model


def _sponge_protocol(model="sponge", thickness=4.0, sponge_S_per_m=1.0, diameter=50.0):
    from stimsim.protocol import validate_protocol

    pad = {"shape": "disc", "diameter_mm": diameter, "model": model}
    if model == "sponge":
        pad["thickness_mm"] = thickness
    return validate_protocol({
        "kind": "tdcs", "head": "sphere", "conductivities": {3: 0.33, 4: 0.0042, 5: 0.33, 500: sponge_S_per_m},
        "electrodes": [dict(pad, name="anode", position=[0, 0, 95], current_mA=1.0),
                       dict(pad, name="cathode", position=[95, 0, 0], current_mA=-1.0)]})


def test_sponge_layer_is_a_conforming_shell_of_the_pad(sphere3_mesh):
    """The layer is a shell of the given thickness over the pad's triangles, positively oriented and
    conforming (each inner face shared by exactly two elements), and the head's own mesh is unchanged."""
    from stimsim.fem.sponge import SPONGE_TAG, add_sponges
    from stimsim.mesh import check_mesh

    specs = [ElectrodeSpec("a", (0.0, 0.0, 95.0), 1e-3, "disc", diameter_mm=50.0),
             ElectrodeSpec("c", (95.0, 0.0, 0.0), -1e-3, "disc", diameter_mm=50.0)]
    placed = place_electrodes(sphere3_mesh, specs)
    t = 4.0
    mesh, on_top = add_sponges(sphere3_mesh, placed, [t, None])
    check_mesh(mesh)  # positive volumes, known layout
    np.testing.assert_array_equal(mesh.tets[:sphere3_mesh.n_tets], sphere3_mesh.tets)
    sponge = mesh.tet_tags == SPONGE_TAG
    # a spherical shell sector over the pad: area x thickness x (1 + t/R + t^2/(3R^2)) with R = 95 mm
    r = 95.0
    expected = placed[0].area_mm2 * t * (1 + t / r + t**2 / (3 * r**2))
    assert mesh.volumes_mm3[sponge].sum() == pytest.approx(expected, rel=0.02)
    faces = np.sort(np.concatenate([mesh.tets[sponge][:, [0, 1, 2]], mesh.tets[sponge][:, [0, 1, 3]],
                                    mesh.tets[sponge][:, [0, 2, 3]], mesh.tets[sponge][:, [1, 2, 3]]]), axis=1)
    _, count = np.unique(faces, axis=0, return_counts=True)
    assert count.max() == 2  # no face shared by three elements: the cut is conforming
    # the electrode sits on top of the layer, t mm above the skin; the other pad is unchanged
    top = mesh.nodes[on_top[0].nodes]
    assert np.linalg.norm(top, axis=1) == pytest.approx(r + t, abs=0.3)
    assert on_top[1] is placed[1]


def test_sponge_of_high_conductivity_is_the_equipotential_patch():
    """A sponge that conducts 10^5 times better than the scalp is itself an equipotential: the brain
    field equals the patch model's.  A saline sponge spreads the current, lowering the peak skin current
    density at the rim against the patch, and every model delivers the set current into the skin."""
    from stimsim.analytic.metrics import rel_l2
    from stimsim.simulation import simulate

    patch = simulate(_sponge_protocol(model="patch"))
    hard = simulate(_sponge_protocol(sponge_S_per_m=3.3e4))
    saline = simulate(_sponge_protocol(sponge_S_per_m=1.0))
    brain = patch.mesh.tet_tags == 3
    n = patch.mesh.n_tets
    assert rel_l2(hard.E[:n][brain], patch.E[brain]) < 2e-3
    assert rel_l2(saline.E[:n][brain], patch.E[brain]) > 5 * rel_l2(hard.E[:n][brain], patch.E[brain])
    for name in ("anode", "cathode"):
        assert saline.skin_current_density[name]["max"] < patch.skin_current_density[name]["max"]
        for result in (patch, hard, saline):
            s = result.skin_current_density[name]
            assert np.isfinite(s["mean"]) and s["max"] >= s["mean"]
            assert abs(result.electrode_currents_A[name]) == pytest.approx(1e-3, rel=1e-6)


def test_sponge_needs_a_pad_and_a_thickness():
    with pytest.raises(ProtocolError, match="thickness_mm"):
        _sponge_protocol(thickness=0)


def test_summary_reports_nominal_and_meshed_area_and_uses_the_nominal_one(tmp_path):
    """summary.json gives both areas; the mean current density it reports is the one the safety check
    computes (current over the nominal pad area), and the skin current density of the solved field."""
    from stimsim.results import summarize
    from stimsim.safety import check_result
    from stimsim.simulation import simulate

    result = simulate(_sponge_protocol(model="patch", diameter=50.0))
    summary = summarize(result)
    anode = summary["electrodes"][0]
    assert anode["nominal_area_mm2"] == pytest.approx(np.pi * 25.0**2)
    assert 0 < anode["meshed_area_mm2"] < anode["nominal_area_mm2"]
    assert anode["mean_current_density_A_per_m2"] == pytest.approx(1e-3 / (np.pi * 0.025**2))
    report = check_result(result).as_dict()
    values = [c["value"] for c in report["results"]
              if c["rule_id"] == "tes.electrode.current_density" and c["subject"] == "anode"]
    unit = {"mA/cm^2": 10.0, "A/m^2": 1.0}[next(c["unit"] for c in report["results"]
                                              if c["rule_id"] == "tes.electrode.current_density")]
    assert len(values) == 1 and values[0] * unit == pytest.approx(anode["mean_current_density_A_per_m2"], rel=1e-9)
    skin = anode["skin_current_density_A_per_m2"]
    assert skin["max"] >= skin["p95"] >= skin["mean"] * 0.5 and skin["max_on_rim"]
