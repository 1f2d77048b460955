"""The AMG V-cycle used as CG's preconditioner, without pyamg's per-call overhead.

pyamg's ``MultilevelSolver.aspreconditioner`` runs ``solve(maxiter=1)``, which computes two
residual norms (two extra products with the fine matrix) and copies the vectors on every call:
about a quarter of each CG iteration on Colin27.  Two cycles apply the same hierarchy
(:func:`stimsim.fem.linear.build_amg_hierarchy`) without that:

* :class:`VCycle` (numba): the fine-level Gauss-Seidel is "hybrid" (Baker, Falgout, Kolev & Yang
  2011, the smoother of hypre's BoomerAMG): the rows are cut into a fixed number of contiguous
  blocks swept in parallel, each block in order, coupled to the other blocks through the values
  from before the sweep; each row's diagonal is raised by the absolute sum of its couplings to other
  blocks (the "l1" term), which keeps the smoother convergent and the V-cycle symmetric positive
  definite whatever the blocks.  A level whose numbering would couple its blocks strongly (more than
  :data:`MAX_OFFBLOCK_FRACTION` of its entries between blocks) gets one sequential sweep instead.
  The blocks depend on the matrix only (not the thread count), so the result is the same on every
  machine.  Matrix products run in parallel over rows.
* :class:`PlainVCycle` (numpy + pyamg's compiled Gauss-Seidel): pyamg's sweeps, one thread; used when
  numba is not available.

Both apply a forward sweep before and a backward sweep after the coarse correction (so the cycle
is symmetric, as CG needs) and solve the coarsest level exactly (:func:`_coarse_inverse`).
Measurements: docs/solver.md.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

#: rows per smoother block are at least this many; at most :data:`MAX_BLOCKS` blocks per level
MIN_BLOCK_ROWS = 2048
MAX_BLOCKS = 4
#: a level whose blocks would leave more than this fraction of its matrix entries coupling two blocks
#: (rows not numbered by neighbourhood, e.g. a gmsh sphere: 46 %, against 6.5 % on Colin27) is
#: smoothed by one sequential sweep: the loosely coupled blocks cost more iterations than they save
MAX_OFFBLOCK_FRACTION = 0.1


def _coarse_inverse(a) -> np.ndarray:
    """Inverse of the coarsest matrix (a few hundred rows): by Cholesky where it is positive definite
    (a grounded system), else the pseudo-inverse, as pyamg's ``"pinv"`` coarse solver."""
    dense = a.toarray()
    try:
        factor = sla.cho_factor(dense)
    except np.linalg.LinAlgError:
        return sla.pinv(dense)
    pivots = np.diag(factor[0]) ** 2
    if pivots.min() <= 1e-7 * pivots.max():  # numerically singular (an ungrounded Neumann problem)
        return sla.pinv(dense)
    inv = sla.cho_solve(factor, np.eye(dense.shape[0]))
    return 0.5 * (inv + inv.T)  # exactly symmetric, as CG's preconditioner must be


class PlainVCycle:
    """pyamg's V-cycle (forward / backward Gauss-Seidel, an exact coarsest solve), lean."""

    def __init__(self, ml):
        from pyamg import amg_core

        self._gs = amg_core.gauss_seidel
        self.levels = ml.levels
        self.coarse = _coarse_inverse(ml.levels[-1].A)

    @property
    def nbytes(self) -> int:
        """Bytes of the hierarchy's matrices and the coarse inverse."""
        mats = [m for lv in self.levels for m in (lv.A, getattr(lv, "P", None), getattr(lv, "R", None)) if m is not None]
        return self.coarse.nbytes + sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in mats)

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return self._cycle(0, np.asarray(b, float))

    def _cycle(self, k: int, b: np.ndarray) -> np.ndarray:
        if k == len(self.levels) - 1:
            return self.coarse @ b
        lv = self.levels[k]
        a = lv.A
        n = a.shape[0]
        x = np.zeros_like(b)
        self._gs(a.indptr, a.indices, a.data, x, b, 0, n, 1)
        coarse_x = self._cycle(k + 1, lv.R @ (b - a @ x))
        x += lv.P @ coarse_x
        self._gs(a.indptr, a.indices, a.data, x, b, n - 1, -1, -1)
        return x


class _Csr:
    """A CSR matrix with unsigned 32-bit indices: numba then indexes without negative-index checks
    (measured 2x faster, as fast as scipy's compiled product)."""

    __slots__ = ("ptr", "idx", "val", "n")

    @classmethod
    def from_parts(cls, ptr, idx, val) -> "_Csr":
        self = cls.__new__(cls)
        self.ptr, self.idx, self.val = (np.ascontiguousarray(x) for x in (ptr, idx, val))
        if self.ptr.dtype != np.uint32 or self.idx.dtype != np.uint32 or self.val.dtype != np.float64:
            raise ValueError("not a uint32/float64 CSR matrix")
        self.n = len(self.ptr) - 1
        return self

    def __init__(self, m):
        m = m.tocsr()
        if m.nnz >= 2**32:  # pragma: no cover - far beyond any head mesh
            raise ValueError("matrix too large for 32-bit indices")
        self.ptr = m.indptr.astype(np.uint32)
        self.idx = m.indices.astype(np.uint32)
        self.val = np.ascontiguousarray(m.data, dtype=np.float64)
        self.n = m.shape[0]


def smoother_blocks(n: int) -> np.ndarray:
    """Row boundaries of the hybrid smoother's blocks for ``n`` rows (fixed: same on any machine)."""
    k = int(min(MAX_BLOCKS, max(1, n // MIN_BLOCK_ROWS)))
    return (np.arange(k + 1, dtype=np.int64) * n) // k


class VCycle:
    """The V-cycle of an AMG hierarchy with numba kernels (hybrid l1 Gauss-Seidel, parallel products).

    ``ml``: a pyamg ``MultilevelSolver`` (its levels' ``A``, ``P``, ``R``).  Calling it applies one
    cycle to a vector from a zero start: ``z = M^-1 r``.
    """

    def __init__(self, ml):
        from . import amg_kernels as k

        self._k = k
        self.levels = []
        for lv in ml.levels[:-1]:
            a = _Csr(lv.A)
            bounds = smoother_blocks(a.n)
            l1, off = k.offblock_l1(a.ptr, a.idx, a.val, bounds)
            if off > MAX_OFFBLOCK_FRACTION * len(a.idx):
                bounds, l1 = bounds[[0, -1]], np.zeros(a.n)
            scale = 1.0 / (lv.A.diagonal() + l1)
            self.levels.append((a, _Csr(lv.P), _Csr(lv.R), bounds, scale))
        self.coarse = _coarse_inverse(ml.levels[-1].A)
        self._fine = ml.levels[0].A

    @property
    def nbytes(self) -> int:
        """Bytes of the cycle's arrays (its copy of the fine matrix's indices included)."""
        return sum(v.nbytes for v in self.arrays().values()) + self.levels[0][0].idx.nbytes + self.levels[0][0].ptr.nbytes \
            if self.levels else self.coarse.nbytes

    #: bump when the cycle's arrays or the hierarchy that makes them change: older cache files are rebuilt
    FORMAT = "vcycle-2"

    def arrays(self) -> dict:
        """The cycle as named arrays (the fine matrix itself left out), for :meth:`from_arrays`."""
        out = {"coarse": self.coarse, "n_levels": np.array(len(self.levels))}
        for i, (a, p, r, bounds, scale) in enumerate(self.levels):
            mats = (("P", p), ("R", r)) + ((("A", a),) if i > 0 else ())
            for name, m in mats:
                out[f"{i}{name}_ptr"], out[f"{i}{name}_idx"], out[f"{i}{name}_val"] = m.ptr, m.idx, m.val
            out[f"{i}_bounds"], out[f"{i}_scale"] = bounds, scale
        return out

    @classmethod
    def from_arrays(cls, arrays, fine) -> "VCycle":
        """The cycle :meth:`arrays` described, on the fine matrix ``fine`` it was built for."""
        from . import amg_kernels as k

        self = cls.__new__(cls)
        self._k, self._fine, self.levels = k, fine, []
        n = fine.shape[0]
        for i in range(int(arrays["n_levels"])):
            def csr(name):
                return _Csr.from_parts(*(arrays[f"{i}{name}_{part}"] for part in ("ptr", "idx", "val")))
            a = _Csr(fine) if i == 0 else csr("A")
            p, r = csr("P"), csr("R")
            bounds, scale = np.asarray(arrays[f"{i}_bounds"], np.int64), np.asarray(arrays[f"{i}_scale"], np.float64)
            # the kernels do not check bounds: a file that does not fit this matrix must not reach them
            if not (a.n == n == p.n == len(scale) == bounds[-1] and bounds[0] == 0 and np.all(np.diff(bounds) >= 0)
                    and a.idx.max(initial=0) < n and r.idx.max(initial=0) < n and a.ptr[-1] == len(a.idx)
                    and p.ptr[-1] == len(p.idx) and r.ptr[-1] == len(r.idx)):
                raise ValueError(f"level {i} does not fit the matrix")
            n = r.n
            if p.idx.max(initial=0) >= n:
                raise ValueError(f"level {i} does not fit the matrix")
            self.levels.append((a, p, r, bounds, scale))
        self.coarse = np.asarray(arrays["coarse"], np.float64)
        if self.coarse.shape != (n, n):
            raise ValueError("the coarse inverse does not fit the matrix")
        return self

    def matvec_for(self, a):
        """``x -> a @ x`` by the parallel kernel on the cycle's own copy of the fine matrix, if ``a``
        is that matrix (one copy in the processor's cache, not two); else None."""
        if not self.levels or not _same_matrix(a, self._fine):
            return None
        m, k = self.levels[0][0], self._k

        def apply(x):
            y = np.empty(m.n)
            k.matvec(m.ptr, m.idx, m.val, np.ascontiguousarray(x, dtype=np.float64), y, y, k.SET)
            return y

        return apply

    def __call__(self, b: np.ndarray) -> np.ndarray:
        k = self._k
        b = np.ascontiguousarray(b, dtype=np.float64)
        rhs, xs = [b], []
        for a, _, r, bounds, scale in self.levels:
            x = np.zeros(a.n)
            k.hybrid_gs(a.ptr, a.idx, a.val, scale, x, rhs[-1], bounds, True)
            res = np.empty(a.n)
            k.matvec(a.ptr, a.idx, a.val, x, res, rhs[-1], k.RESIDUAL)
            coarse_b = np.empty(r.n)
            k.matvec(r.ptr, r.idx, r.val, res, coarse_b, coarse_b, k.SET)
            rhs.append(coarse_b)
            xs.append(x)
        coarse_x = self.coarse @ rhs[-1]
        for (a, p, _, bounds, scale), x, b_level in zip(self.levels[::-1], xs[::-1], rhs[-2::-1]):
            k.matvec(p.ptr, p.idx, p.val, coarse_x, x, x, k.ADD)
            k.hybrid_gs(a.ptr, a.idx, a.val, scale, x, b_level, bounds, False)
            coarse_x = x
        return coarse_x


def _same_matrix(a, b) -> bool:
    if a is b or getattr(a, "data", None) is b.data:
        return True
    return (sp.isspmatrix_csr(a) and a.shape == b.shape and a.nnz == b.nnz and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))


def make_vcycle(ml, kernels: bool):
    """The preconditioner for a hierarchy: :class:`VCycle` with numba kernels, else :class:`PlainVCycle`."""
    return VCycle(ml) if kernels else PlainVCycle(ml)
