"""The numba P1 kernels (no stored gradients) against the numpy assembly they replace in a TMS run.

Independent checks too: the stiffness matrix reproduces the energy of linear fields
exactly (sum sigma V |grad u|^2), and the right-hand side of a constant source equals its
divergence flux.
"""

import numpy as np
import pytest

pytest.importorskip("numba")

from stimsim.mesh import Mesh  # noqa: E402
from stimsim.fem import p1_numba as kernels  # noqa: E402
from stimsim.fem.assembly import P1Geometry, assemble_load_from_element_vectors, assemble_stiffness  # noqa: E402
from stimsim.fem.fields import element_efield, element_mean  # noqa: E402


@pytest.fixture(scope="module")
def head():
    from stimsim.mesh import read_mesh
    from stimsim.simulation import resolve_head

    mesh, _ = read_mesh(resolve_head("sphere"))  # 3 tissues, 22.7k tets
    sigma = np.select([mesh.tet_tags == 3, mesh.tet_tags == 4], [0.33, 0.01], 0.465)
    return mesh, sigma, P1Geometry.from_mesh(mesh)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_stiffness_matches_numpy_assembly(head):
    mesh, sigma, geometry = head
    k_numba = kernels.stiffness_matrix(mesh.nodes, mesh.tets, sigma)
    k_numpy = assemble_stiffness(geometry, sigma)
    assert k_numba.shape == k_numpy.shape and k_numba.nnz == k_numpy.nnz
    assert np.array_equal(k_numba.indptr, k_numpy.indptr) and np.array_equal(k_numba.indices, k_numpy.indices)
    assert _rel(k_numba.data, k_numpy.data) < 1e-12
    assert k_numba.has_sorted_indices
    assert np.abs(k_numba.sum(axis=1)).max() < 1e-12 * np.abs(k_numba.diagonal()).max()  # Laplacian rows


def test_stiffness_energy_of_linear_field(head):
    mesh, sigma, _ = head
    k = kernels.stiffness_matrix(mesh.nodes, mesh.tets, sigma)
    grad = np.array([3.0, -1.0, 2.0])  # V/m
    u = mesh.nodes * 1e-3 @ grad
    exact = float(np.sum(sigma * mesh.volumes_mm3 * 1e-9) * grad @ grad)
    assert u @ (k @ u) == pytest.approx(exact, rel=1e-10)


def test_load_matches_numpy_and_flux(head, rng):
    mesh, sigma, geometry = head
    nodal = rng.standard_normal((mesh.n_nodes, 3))
    b = kernels.load_from_nodal_field(mesh.nodes, mesh.tets, sigma, nodal)
    ref = assemble_load_from_element_vectors(geometry, -sigma[:, None] * element_mean(nodal, mesh.tets))
    assert _rel(b, ref) < 1e-12
    # a uniform field in a uniform conductor: interior rows cancel, the total is zero
    uniform = np.tile([0, 0, 1.0], (mesh.n_nodes, 1))
    b1 = kernels.load_from_nodal_field(mesh.nodes, mesh.tets, np.ones(mesh.n_tets), uniform)
    assert abs(b1.sum()) < 1e-12 * np.abs(b1).max()
    interior = np.setdiff1d(np.arange(mesh.n_nodes), mesh.boundary_nodes)
    assert np.abs(b1[interior]).max() < 1e-12 * np.abs(b1).max()


def test_fields_match_numpy(head, rng):
    mesh, _, geometry = head
    v = rng.standard_normal(mesh.n_nodes)
    nodal = rng.standard_normal((mesh.n_nodes, 3))
    minus_grad, total = kernels.tms_fields(mesh.nodes, mesh.tets, v, nodal)
    ref = element_efield(geometry, v)
    assert _rel(minus_grad, ref) < 1e-13
    assert _rel(total, ref - element_mean(nodal, mesh.tets)) < 1e-13


def test_single_tet_and_int64_input():
    nodes = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])  # mm
    mesh = Mesh(nodes, np.array([[0, 1, 2, 3]]), np.array([1]))
    k = kernels.stiffness_matrix(mesh.nodes, np.array([[0, 1, 2, 3]], np.int64), np.array([2.0]))
    ref = assemble_stiffness(P1Geometry.from_mesh(mesh), np.array([2.0]))
    assert np.allclose(k.toarray(), ref.toarray(), rtol=1e-14, atol=0)


def test_volumes_only_geometry_refuses_gradients(head):
    mesh = head[0]
    g = P1Geometry.volumes_only(mesh)
    assert np.allclose(g.volumes_m3, head[2].volumes_m3, rtol=1e-12)
    with pytest.raises(ValueError, match="volumes only"):
        g.gradient(np.zeros(mesh.n_nodes))


def test_potential_efield_is_minus_the_gradient(head, rng):
    mesh, _, geometry = head
    v = rng.standard_normal(mesh.n_nodes)
    assert _rel(kernels.potential_efield(mesh.nodes, mesh.tets, v), element_efield(geometry, v)) < 1e-12
    slope = np.array([2.0, -1.0, 0.5])  # a linear potential (V per mm): E is exactly -slope * 1000 V/m
    e = element_efield(P1Geometry.volumes_only(mesh), mesh.nodes @ slope, mesh.nodes)
    assert np.abs(e + 1e3 * slope).max() < 1e-8 * 1e3
    with pytest.raises(ValueError, match="nodes_mm"):
        element_efield(P1Geometry.volumes_only(mesh), v)


def test_tdcs_run_with_and_without_numba(monkeypatch):
    """A tDCS run keeps no gradients with numba (kernels for the matrix and E, the parallel V-cycle);
    the numpy fallback stores them and runs pyamg's sequential cycle: the same fields to CG's tolerance."""
    import stimsim.fem.kernels as fem_kernels
    from stimsim.protocol import validate_protocol
    from stimsim.simulation import simulate

    protocol = validate_protocol({"kind": "tdcs", "head": "sphere", "electrodes": [
        {"name": "a", "position": [0, 0, 95], "current_mA": 1.0, "shape": "disc", "diameter_mm": 25},
        {"name": "c", "position": [95, 0, 0], "current_mA": -1.0, "shape": "disc", "diameter_mm": 25}]})
    def no_gradients(*args, **kwargs):
        raise AssertionError("the numba run stored element gradients")

    with monkeypatch.context() as m:
        m.setattr(P1Geometry, "from_mesh", no_gradients)
        with_kernels = simulate(protocol)
    monkeypatch.setattr(fem_kernels, "HAVE_NUMBA", False)
    fallback = simulate(protocol)
    for name in ("E", "E_recovered", "potential_V"):
        a, b = getattr(with_kernels, name), getattr(fallback, name)
        assert np.linalg.norm(a - b) <= 1e-8 * np.linalg.norm(b), name
    assert with_kernels.electrode_currents_A == pytest.approx(fallback.electrode_currents_A, rel=1e-8)


def test_a_numba_that_does_not_import_falls_back_to_numpy(tmp_path):
    """numba installed but broken (e.g. built for another NumPy): a tDCS run still completes on the numpy
    path and says why once; the fields equal a normal run's to the CG tolerance."""
    import json
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 1.99 or less (test double)")\n')
    protocol = tmp_path / "p.yaml"
    protocol.write_text("kind: tdcs\nhead: sphere\nelectrodes:\n"
                        "  - {name: a, position: [0, 0, 95], current_mA: 1.0, shape: disc, diameter_mm: 25}\n"
                        "  - {name: c, position: [95, 0, 0], current_mA: -1.0, shape: disc, diameter_mm: 25}\n")
    results = {}
    for name, extra in (("broken", str(tmp_path / "site")), ("normal", None)):
        env = dict(os.environ)
        if extra:
            env["PYTHONPATH"] = extra + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-m", "stimsim.cli", "run", str(protocol), "--out", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        results[name] = json.loads((tmp_path / name / "summary.json").read_text())
        if extra:
            assert "numba does not import" in proc.stderr + proc.stdout
    for tissue, stats in results["normal"]["magnE_V_per_m"].items():
        assert results["broken"]["magnE_V_per_m"][tissue]["p99"] == pytest.approx(stats["p99"], rel=1e-6)
