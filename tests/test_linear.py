"""The CSR smoothed-aggregation hierarchy against pyamg's own driver, and its eigenvalue estimate."""

import numpy as np
import pyamg
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from stimsim.fem.assembly import P1Geometry, assemble_stiffness
from stimsim.fem.electrodes import grounded_system
from stimsim.fem.linear import build_amg_hierarchy, largest_eigenvalue_scaled, pcg, amg_cg


@pytest.fixture(scope="module")
def head_system():
    from stimsim.mesh import read_mesh
    from stimsim.simulation import resolve_head

    mesh, _ = read_mesh(resolve_head("sphere"))
    sigma = np.select([mesh.tet_tags == 3, mesh.tet_tags == 4], [0.33, 0.0041], 0.465)  # skull 1:80
    k = assemble_stiffness(P1Geometry.from_mesh(mesh), sigma)
    return grounded_system(k, node=0).matrix


def test_eigenvalue_estimate_is_close_and_from_below(head_system):
    d = head_system.diagonal()
    scaled = sp.diags(1 / np.sqrt(d)) @ head_system @ sp.diags(1 / np.sqrt(d))
    exact = eigsh(scaled, k=1, which="LA", return_eigenvectors=False)[0]
    est = largest_eigenvalue_scaled(head_system, 1 / np.sqrt(d))
    assert 0.9 * exact < est <= exact * (1 + 1e-12)


def test_eigenvalue_estimate_of_a_tiny_matrix_is_exact():
    a = sp.csr_matrix(np.diag([1.0, 3.0, 7.0]))
    assert largest_eigenvalue_scaled(a, np.ones(3), steps=10) == pytest.approx(7.0, rel=1e-12)


def test_hierarchy_matches_pyamg_driver(head_system, rng):
    ours = build_amg_hierarchy(head_system)
    ref = pyamg.smoothed_aggregation_solver(
        head_system, B=np.ones((head_system.shape[0], 1)), symmetry="hermitian",
        strength=("symmetric", {"theta": 0.02}), presmoother=("gauss_seidel", {"sweep": "forward"}),
        postsmoother=("gauss_seidel", {"sweep": "backward"}), max_coarse=500)
    assert [lv.A.shape[0] for lv in ours.levels] == [lv.A.shape[0] for lv in ref.levels]
    b = head_system @ rng.standard_normal(head_system.shape[0])
    iters = []
    for ml in (ours, ref):
        x, it = pcg(head_system, b, ml.aspreconditioner(cycle="V"), 1e-10, 500)
        assert np.linalg.norm(head_system @ x - b) <= 1e-10 * np.linalg.norm(b) * 1.01
        iters.append(it)
    assert iters[0] <= iters[1] + 1, iters


def test_hierarchy_is_deterministic(head_system):
    a, b = build_amg_hierarchy(head_system), build_amg_hierarchy(head_system)
    for la, lb in zip(a.levels, b.levels):
        assert (la.A != lb.A).nnz == 0


def test_amg_cg_solves_to_the_requested_tolerance(head_system, rng):
    x_true = rng.standard_normal(head_system.shape[0])
    b = head_system @ x_true
    x, info = amg_cg(rtol=1e-12)(head_system, b)
    assert info.residual < 1e-12
    assert np.linalg.norm(x - x_true) < 1e-6 * np.linalg.norm(x_true)


# --- the V-cycle applied as CG's preconditioner (stimsim.fem.amg_cycle) ---------------------------


def _cycles(head_system):
    from stimsim.fem.amg_cycle import PlainVCycle, VCycle

    ml = build_amg_hierarchy(head_system)
    return ml, PlainVCycle(ml), VCycle(ml)


def test_plain_cycle_is_pyamgs_cycle(head_system, rng):
    ml, plain, _ = _cycles(head_system)
    r = rng.standard_normal(head_system.shape[0])
    ref = ml.aspreconditioner(cycle="V") @ r
    # the same sweeps; only the coarsest solve differs (Cholesky instead of pyamg's pseudo-inverse)
    assert np.linalg.norm(plain(r) - ref) <= 1e-10 * np.linalg.norm(ref)


@pytest.mark.parametrize("which", ["plain", "parallel"])
def test_cycle_is_symmetric_positive_definite(head_system, rng, which):
    """CG needs a symmetric positive definite preconditioner: <x, M y> = <M x, y> and <x, M x> > 0."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    from stimsim.fem.amg_cycle import PlainVCycle, VCycle

    perm = reverse_cuthill_mckee(head_system, symmetric_mode=True)
    ml = build_amg_hierarchy(head_system[perm][:, perm].tocsr())  # numbered by neighbourhood: two blocks
    cycle = PlainVCycle(ml) if which == "plain" else VCycle(ml)
    n = head_system.shape[0]
    for _ in range(3):
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        mx, my = cycle(x), cycle(y)
        assert abs(x @ my - mx @ y) <= 1e-10 * np.linalg.norm(x) * np.linalg.norm(my)
        assert x @ mx > 0


def test_parallel_cycle_smoother_blocks_and_thread_count(head_system, rng, monkeypatch):
    """Rows numbered by neighbourhood (reverse Cuthill-McKee) get parallel smoother blocks, whose result
    does not depend on the number of threads, bit for bit; one block is the sequential Gauss-Seidel
    cycle; the sphere's gmsh numbering (blocks loosely coupled) gets one block."""
    import numba
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    import stimsim.fem.amg_cycle as amg_cycle

    perm = reverse_cuthill_mckee(head_system, symmetric_mode=True)
    ordered = head_system[perm][:, perm].tocsr()
    ml = build_amg_hierarchy(ordered)
    parallel, plain = amg_cycle.VCycle(ml), amg_cycle.PlainVCycle(ml)
    assert len(parallel.levels[0][3]) - 1 == 2  # 4.6k rows: two blocks of >= MIN_BLOCK_ROWS
    assert len(amg_cycle.VCycle(build_amg_hierarchy(head_system)).levels[0][3]) - 1 == 1
    r = rng.standard_normal(ordered.shape[0])
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one_thread = parallel(r)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one_thread, parallel(r))
    assert np.linalg.norm(one_thread - plain(r)) > 1e-6 * np.linalg.norm(plain(r))  # really another smoother
    monkeypatch.setattr(amg_cycle, "MAX_BLOCKS", 1)
    sequential = amg_cycle.VCycle(ml)
    assert np.linalg.norm(sequential(r) - plain(r)) <= 1e-10 * np.linalg.norm(plain(r))
    x, it = pcg(ordered, ordered @ r, parallel, 1e-10, 200)  # and CG converges with the blocks
    assert np.linalg.norm(x - r) <= 1e-6 * np.linalg.norm(r)


def test_pcg_counts_iterations_as_scipy_cg(head_system, rng):
    from scipy.sparse.linalg import cg

    ml = build_amg_hierarchy(head_system)
    m = ml.aspreconditioner(cycle="V")
    b = head_system @ rng.standard_normal(head_system.shape[0])
    count = []
    ref, status = cg(head_system, b, rtol=1e-8, atol=0.0, M=m, callback=lambda _: count.append(1))
    x, it = pcg(head_system, b, m, 1e-8, 500)
    assert status == 0 and it == len(count)
    assert np.linalg.norm(x - ref) <= 1e-12 * np.linalg.norm(ref)
    x0 = ref + 1e-3 * rng.standard_normal(ref.size)  # a start close to the solution takes fewer steps
    assert pcg(head_system, b, m, 1e-8, 500, x0=x0)[1] < it
    with pytest.raises(Exception, match="did not converge"):
        pcg(head_system, b, m, 1e-14, 2)


def test_vcycle_disk_cache(head_system, rng, tmp_path, monkeypatch):
    """A stored V-cycle is read back bit for bit; a damaged file is rebuilt; another matrix is another
    file; an unwritable cache folder only costs the reuse."""
    from stimsim.fem.amg_cycle import VCycle
    from stimsim.fem.linear import amg_preconditioner_for, single_threaded_blas

    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path / "cache"))
    r = rng.standard_normal(head_system.shape[0])
    with single_threaded_blas():  # as amg_preconditioner_for builds it: the same bits
        fresh = VCycle(build_amg_hierarchy(head_system))(r)
    first = amg_preconditioner_for(head_system, cache=True)
    files = list((tmp_path / "cache" / "amg").glob("*.npz"))
    assert len(files) == 1
    second = amg_preconditioner_for(head_system, cache=True)
    assert second is not first and not hasattr(second, "__dict__") or second.levels is not first.levels
    np.testing.assert_array_equal(second(r), fresh)
    np.testing.assert_array_equal(first(r), fresh)
    files[0].write_bytes(files[0].read_bytes()[:1000])  # truncated
    np.testing.assert_array_equal(amg_preconditioner_for(head_system, cache=True)(r), fresh)
    assert files[0].stat().st_size > 1000  # replaced by a whole file
    scaled = (head_system * 2.0).tocsr()
    np.testing.assert_allclose(amg_preconditioner_for(scaled, cache=True)(r), fresh / 2, rtol=1e-12, atol=0)
    assert len(list((tmp_path / "cache" / "amg").glob("*.npz"))) == 2
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("STIMSIM_CACHE", str(blocked))
    np.testing.assert_array_equal(amg_preconditioner_for(head_system, cache=True)(r), fresh)
    # a readable file of another matrix under this matrix's name: refused, rebuilt (the kernels do
    # not check bounds, so it must never reach them)
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path / "cache"))
    other = build_amg_hierarchy((head_system[:3000, :3000]).tocsr())
    with open(files[0], "wb") as fh:
        np.savez(fh, **VCycle(other).arrays())
    np.testing.assert_array_equal(amg_preconditioner_for(head_system, cache=True)(r), fresh)


def test_pcg_edge_cases(head_system, rng):
    """rtol 0 iterates to maxiter and fails (as SciPy's cg); an indefinite system stops with a SolverError."""
    from stimsim.errors import SolverError

    b = head_system @ rng.standard_normal(head_system.shape[0])
    with pytest.raises(SolverError, match="did not converge"):
        pcg(head_system, b, None, 0.0, 5)
    assert pcg(head_system, np.zeros_like(b), None, 1e-10, 5)[1] == 0
    indefinite = sp.diags([1.0, -1.0, 2.0]).tocsr()
    with pytest.raises(SolverError, match="not positive definite"):
        pcg(indefinite, np.array([1.0, 1.0, 1.0]), None, 1e-12, 10)


def test_coarse_inverse_of_a_singular_matrix_is_the_pseudo_inverse():
    """An ungrounded Laplacian (constants in its null space): Cholesky may 'succeed' on round-off, the
    pseudo-inverse is what a V-cycle needs there (pyamg's choice)."""
    from stimsim.fem.amg_cycle import _coarse_inverse

    n = 40
    lap = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tolil()
    lap[0, 0] = lap[-1, -1] = 1.0
    lap = lap.tocsr()
    np.testing.assert_allclose(_coarse_inverse(lap), np.linalg.pinv(lap.toarray()), atol=1e-8)
    grounded = lap[1:, 1:]
    inv = _coarse_inverse(grounded)
    np.testing.assert_array_equal(inv, inv.T)
    np.testing.assert_allclose(inv @ grounded.toarray(), np.eye(n - 1), atol=1e-9)


def test_prune_keeps_the_recently_used(tmp_path):
    import os

    from stimsim.cache import prune

    for k in range(5):
        p = tmp_path / f"{k}.npz"
        p.write_bytes(b"x" * 100)
        os.utime(p, (1000 + k, 1000 + k))
    os.utime(tmp_path / "0.npz", (2000, 2000))  # read recently
    prune(tmp_path, 300, "*.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "3.npz", "4.npz"]
