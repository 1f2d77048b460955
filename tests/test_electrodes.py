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
