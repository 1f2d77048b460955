"""Linear solvers for the symmetric positive definite FEM systems.

* :func:`amg_cg` (default): conjugate gradients preconditioned by a pyamg smoothed
  aggregation V-cycle; fast and lean on memory for one or a few right-hand sides.
* :class:`FactorizedSolver`: set up once, solve many right-hand sides (leadfields,
  TMS position sweeps).  Backends: ``"pardiso"`` (pypardiso, optional extra ``fast``),
  ``"cholmod"`` (scikit-sparse, optional), ``"splu"`` (scipy SuperLU: fine for small meshes
  only; it does not finish on ~100k-node 3-D meshes) and ``"amg"`` (one AMG hierarchy reused
  by CG for every right-hand side; always available).  ``"auto"`` factorises where that
  pays and fits in memory (:func:`pick_backend`).

Solvers are plain callables ``solver(A, b) -> (x, SolveInfo)`` in the spirit of
scikit-fem, so callers choose them without flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .._logging import logger
from ..errors import SolverError


@dataclass(frozen=True)
class SolveInfo:
    """How a solve went: method, CG iterations (0 for direct), final relative residual, seconds."""

    method: str
    iterations: int
    residual: float
    setup_s: float
    solve_s: float

    def as_dict(self) -> dict:
        return {"method": self.method, "iterations": self.iterations, "relative_residual": self.residual,
                "setup_s": round(self.setup_s, 4), "solve_s": round(self.solve_s, 4)}


def _relres(a, x, b) -> float:
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(b - a @ x) / nb) if nb > 0 else 0.0


def single_threaded_blas():
    """Context limiting OpenBLAS (and other BLAS) to one thread, when threadpoolctl is installed.

    AMG set-up and CG use BLAS only on vectors and thin (n, k) blocks, which are memory-bound:
    more BLAS threads do not make them faster, and idle OpenBLAS threads spin and take the core
    that a TMS run's dA/dt thread needs.  The limit is process-wide while the context lasts.
    Measurements: docs/solver.md.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def amg_hierarchy(a: sp.csr_matrix, backend: str = "auto"):
    """:func:`build_amg_hierarchy` with one BLAS thread, its sparse products by numba's parallel
    kernel when numba is used (``backend``: ``"auto"``, ``"numba"``, ``"numpy"``)."""
    from .kernels import numba_ready

    matmul = None
    if numba_ready(backend):
        from .amg_kernels import spgemm as matmul
    with single_threaded_blas():
        return build_amg_hierarchy(a, matmul=matmul)


#: the hierarchy's default options (part of the V-cycle cache key)
HIERARCHY_OPTIONS = {"theta": 0.02, "omega": 4 / 3, "max_coarse": 500, "max_levels": 10}


def build_amg_hierarchy(a: sp.csr_matrix, theta: float = HIERARCHY_OPTIONS["theta"],
                         omega: float = HIERARCHY_OPTIONS["omega"], max_coarse: int = HIERARCHY_OPTIONS["max_coarse"],
                         max_levels: int = HIERARCHY_OPTIONS["max_levels"], matmul=None):
    """Smoothed-aggregation AMG hierarchy (Vanek, Mandel & Brezina 1996) built in CSR.

    The steps are pyamg's ``smoothed_aggregation_solver`` with B = constants (the Laplacian's
    near-nullspace): symmetric strength of connection, standard aggregation, tentative
    prolongator T, Jacobi-smoothed P = (I - omega / rho D^-1 A) T, R = P^T, A_c = R A P; the
    V-cycle is pyamg's.  Unlike pyamg's own driver, the products are CSR (pyamg keeps T and P
    as BSR with 1x1 blocks) and rho(D^-1 A) is estimated by 10 Lanczos steps on the symmetric
    D^-1/2 A D^-1/2 from a fixed start (:func:`largest_eigenvalue_scaled`): a cheaper set-up,
    and the same hierarchy on every run.

    ``theta``: strength threshold; a small one keeps aggregates from spanning high-contrast
    interfaces (skull 1:100).  ``omega``: weight of the Jacobi prolongation smoother.
    ``max_coarse``, ``max_levels``: coarsening stops at this size or depth.  ``matmul``: the
    sparse product ``(A, B) -> A @ B`` (default SciPy's; :func:`stimsim.fem.amg_kernels.spgemm`
    sums each entry in the same order, so the hierarchy is the same).  A forward
    Gauss-Seidel sweep before and a backward one after the coarse correction keep the V-cycle
    symmetric (as CG needs) at half the cost of symmetric sweeps.

    Measurements behind these choices: docs/solver.md.
    """
    from pyamg.aggregation import fit_candidates, standard_aggregation
    from pyamg.multilevel import MultilevelSolver
    from pyamg.relaxation.smoothing import change_smoothers
    from pyamg.strength import symmetric_strength_of_connection

    if matmul is None:
        def matmul(x, y):
            return x @ y

    levels = [MultilevelSolver.Level()]
    levels[0].A = sp.csr_matrix(a)
    candidates = np.ones((a.shape[0], 1))
    while levels[-1].A.shape[0] > max_coarse and len(levels) < max_levels:
        fine = levels[-1].A
        aggregates, _ = standard_aggregation(symmetric_strength_of_connection(fine, theta=theta))
        tentative, candidates = fit_candidates(aggregates, candidates)
        tentative = sp.csr_matrix(tentative)
        diag = fine.diagonal()
        rho = largest_eigenvalue_scaled(fine, 1.0 / np.sqrt(diag))
        p = (tentative - sp.diags(omega / rho / diag) @ matmul(fine, tentative)).tocsr()
        p.sort_indices()  # canonical, as the coarse matrices: both product kernels give the same cycle
        r = p.T.tocsr()
        levels[-1].P, levels[-1].R = p, r
        levels.append(MultilevelSolver.Level())
        coarse = matmul(r, matmul(fine, p)).tocsr()
        coarse.sort_indices()  # the next aggregation visits neighbours in stored order: make it canonical
        levels[-1].A = coarse
    ml = MultilevelSolver(levels, coarse_solver="pinv")
    change_smoothers(ml, presmoother=("gauss_seidel", {"sweep": "forward"}),
                     postsmoother=("gauss_seidel", {"sweep": "backward"}))
    return ml


def largest_eigenvalue_scaled(a: sp.csr_matrix, d_inv_sqrt: np.ndarray, steps: int = 10) -> float:
    """Largest eigenvalue of D^-1/2 A D^-1/2 (= rho(D^-1 A) for SPD A) by ``steps`` Lanczos steps.

    The Ritz value approaches from below; 10 steps are close enough for the smoother's weight
    (measurements: docs/solver.md).
    """
    n = a.shape[0]
    q = np.random.default_rng(0).random(n)  # fixed start: the same hierarchy every run
    q /= np.linalg.norm(q)
    q_prev = np.zeros(n)
    alphas, betas = [], []
    beta = 0.0
    for _ in range(min(steps, n)):
        w = d_inv_sqrt * (a @ (d_inv_sqrt * q))
        alpha = float(q @ w)
        w -= alpha * q + beta * q_prev
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        if beta <= 1e-14 * abs(alpha):  # invariant subspace found: the Ritz values are exact
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    k = len(alphas)
    t = np.diag(alphas) + np.diag(betas[:k - 1], 1) + np.diag(betas[:k - 1], -1)
    return float(np.linalg.eigvalsh(t)[-1])


def amg_preconditioner(ml, backend: str = "auto"):
    """CG's preconditioner for an AMG hierarchy: one V-cycle (:mod:`stimsim.fem.amg_cycle`), with
    numba's parallel kernels when numba is used (``backend``: ``"auto"``, ``"numba"``, ``"numpy"``)."""
    from .amg_cycle import make_vcycle
    from .kernels import numba_ready

    with single_threaded_blas():  # the coarse inverse: the same bits whatever the BLAS thread count
        return make_vcycle(ml, numba_ready(backend))


#: systems with at least this many unknowns keep their V-cycle in the on-disk cache (smaller ones build
#: it in a few tens of ms); at most AMG_CACHE_MAX_BYTES of such files are kept (least recently used go)
AMG_CACHE_MIN_N = 20_000
AMG_CACHE_MAX_BYTES = 2**30


def amg_preconditioner_for(a: sp.csr_matrix, backend: str = "auto", cache: bool | None = None):
    """The AMG V-cycle of matrix ``a`` (:func:`amg_hierarchy` + :func:`amg_preconditioner`).

    ``cache`` (default: on for the numba cycle of systems with at least :data:`AMG_CACHE_MIN_N`
    unknowns): read the cycle from the cache folder (``amg/`` in :func:`stimsim.cache.cache_dir`),
    keyed by a hash of the matrix's exact bytes and the cycle's format, or build it and store it
    there.  A TMS run's grounded system depends only on the head and its conductivities, so every
    later run on that head skips the set-up; a tDCS system also on its electrodes.  A damaged or
    unreadable file is rebuilt; a cache folder that cannot be written is skipped.
    """
    from . import amg_cycle
    from .amg_cycle import VCycle
    from .kernels import numba_ready

    kernels = numba_ready(backend)
    if cache is None:
        cache = kernels and a.shape[0] >= AMG_CACHE_MIN_N

    def build():
        return amg_preconditioner(amg_hierarchy(a, backend), backend)

    if not (cache and kernels):
        return build()
    import hashlib

    import pyamg

    from ..cache import cache_dir, prune
    from ..outputs import atomic_file

    a = a if sp.isspmatrix_csr(a) else sp.csr_matrix(a)
    h = hashlib.blake2b(digest_size=16)
    # the key: the matrix's bytes, and everything else that shapes the cycle (hierarchy options, block
    # rules, pyamg's aggregation, the cycle's array format)
    h.update(f"{VCycle.FORMAT} {amg_cycle.MAX_BLOCKS} {amg_cycle.MIN_BLOCK_ROWS} {amg_cycle.MAX_OFFBLOCK_FRACTION} "
             f"{HIERARCHY_OPTIONS} pyamg {pyamg.__version__} {a.shape} {a.data.dtype} {a.indices.dtype}".encode())
    for part in (a.indptr, a.indices, a.data):
        h.update(np.ascontiguousarray(part).data)
    try:
        folder = cache_dir("amg")
    except Exception as exc:  # no home folder (a service account): no cache, the same cycle
        logger.info("AMG cache unavailable (%s)", exc)
        return build()
    path = folder / f"{h.hexdigest()}.npz"
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as stored:  # our handle: closed on errors
            cycle = VCycle.from_arrays(dict(stored), a)
    except FileNotFoundError:
        pass
    except Exception as exc:  # damaged, truncated, from another version or another matrix: rebuild, replace
        logger.info("AMG cache file %s unusable (%s): rebuilt", path.name, exc)
    else:
        try:
            path.touch()  # recently used: kept by prune()
        except OSError:  # a read-only cache is still read
            pass
        logger.info("AMG V-cycle read from the cache (%s)", path.name)
        return cycle
    cycle = build()
    try:
        with atomic_file(path, suffix=".npz") as tmp:
            np.savez(tmp, **cycle.arrays())
        prune(folder, AMG_CACHE_MAX_BYTES, "*.npz")
    except (OSError, RuntimeError) as exc:  # a read-only or full cache folder costs only the reuse
        logger.info("AMG cache not written (%s)", exc)
    return cycle


def pcg(a, b, precond, rtol, maxiter, x0=None):
    """Preconditioned conjugate gradients; returns ``(x, iterations)``.

    Stops when ``||b - A x|| < rtol ||b||`` (the recursively updated residual, as SciPy's ``cg``
    does, whose iteration counts this matches).  ``precond``: a callable ``r -> z`` (e.g.
    :func:`amg_preconditioner`), a SciPy ``LinearOperator`` or None.  The products with ``a`` use
    the preconditioner's parallel copy of the matrix when it was built for the same matrix.
    """
    if precond is None:
        apply = np.array
    elif callable(precond):
        apply = precond
    else:
        apply = precond.matvec
    own = getattr(precond, "matvec_for", None)
    matvec = (own(a) if own is not None else None) or (lambda v: a @ v)
    b = np.asarray(b, dtype=float)
    tol = rtol * float(np.linalg.norm(b))
    if not np.any(b):
        return np.zeros_like(b), 0
    with single_threaded_blas():
        if x0 is None or not np.any(x0):
            x = np.zeros_like(b)
            r = b.copy()
        else:
            x = np.array(x0, dtype=float)
            r = b - matvec(x)
        p = rho_prev = None
        for it in range(maxiter + 1):
            rnorm = float(np.linalg.norm(r))
            if rnorm < tol or rnorm == 0.0:
                return x, it
            if it == maxiter:
                break
            z = apply(r)
            rho = float(r @ z)
            if p is None:
                p = np.array(z)
            else:
                p *= rho / rho_prev
                p += z
            q = matvec(p)
            curvature = float(p @ q)
            if not curvature > 0.0:  # breakdown: A or the preconditioner is not positive definite
                raise SolverError(
                    f"CG broke down after {it} iterations (p.Ap = {curvature:.3g}): the system is not positive "
                    "definite; check the mesh for disconnected pieces and the conductivities for zeros")
            alpha = rho / curvature
            x += alpha * p
            r -= alpha * q
            rho_prev = rho
    raise SolverError(
        f"CG did not converge to rtol={rtol:g} in {maxiter} iterations (relative residual "
        f"{_relres(a, x, b):.2e}); check the mesh for disconnected pieces or raise solver.maxiter"
    )


def amg_cg(rtol: float = 1e-10, maxiter: int = 1000, cache: bool = False):
    """Return a solver ``f(A, b) -> (x, SolveInfo)``: CG preconditioned by an AMG V-cycle (rtol relative
    to ||b||).

    ``b`` may be a function returning the right-hand side: it is called after the AMG
    hierarchy is built, so the memory its inputs need is not held during the set-up.  ``cache``:
    keep the V-cycle on disk (:func:`amg_preconditioner_for`) for systems that later runs share (a
    TMS run's grounded head); a tDCS system is its montage's own, so it is not stored by default.
    """

    def solve(a: sp.csr_matrix, b):
        t0 = time.perf_counter()
        precond = amg_preconditioner_for(a, cache=None if cache else False)
        setup_s = time.perf_counter() - t0
        if callable(b):
            b = b()
        t1 = time.perf_counter()
        if not np.any(b):
            return np.zeros_like(b), SolveInfo("amg-cg", 0, 0.0, setup_s, 0.0)
        x, it = pcg(a, b, precond, rtol, maxiter)
        t2 = time.perf_counter()
        info = SolveInfo("amg-cg", it, _relres(a, x, b), setup_s, t2 - t1)
        logger.info("AMG-CG: %d iterations, relative residual %.2e, setup %.2f s, solve %.2f s",
                    it, info.residual, info.setup_s, info.solve_s)
        return x, info

    return solve


#: default CG tolerance per modality (relative to ||b||).  TMS: 1e-6 changes E by <= 7.4e-7 on
#: Colin27 against 1e-12, far below the discretisation error (README, "How it works")
DEFAULT_RTOL = {"tdcs": 1e-10, "tacs": 1e-10, "ti": 1e-10, "tms": 1e-6}


def solver_for(options, matrix: sp.csr_matrix, kind: str = "tdcs"):
    """The solver ``f(matrix, b) -> (x, SolveInfo)`` a protocol's ``solver:`` options ask for.

    ``options``: an object with ``method`` (``"direct"`` or ``"cg"``), ``rtol`` (None: the
    modality's default, :data:`DEFAULT_RTOL`) and ``maxiter``.
    """
    if options.method == "direct":
        return FactorizedSolver(matrix)
    # a TMS run's grounded system is the head's: its V-cycle is kept on disk for the next run on that head
    return amg_cg(rtol=options.rtol or DEFAULT_RTOL[kind], maxiter=options.maxiter, cache=kind == "tms")


#: the automatic choice factorises (PARDISO, else CHOLMOD) systems up to this many unknowns: the fill
#: of 3-D meshes grows about as n^(4/3), so 250k unknowns is ~1.5 GB (PARDISO's memory reports:
#: docs/solver.md).  Larger systems reuse one AMG hierarchy instead (memory ~ the matrix).
FACTORIZE_MAX_N = 250_000

#: backend -> the optional module it needs
_OPTIONAL = {"pardiso": ("pypardiso", "pypardiso", "fast"), "cholmod": ("sksparse.cholmod", "scikit-sparse", None)}


def backend_available(backend: str) -> bool:
    """Whether a :class:`FactorizedSolver` backend can be used here (the optional package imports)."""
    if backend not in _OPTIONAL:
        return backend in ("splu", "amg")
    try:
        __import__(_OPTIONAL[backend][0])
    except Exception:  # ImportError, or a broken MKL/SuiteSparse install (OSError)
        return False
    return True


def pick_backend(n: int) -> str:
    """The backend ``"auto"`` chooses for ``n`` unknowns (see :class:`FactorizedSolver`)."""
    if n <= FACTORIZE_MAX_N:
        for name in ("pardiso", "cholmod"):
            if backend_available(name):
                return name
    return "splu" if n < 30_000 else "amg"


class FactorizedSolver:
    """Factorise (or build a preconditioner) once, then solve many right-hand sides.

    Parameters
    ----------
    a : SPD sparse matrix
    backend : ``"auto"``, ``"pardiso"``, ``"cholmod"``, ``"splu"`` or ``"amg"``.
        ``"auto"``: a sparse factorisation (PARDISO from the optional ``pypardiso``, ``pip install
        "stimsim[fast]"``; else CHOLMOD from scikit-sparse) for up to :data:`FACTORIZE_MAX_N`
        unknowns, else SuperLU for small systems (< 30k unknowns) and one reused AMG hierarchy
        otherwise.  A factorisation costs more once, then each solve is much cheaper than an
        AMG-CG solve (timings: docs/solver.md).
    rtol, maxiter : tolerance and iteration limit of the ``"amg"`` backend (CG)

    Attributes
    ----------
    backend : the backend used
    setup_s : seconds spent factorising (or building the AMG hierarchy)
    memory_bytes : memory the solver holds or peaked at: PARDISO's own report (peak of analysis
        and factorisation), CHOLMOD's factor, SuperLU's L and U, the AMG hierarchy's matrices
    """

    def __init__(self, a: sp.csr_matrix, backend: str = "auto", rtol: float = 1e-10, maxiter: int = 1000):
        allowed = ("auto", "pardiso", "cholmod", "splu", "amg")
        if backend not in allowed:
            raise SolverError(f"solver backend {backend!r} is not one of {allowed}")
        self.a = a if sp.isspmatrix_csr(a) else sp.csr_matrix(a)  # the same object: __call__ checks identity
        self.rtol = rtol
        self.maxiter = maxiter
        self.iterations: list[int] = []  # CG iterations per column ("amg" only)
        self.memory_bytes = 0
        if backend == "auto":
            backend = pick_backend(self.a.shape[0])
        t0 = time.perf_counter()
        self._solve = self._setup(backend)
        self.setup_s = time.perf_counter() - t0
        self.backend = backend
        logger.info("factorised solver %s: setup %.2f s, %.0f MiB", backend, self.setup_s, self.memory_bytes / 2**20)

    def _setup(self, backend):
        a = self.a
        if backend in _OPTIONAL and not backend_available(backend):
            module, package, extra = _OPTIONAL[backend]
            hint = f' (pip install "stimsim[{extra}]")' if extra else ""
            raise SolverError(f"solver backend {backend!r} needs the optional package {package}{hint}")
        if backend == "pardiso":
            import weakref

            import pypardiso

            solver = pypardiso.PyPardisoSolver(mtype=2)  # real symmetric positive definite: Cholesky
            upper = sp.triu(a, format="csr")  # mtype 2 reads the upper triangle only
            upper.sort_indices()
            solver.factorize(upper)
            # MKL's own report in KB: peak of the analysis (iparm 15) or permanent + factorisation (16 + 17)
            ip = solver.iparm
            self.memory_bytes = 1024 * max(int(ip[14]), int(ip[15]) + int(ip[16]))
            # pypardiso frees MKL's memory only when asked: do it when this solver goes away
            self._finalizer = weakref.finalize(self, solver.free_memory, True)
            return lambda b: solver.solve(upper, b)
        if backend == "cholmod":
            from sksparse.cholmod import cholesky

            factor = cholesky(a.tocsc())
            try:
                self.memory_bytes = int(factor.L().data.nbytes * 1.5)  # values + row indices
            except Exception:  # pragma: no cover - depends on the scikit-sparse version
                pass
            return factor
        if backend == "splu":
            lu = spla.splu(a.tocsc(), permc_spec="MMD_AT_PLUS_A")
            self.memory_bytes = int((lu.L.nnz + lu.U.nnz) * 12)
            return lu.solve
        # not cached on disk: TI, multichannel tACS and planning systems belong to one montage
        precond = amg_preconditioner_for(a, cache=False)
        self.memory_bytes = precond.nbytes

        def amg_solve(b):
            cols = [b] if b.ndim == 1 else list(b.T)
            xs = []
            for col in cols:
                x, it = pcg(a, col, precond, self.rtol, self.maxiter)
                self.iterations.append(it)
                xs.append(x)
            return xs[0] if b.ndim == 1 else np.column_stack(xs)

        return amg_solve

    def solve(self, b: np.ndarray) -> np.ndarray:
        """Solve for one right-hand side (n,) or many (n, k)."""
        b = np.asarray(b, float)
        if b.shape[0] != self.a.shape[0] or b.ndim not in (1, 2):
            raise SolverError(f"right-hand side of shape {b.shape} for a system of {self.a.shape[0]} unknowns")
        if b.ndim == 2 and b.shape[1] == 0:
            return np.zeros_like(b)
        return np.asarray(self._solve(b)).reshape(b.shape)

    def close(self) -> None:
        """Release the factorisation now (PARDISO's memory is outside Python's heap)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        self._solve = None

    def __call__(self, a, b):
        """Use as a solver callable (``a`` must be the factorised matrix; ``b`` an array or a function)."""
        if callable(b):
            b = b()
        if a is not self.a and (a.shape != self.a.shape or (a != self.a).nnz):
            raise SolverError("FactorizedSolver called with a different matrix than it factorised")
        t0 = time.perf_counter()
        n_it = len(self.iterations)
        x = self.solve(b)
        return x, SolveInfo("amg-cg" if self.backend == "amg" else self.backend, sum(self.iterations[n_it:]), _relres(self.a, x, b), self.setup_s,
                            time.perf_counter() - t0)
