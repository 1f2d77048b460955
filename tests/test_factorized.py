"""FactorizedSolver: every backend against a reference solve, the automatic choice, forcing, the fallback
without the optional packages, and CG that does not converge."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp

from stimsim.errors import SolverError
from stimsim.fem import linear
from stimsim.fem.assembly import P1Geometry, assemble_stiffness
from stimsim.fem.electrodes import grounded_system
from stimsim.fem.linear import FactorizedSolver, backend_available, pcg, pick_backend


@pytest.fixture(scope="module")
def system():
    """The embedded sphere's grounded stiffness matrix, skull 1:80 (4.5k unknowns)."""
    from stimsim.mesh import read_mesh
    from stimsim.simulation import resolve_head

    mesh, _ = read_mesh(resolve_head("sphere"))
    sigma = np.select([mesh.tet_tags == 3, mesh.tet_tags == 4], [0.33, 0.0041], 0.465)
    a = grounded_system(assemble_stiffness(P1Geometry.from_mesh(mesh), sigma), node=0).matrix
    rng = np.random.default_rng(3)
    b = a @ rng.standard_normal((a.shape[0], 3))
    reference = sp.linalg.splu(a.tocsc()).solve(b)  # SuperLU: exact to rounding on 4.5k unknowns
    return a, b, reference


def rel(x, y):
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


BACKENDS = ["splu", "amg", "pardiso", "cholmod"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_matches_the_reference_solve(system, backend):
    if not backend_available(backend):
        pytest.skip(f"optional package for {backend!r} not installed")
    a, b, reference = system
    solver = FactorizedSolver(a, backend=backend, rtol=1e-12)
    assert solver.backend == backend and solver.memory_bytes > 0
    tol = 1e-9 if backend == "amg" else 1e-12
    assert rel(solver.solve(b[:, 0]), reference[:, 0]) < tol  # one right-hand side (n,)
    x = solver.solve(b)  # a block (n, k)
    assert x.shape == b.shape and rel(x, reference) < tol
    x1, info = solver(a, b[:, 1])  # as a solver callable
    assert info.method == {"amg": "amg-cg"}.get(backend, backend) and info.residual < 1e-11 and rel(x1, reference[:, 1]) < tol
    solver.close()


def test_pardiso_is_installed_where_the_dev_extra_is():
    """`pip install -e .[dev]` (what CI runs) brings pypardiso, so the fast path is exercised there."""
    import os

    if not os.environ.get("CI"):
        pytest.skip("checked in CI only")
    assert backend_available("pardiso")


def test_auto_picks_a_factorisation_when_installed_and_small_enough(system, monkeypatch):
    a = system[0]
    have = backend_available("pardiso")
    assert pick_backend(a.shape[0]) == ("pardiso" if have else "cholmod" if backend_available("cholmod") else "splu")
    assert FactorizedSolver(a).backend == pick_backend(a.shape[0])
    monkeypatch.setattr(linear, "FACTORIZE_MAX_N", 1000)  # too big to factorise: one reused AMG hierarchy
    assert pick_backend(a.shape[0]) == "splu"  # (SuperLU below 30k unknowns)
    assert pick_backend(200_000) == "amg"


def test_forcing_a_backend_overrides_the_automatic_choice(system):
    a, b, reference = system
    solver = FactorizedSolver(a, backend="amg", rtol=1e-12)
    assert solver.backend == "amg"
    solver.solve(b)
    assert len(solver.iterations) == 3 and all(it > 0 for it in solver.iterations)
    with pytest.raises(SolverError, match="not one of"):
        FactorizedSolver(a, backend="mumps")


def test_without_the_optional_packages_auto_falls_back_and_forcing_says_what_to_install(system, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypardiso", None)  # `import pypardiso` now raises ImportError
    monkeypatch.setitem(sys.modules, "sksparse", None)
    monkeypatch.setitem(sys.modules, "sksparse.cholmod", None)
    a, b, reference = system
    assert not backend_available("pardiso") and not backend_available("cholmod")
    assert pick_backend(a.shape[0]) == "splu" and pick_backend(100_000) == "amg"
    solver = FactorizedSolver(a)
    assert solver.backend == "splu" and rel(solver.solve(b), reference) < 1e-12
    with pytest.raises(SolverError, match=r"pypardiso.*stimsim\[fast\]"):
        FactorizedSolver(a, backend="pardiso")
    with pytest.raises(SolverError, match="scikit-sparse"):
        FactorizedSolver(a, backend="cholmod")


def test_leadfield_backends_agree(sphere3_mesh):
    """A leadfield by factorisation equals one by AMG-CG (rtol 1e-10) to the CG tolerance."""
    from stimsim.planning import compute_leadfield

    pos = {"a": (0, 0, 95), "b": (95, 0, 0), "c": (0, 95, 0), "REF": (0, 0, -95)}
    cond = {3: 1.0, 4: 0.01, 5: 1.0}
    amg = compute_leadfield(sphere3_mesh, pos, "REF", conductivities=cond, backend="amg", progress=False, block=2)
    auto = compute_leadfield(sphere3_mesh, pos, "REF", conductivities=cond, progress=False)
    assert amg.meta["backend"] == "amg" and auto.meta["backend"] == pick_backend(4000)  # a small system
    assert rel(auto.fields.astype(float), amg.fields.astype(float)) < 1e-6  # float32 fields, CG to 1e-10


def test_cg_that_does_not_converge_raises(system):
    a, b, _ = system
    with pytest.raises(SolverError, match="did not converge"):
        pcg(a, b[:, 0], None, 1e-12, 3)
    with pytest.raises(SolverError, match="did not converge"):
        FactorizedSolver(a, backend="amg", rtol=1e-14, maxiter=2).solve(b[:, 0])


def test_head_model_keeps_one_solver_per_boundary_condition(sphere3_mesh):
    """The head model sets a solver up once per boundary condition and hands the same one to every user:
    two leadfields on one HeadModel factorise once, a TMSModel on it reuses the grounded factorisation,
    and a different electrode set gets its own solver."""
    from stimsim.fem import ElectrodeSpec, electrode_system, place_electrodes
    from stimsim.head_model import HeadModel
    from stimsim.planning.leadfield import compute_leadfield

    head = HeadModel.from_mesh(sphere3_mesh)
    pos = {"A": (0.0, 0.0, 95.0), "B": (95.0, 0.0, 0.0), "REF": (0.0, 0.0, -95.0)}
    first = compute_leadfield(head, pos, "REF", backend="splu", progress=False)
    n_solvers = sum(1 for k in head._cache if k[0] == "solver")
    second = compute_leadfield(head, pos, "REF", backend="splu", progress=False)
    assert sum(1 for k in head._cache if k[0] == "solver") == n_solvers == 1
    np.testing.assert_array_equal(first.fields, second.fields)

    grounded = head.grounded_system()
    assert head.grounded_system() is grounded and head.solver(grounded, "splu") is head.solver(grounded, "splu")
    specs = [ElectrodeSpec("A", pos["A"], 1e-3, "point"), ElectrodeSpec("B", pos["B"], -1e-3, "point")]
    other = electrode_system(head.stiffness, place_electrodes(head.mesh, specs))
    assert head.solver(other, "splu") is not head.solver(grounded, "splu")
    head.release_solvers()
    assert not head._cache
