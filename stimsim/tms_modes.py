"""Whole-cortex TMS fields in milliseconds: a reduced basis per head and coil (design: docs/tms_modes.md).

The grey-matter field of a placement is linear in the coil's dA/dt, and dA/dt inside the head is a
harmonic function (each Cartesian component of a dipole's vector potential solves Laplace's equation
away from the dipole), so it is fixed by its values on the scalp.  The map

    dA/dt on the scalp nodes  --harmonic extension-->  dA/dt at every node  --FEM-->  E at the GM nodes

is therefore one linear operator ``M`` of the head.  Its range, for coil-like inputs, is small: the
principal modes ``U`` of the GM fields of a few hundred training placements spread over the scalp
(proper orthogonal decomposition; the same observation behind the real-time method of Hasan, Gomez et
al. 2024, Imaging Neuroscience, doi:10.1162/imag_a_00412, and the magnetic stimulation profiles of
Daneshzand et al. 2021, NeuroImage 237:118097).  The reduced operator ``W = U^T M`` is computed
exactly, one adjoint solve per mode.  A new placement then costs dA/dt at the scalp nodes, ``c = W x``
and ``E = U c``: milliseconds, no FEM solve.  The discrete harmonic extension (a Laplace solve with
unit conductivity, factorised once) reproduces the directly evaluated dA/dt in the brain to ~0.2 %
on Colin27 (measured: docs/tms_modes.md).

The field is given at the grey-matter nodes: the volume-weighted mean of E over the GM elements
around each node (the same averaging applied to a full solve gives the reference it is checked
against).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._logging import logger
from .errors import ProtocolError, StimsimError

#: the file format's version: a cache file of another version is rebuilt
MODES_FORMAT = 1
#: the build's version: part of the cache key, raised whenever what a build computes changes
MODES_ALGORITHM = 1


@dataclass(frozen=True, eq=False)
class CorticalModes:
    """A head's reduced TMS operator for one coil: E at the GM nodes for any placement, in milliseconds.

    Attributes
    ----------
    nodes : (g,) the mesh nodes where E is given (grey matter)
    boundary_mm : (s, 3) float32 scalp node positions where dA/dt is evaluated
    basis : (3 g, r) float32 output modes (E at the GM nodes, node-major x, y, z)
    weights : (r, 3 s) float32 the reduced operator (dA/dt on the scalp, component-major -> mode amplitudes)
    meta : rank, training set, held-out errors, timings, the key of head, conductivities and coil

    The modes are linear in dA/dt: any coil and dI/dt may be put in (:meth:`efield`), but the modes
    capture best the fields of the coil they were trained with.
    """

    nodes: np.ndarray
    boundary_mm: np.ndarray
    basis: np.ndarray
    weights: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def efield_from_boundary(self, dadt_boundary: np.ndarray) -> np.ndarray:
        """E (V/m, (g, 3)) at the GM nodes from dA/dt (V/m, (s, 3)) at :attr:`boundary_mm`."""
        x = np.ascontiguousarray(np.asarray(dadt_boundary).T, np.float32).ravel()
        return (self.basis @ (self.weights @ x)).reshape(-1, 3)

    def efield(self, coil, matrix, didt_A_per_s: float) -> np.ndarray:
        """E (V/m, (g, 3)) at the GM nodes for ``coil`` at a 4x4 coil-to-head matrix (mm)."""
        return self.efield_from_boundary(coil.dadt(self.boundary_mm, np.asarray(matrix, float), didt_A_per_s,
                                                   precision="fast"))

    def save(self, path) -> Path:
        """Write to an ``.npz`` (atomically; marked as stimsim's so a later build may replace it)."""
        from .outputs import atomic_file

        path = Path(path)
        meta = dict(self.meta, format=MODES_FORMAT, written_by="stimsim")
        with atomic_file(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, nodes=self.nodes, boundary_mm=self.boundary_mm, basis=self.basis, weights=self.weights,
                         meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path) -> "CorticalModes":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != MODES_FORMAT:
                    raise ValueError(f"format {meta.get('format')} (this stimsim reads {MODES_FORMAT})")
                return cls(z["nodes"], z["boundary_mm"], z["basis"], z["weights"], meta)
        except (OSError, KeyError, ValueError) as err:
            raise StimsimError(f"{path}: not a readable stimsim cortical-modes file ({err}); delete it to rebuild")


def modes_key(model, tags, params: dict) -> str:
    """Hash of what the modes depend on: mesh, conductivities, coil, the build's options (defaults
    resolved) and version.  Not the dI/dt: the modes are orthonormal and the reduced operator is linear,
    so the dI/dt only scales the field at use."""
    options = dict(_BUILD_DEFAULTS)
    options.update({k: v for k, v in params.items() if k != "progress"})
    h = hashlib.sha256()
    mesh = model.mesh
    coil = model.coil
    arrays = ((coil.positions_m, coil.moments_m2) if hasattr(coil, "positions_m") else (coil.a_field, coil.affine))
    for a in (mesh.nodes, mesh.tets, mesh.tet_tags, model.head.sigma) + arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps({"algorithm": MODES_ALGORITHM, "tags": sorted(int(t) for t in tags), **options},
                        sort_keys=True).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where :func:`cortical_modes` keeps its files: ``tms_modes`` in the cache folder (:mod:`stimsim.cache`)."""
    from .cache import cache_dir

    return cache_dir("tms_modes")


def cortical_modes(model, *, tags=(2,), cache_dir=None, **build_options) -> CorticalModes:
    """The cortical modes of a :class:`~stimsim.tms.TMSModel`'s head and coil: read from the cache when
    built before with the same head, conductivities, coil, dI/dt and options, else built and stored
    (``cache_dir=False``: no cache).  Options: :func:`build_cortical_modes`."""
    key = modes_key(model, tags, build_options)
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = folder / f"{key[:32]}.npz"
        if path.is_file():
            try:
                modes = CorticalModes.load(path)
            except StimsimError as err:  # an older format or a damaged file: built again and replaced
                logger.warning("%s; building the cortical modes again", err)
                modes = None
            if modes is not None and modes.meta.get("key") == key:
                logger.info("cortical modes read from %s (rank %d)", path, modes.rank)
                return modes
    modes = build_cortical_modes(model, tags=tags, **build_options)
    modes.meta["key"] = key
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            modes.save(path)
        except OSError as err:  # a read-only cache is not an error: the modes are in memory
            logger.warning("could not store the cortical modes in %s: %s", path, err)
    return modes


def gm_node_average(mesh, elements: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """The nodes of ``elements`` and the (nodes x elements) volume-weighted averaging matrix."""
    tets = mesh.tets[elements]
    nodes, local = np.unique(tets, return_inverse=True)
    local = local.reshape(-1, 4)
    vol = np.repeat(mesh.volumes_mm3[elements], 4)
    cols = np.repeat(np.arange(len(elements)), 4)
    p = sp.csr_matrix((vol, (local.ravel(), cols)), shape=(len(nodes), len(elements)))
    p = sp.diags(1.0 / np.asarray(p.sum(axis=1)).ravel()) @ p
    return nodes, p.tocsr()


def training_centres(mesh, n: int, rng, *, region: str = "upper") -> np.ndarray:
    """``n`` scalp nodes drawn uniformly by area from the region coils reach (``"upper"``: at or above
    the middle of the scalp's height along the head frame's z axis, which points up in scanner (RAS)
    and MNI frames; ``"all"``: anywhere on the outer surface)."""
    points, p = _centre_distribution(mesh, region)
    return points[rng.choice(len(points), size=n, replace=True, p=p)]


def _centre_distribution(mesh, region: str):
    """The candidate centres of :func:`training_centres` and their probabilities (by surface area)."""
    from .fem.electrodes import boundary_node_areas

    nodes = np.unique(mesh.outer_boundary_faces)  # the scalp, not the walls of an internal cavity
    p = mesh.nodes[nodes]
    if region == "upper":
        keep = p[:, 2] >= 0.5 * (p[:, 2].min() + p[:, 2].max())
    elif region == "all":
        keep = np.ones(len(p), bool)
    else:
        raise ProtocolError(f"region: {region!r} is not 'upper' or 'all'")
    w = boundary_node_areas(mesh)[nodes] * keep
    return p, w / w.sum()


def random_placements(model, n: int, rng, *, region: str = "upper", distance_mm=(4.0, 4.0)) -> list[np.ndarray]:
    """``n`` coil matrices at random scalp centres (:func:`training_centres`) and random handle directions
    that keep the coil outside the head."""
    points, p = _centre_distribution(model.mesh, region)  # once, not per draw
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 20 * n + 100:
            raise ProtocolError("could not place the coil outside the head at random scalp positions; check the "
                                "head and coil")
        c = points[rng.choice(len(points), size=1, replace=True, p=p)][0]  # as training_centres draws
        d = rng.normal(size=3)
        try:
            pl = model.placement(c, d, float(rng.uniform(*distance_mm)))
            model.coil.check_outside(model.mesh, pl.matrix)
        except ProtocolError:
            continue
        out.append(pl.matrix)
    return out


class _HeadOperator:
    """The linear map dA/dt on the scalp -> E at the GM nodes, forward and adjoint, for blocks of inputs."""

    def __init__(self, model, tags):
        from .fem import FactorizedSolver
        from .fem.assembly import assemble_stiffness

        mesh, geometry = model.mesh, model.head.geometry
        if geometry.grads_kdm is None:
            raise ProtocolError("cortical modes need a head model with element gradients (HeadModel.assemble)")
        self.model = model
        n = mesh.n_nodes
        self.boundary = mesh.boundary_nodes
        interior = np.ones(n, bool)
        interior[self.boundary] = False
        self.interior = np.flatnonzero(interior)
        unit = assemble_stiffness(geometry, np.ones(len(mesh.tets)))
        rows = unit[self.interior]
        self.k_ii = rows[:, self.interior].tocsr()
        self.k_ib = rows[:, self.boundary].tocsr()
        del rows
        del unit
        backend = model.backend if model.backend in ("pardiso", "cholmod") else "auto"
        self.extension = FactorizedSolver(self.k_ii, backend=backend)
        self.elements = np.flatnonzero(np.isin(mesh.tet_tags, list(tags)))
        if len(self.elements) == 0:
            raise ProtocolError(f"cortical modes: the head has no elements of tissue tags {sorted(tags)}")
        self.nodes, self.average = gm_node_average(mesh, self.elements)
        t = mesh.tets[self.elements]
        m = len(self.elements)
        g = geometry.grads_kdm[:, :, self.elements]  # (4, 3, m)
        # grad v on the GM elements = D v, D: (3 m) x n, rows element-major (e, c)
        rows = (3 * np.arange(m)[:, None, None] + np.arange(3)[None, None, :]).repeat(4, axis=1)  # (m, 4, 3)
        cols = np.broadcast_to(t[:, :, None], (m, 4, 3))
        self.grad = sp.csr_matrix((np.transpose(g, (2, 0, 1)).ravel(), (rows.ravel(), cols.ravel())), shape=(3 * m, n))
        self.mean = model._mean[self.elements]  # (m, n) element means of a nodal field

    def _solve_fem(self, b):
        model = self.model
        if model._factor is not None:
            return model._factor.solve(b)
        from .fem import pcg

        cols = [pcg(model.system.matrix, b[:, j], model._precond, model.rtol, 1000)[0] for j in range(b.shape[1])]
        return np.column_stack(cols)

    def extend(self, x_b):
        """Harmonic extension: x_b (s, 3, k) on the scalp -> (n, 3, k) at every node."""
        s, _, k = x_b.shape
        out = np.empty((self.model.mesh.n_nodes, 3, k))
        out[self.boundary] = x_b
        rhs = -(self.k_ib @ x_b.reshape(s, 3 * k))
        out[self.interior] = self.extension.solve(rhs).reshape(-1, 3, k)
        return out

    def forward(self, x_b):
        """E (3 g, k) at the GM nodes for scalp dA/dt x_b (s, 3, k)."""
        d = self.extend(x_b)
        k = d.shape[2]
        b = sum(self.model._load[c] @ d[:, c, :] for c in range(3))
        v = self._solve_fem(b)
        v[self.model.system.ground] = 0.0
        e = -(self.grad @ v).reshape(-1, 3, k)  # (m, 3, k)
        for c in range(3):
            e[:, c, :] -= self.mean @ d[:, c, :]
        return (self.average @ e.reshape(len(self.elements), 3 * k)).reshape(-1, k)

    def adjoint(self, u):
        """Rows of ``M``: u (3 g, k) output weights -> (k, 3 s) weights on the scalp dA/dt (component-major)."""
        k = u.shape[1]
        r = (self.average.T @ u.reshape(len(self.nodes), 3 * k)).reshape(-1, 3, k)  # (m, 3, k) per element
        g = self.grad.T @ r.reshape(-1, k)  # (n, k): sum_e r_e . grad phi_i
        g[self.model.system.ground] = 0.0
        y = self._solve_fem(g)
        w = np.empty((self.model.mesh.n_nodes, 3, k))
        for c in range(3):
            w[:, c, :] = -(self.model._load[c].T @ y) - self.mean.T @ r[:, c, :]
        # through the harmonic extension: w . d = w_b . x_b + w_i . (-K_ii^-1 K_ib x_b)
        w_i = self.extension.solve(w[self.interior].reshape(len(self.interior), 3 * k))
        w_b = w[self.boundary] - (self.k_ib.T @ w_i).reshape(-1, 3, k)  # K_ii symmetric
        return np.transpose(w_b, (2, 1, 0)).reshape(k, -1)  # (k, 3 s): component-major per row

    def close(self):
        self.extension.close()


def build_cortical_modes(model, *, tags=(2,), n_train: int = 600, max_rank: int = 300, energy_tol: float = 1e-5,
                         n_check: int = 20, seed: int = 0, region: str = "upper", batch: int = 16,
                         progress: bool = True) -> CorticalModes:
    """Build the cortical modes of a :class:`~stimsim.tms.TMSModel` (module docstring).

    ``n_train`` random placements over the ``region`` of the scalp give the GM fields whose
    principal modes are kept: the fewest that leave at most ``energy_tol`` of the training fields'
    energy (squared L2) out, and at most ``max_rank``.  Then one adjoint solve per mode gives the
    reduced operator.  ``n_check`` further placements, solved in full (dA/dt evaluated at every node,
    no harmonic extension), give the held-out errors stored in ``meta``.
    """
    if n_train < 2 or max_rank < 1 or not 0 < energy_tol < 1 or batch < 1:
        raise ProtocolError("cortical modes: need n_train >= 2, max_rank >= 1, 0 < energy_tol < 1, batch >= 1")
    timings = {}
    t0 = time.perf_counter()
    op = _HeadOperator(model, tags)
    timings["setup_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    boundary_mm = model.mesh.nodes[op.boundary]
    coil = model.coil
    steps = range(0, n_train, batch)
    if progress:
        from rich.progress import track

        steps = track(steps, description=f"cortical modes: {n_train} training placements", transient=True)
    t = time.perf_counter()
    train = random_placements(model, n_train, rng, region=region)
    fields = np.empty((3 * len(op.nodes), n_train), np.float32)
    for s in steps:
        block = train[s:s + batch]
        x = np.stack([coil.dadt(boundary_mm, m, model.didt, precision="fast") for m in block], axis=2)
        fields[:, s:s + len(block)] = op.forward(x)
    timings["training_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # principal modes via the (n_train x n_train) Gram matrix, in double precision
    gram = np.zeros((n_train, n_train))
    for s in range(0, fields.shape[0], 65536):
        f = fields[s:s + 65536].astype(np.float64)
        gram += f.T @ f
    lam, vec = np.linalg.eigh(gram)
    lam, vec = np.clip(lam[::-1], 0, None), vec[:, ::-1]
    left = 1.0 - np.cumsum(lam) / lam.sum()
    rank = int(min(max_rank, np.searchsorted(-left, -energy_tol) + 1, np.count_nonzero(lam > lam[0] * 1e-12)))
    basis = np.empty((fields.shape[0], rank), np.float32)
    scale = vec[:, :rank] / np.sqrt(lam[:rank])
    for s in range(0, fields.shape[0], 65536):
        basis[s:s + 65536] = fields[s:s + 65536].astype(np.float64) @ scale
    del fields, gram
    timings["modes_s"] = time.perf_counter() - t
    t = time.perf_counter()
    weights = np.empty((rank, 3 * len(op.boundary)), np.float32)
    for s in range(0, rank, batch):
        weights[s:s + batch] = op.adjoint(basis[:, s:s + batch].astype(np.float64))
    timings["adjoint_s"] = time.perf_counter() - t
    modes = CorticalModes(op.nodes, boundary_mm.astype(np.float32), basis, weights,
                          {"rank": rank, "coil": coil.name, "didt_A_per_s": float(model.didt), "n_train": n_train, "energy_left": float(left[rank - 1]),
                           "tags": sorted(int(x) for x in tags), "region": region, "seed": seed,
                           "gm_nodes": int(len(op.nodes)), "scalp_nodes": int(len(op.boundary))})
    t = time.perf_counter()
    if n_check:
        modes.meta["held_out"] = check_modes(modes, model, random_placements(model, n_check, rng, region=region),
                                             op=op)
    timings["check_s"] = time.perf_counter() - t
    op.close()
    modes.meta["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return modes


def _build_defaults() -> dict:
    import inspect

    return {k: v.default for k, v in inspect.signature(build_cortical_modes).parameters.items()
            if v.default is not inspect.Parameter.empty and k not in ("tags", "progress")}


#: the build's default options, part of every cache key (so a changed default is a new key)
_BUILD_DEFAULTS = _build_defaults()


def full_gm_field(model, matrix, op: _HeadOperator | None = None, *, tags=(2,)) -> np.ndarray:
    """The reference: E at the GM nodes from a full solve (dA/dt at every node, no extension)."""
    mesh = model.mesh
    elements = op.elements if op is not None else np.flatnonzero(np.isin(mesh.tet_tags, list(tags)))
    average = op.average if op is not None else gm_node_average(mesh, elements)[1]
    return average @ model.efield(matrix, elements=elements)


def check_modes(modes: CorticalModes, model, matrices, *, op=None) -> dict:
    """Relative L2 error, correlation (over all components) and time of the fast field against full
    solves at ``matrices``."""
    errors, corr, ms = [], [], []
    for m in matrices:
        ref = full_gm_field(model, m, op, tags=modes.meta.get("tags", (2,)))
        t = time.perf_counter()
        fast = modes.efield(model.coil, m, model.didt)
        ms.append(1e3 * (time.perf_counter() - t))
        errors.append(float(np.linalg.norm(fast - ref) / np.linalg.norm(ref)))
        corr.append(float(np.corrcoef(fast.ravel(), ref.ravel())[0, 1]))
    return {"placements": len(errors), "rel_l2_max": max(errors), "rel_l2_median": float(np.median(errors)),
            "corr_min": min(corr), "ms_median": float(np.median(ms))}
