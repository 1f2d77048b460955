"""TMS: coil + placement + dI/dt -> primary field dA/dt -> FEM for the secondary field.

E = -dA/dt - grad(v), where v solves div(sigma grad v) = -div(sigma dA/dt) with no current
leaving the head.  The weak form's right-hand side is b_i = -sum_e sigma_e V_e
(dA/dt)_e . grad(phi_i), with (dA/dt)_e the mean of the element's nodal values (the
primary field is smooth, so this is second-order accurate).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ._logging import logger
from .coils import load_coil, place_coil, placement_from_matrix
from .coils.model import check_dipoles_outside
from .errors import ProtocolError
from .protocol import TMSProtocol
from .fem import (assemble_load_from_element_vectors, element_efield, element_mean,
                  grounded_system, pcg, recover, solver_for, use_numba)
from .fem.linear import DEFAULT_RTOL, amg_preconditioner_for, pick_backend
from .head_model import HeadModel, read_head, resolve_position
from .simulation_result import TMSResult


#: scalp-to-coil distance when a protocol's placement gives none, mm (hair and coil casing)
DEFAULT_COIL_DISTANCE_MM = 4.0


def coil_didt_A_per_s(protocol: TMSProtocol, coil, base_dir: Path | None = None) -> float:
    """The pulse's peak dI/dt in A/s from the stimulator settings (and the coil's dI/dt max for % MSO).

    With a measured ``stimulator.waveform_file`` (relative paths: from ``base_dir``, else the
    current folder): the file's peak |dI/dt|, or its shape scaled to the given dI/dt, % MSO or
    peak current (:func:`stimsim.coils.waveform.waveform_didt_A_per_s`)."""
    st = protocol.stimulator
    if st.waveform_file is not None:
        from .coils.waveform import waveform_didt_A_per_s

        return waveform_didt_A_per_s(st, coil.didt_max_A_per_s, base_dir)
    if st.didt_A_per_us is not None:
        return st.didt_A_per_us * 1e6
    if st.peak_current_A is not None:
        from .coils.waveform import peak_didt_A_per_s

        return peak_didt_A_per_s(st.waveform, st.peak_current_A, st.period_us, st.damping_per_us)
    if coil.didt_max_A_per_s is None:
        raise ProtocolError(
            "stimulator.percent_mso: this coil does not state its dI/dt at 100 % output; give "
            "stimulator.didt_A_per_us instead, or coil.didt_max_A_per_us"
        )
    return st.percent_mso / 100.0 * coil.didt_max_A_per_s


def placement_for(protocol: TMSProtocol, mesh, base_dir: Path | None = None):
    """The protocol's coil placement on ``mesh``: from centre + direction, a matrix, or a
    neuronavigation file's marker (relative file paths are taken from ``base_dir``)."""
    pl = protocol.placement
    if pl.matrix is not None:
        return placement_from_matrix(pl.matrix, mesh)
    if pl.navigator is not None:
        from .coils.neuronav import navigator_matrix

        system, file = pl.navigator

        def local(p):
            return Path(base_dir) / p if base_dir is not None and not Path(p).is_absolute() else Path(p)

        matrix = navigator_matrix(local(file), system=system, marker=pl.marker,
                                  t1=None if pl.t1 is None else local(pl.t1), field_name=f"placement.{system}")
        return placement_from_matrix(matrix, mesh)
    center = resolve_position(pl.center, protocol, mesh, base_dir, "placement.center")
    distance = DEFAULT_COIL_DISTANCE_MM if pl.distance_mm is None else pl.distance_mm
    return place_coil(mesh, center, pl.direction, distance)


def check_coil_outside(mesh, dipole_positions_mm: np.ndarray) -> None:
    """Refuse a coil whose windings lie inside the head (below the scalp surface)."""
    check_dipoles_outside(mesh, dipole_positions_mm)


def run_tms(protocol: TMSProtocol, base_dir: Path | None = None, mesh=None):
    """A whole TMS simulation (what ``simulate`` calls for ``kind: tms``).

    The primary field needs only the mesh nodes and the placement, the stiffness matrix and
    its AMG hierarchy only the mesh: so a worker thread imports numba and loads the compiled
    kernels while the main thread reads the mesh, then places the coil and computes dA/dt
    (a nogil kernel, single precision) while the main thread assembles and sets up AMG; the
    right-hand side waits for it.  Both threads' errors surface here.  With numba, the matrix,
    right-hand side and fields come from kernels that never store the element gradients
    (:mod:`stimsim.fem.p1_numba`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .coils.waveform import pulse_summary

    coil = load_coil(protocol.coil, base_dir)
    didt = coil_didt_A_per_s(protocol, coil, base_dir)
    pulse = pulse_summary(protocol.stimulator, didt, base_dir)
    with ThreadPoolExecutor(max_workers=1) as pool:
        kernels = use_numba()  # read now: one choice for the whole run
        pool.submit(_warm_up, kernels)
        mesh, inputs, timings = read_head(protocol, base_dir, mesh)
        primary = pool.submit(_primary_field, protocol, mesh, base_dir, coil, didt)
        # no local name for the head model: solve_tms consumes it and frees its matrix early
        return solve_tms(protocol, HeadModel.assemble(mesh, protocol.conductivities, inputs=inputs, timings=timings,
                                                      gradients=not kernels),
                         coil, didt, primary, consume=True, pulse=pulse)


def _warm_up(kernels: bool):
    from .fem import primary

    primary.warm_up("single")
    if kernels:
        from .fem import amg_kernels, p1_numba

        p1_numba.warm_up()
        amg_kernels.warm_up()


def _primary_field(protocol, mesh, base_dir, coil, didt):
    t = time.perf_counter()
    placement = placement_for(protocol, mesh, base_dir)
    coil.check_outside(mesh, placement.matrix)
    # single precision: less CPU (which the main thread's assembly and AMG set-up share on a
    # small machine; measured: docs/solver.md) for a relative deviation of ~3e-7, five orders
    # below the FEM error
    dadt = coil.dadt(mesh.nodes, placement.matrix, didt, precision="single")
    return placement, dadt, time.perf_counter() - t


def solve_tms(protocol: TMSProtocol, head: HeadModel, coil, didt: float, primary, *, consume: bool = False,
              pulse: dict | None = None):
    """Secondary field and outputs, given the prepared head and the primary field.

    ``primary``: ``(placement, dadt_nodes, seconds)``, or a future of it (it is needed only
    once the AMG hierarchy exists).  A head whose geometry holds no gradients
    (``HeadModel.assemble(gradients=False)``) is solved with the numba kernels.
    ``consume=True``: the head model is not used again by the caller, which holds no other
    reference to it: its stiffness matrix is grounded in place and released before the fields
    are computed (a lower memory peak; measured: docs/solver.md).
    """
    mesh, geometry, sigma, inputs = head.mesh, head.geometry, head.sigma, head.inputs
    timings = dict(head.timings)
    stiffness = head.stiffness
    del head  # with consume=True the matrix below is the last reference to the stiffness
    kernels = geometry.grads_kdm is None
    system = grounded_system(stiffness, node=int(mesh.tets[0, 0]), inplace=consume)
    del stiffness
    got = {}

    def rhs():  # called once the AMG hierarchy exists: its element-wise inputs are not held meanwhile
        got["placement"], got["dadt"], timings["dadt_s"] = primary.result() if hasattr(primary, "result") else primary
        t = time.perf_counter()
        if kernels:
            from .fem.p1_numba import load_from_nodal_field

            load = load_from_nodal_field(mesh.nodes, mesh.tets, sigma, got["dadt"])
        else:
            load = assemble_load_from_element_vectors(geometry, -sigma[:, None] * element_mean(got["dadt"], mesh.tets))
        b = system.rhs_from_nodal(load)
        timings["rhs_s"] = time.perf_counter() - t
        return b

    x, info = solver_for(protocol.solver, system.matrix, "tms")(system.matrix, rhs)
    timings["setup_s"], timings["solve_s"] = info.setup_s, info.solve_s
    potential = system.expand(x)
    system = None  # the (grounded) stiffness matrix is not needed again: 20+ MB less at peak
    placement, dadt_nodes = got["placement"], got["dadt"]

    t = time.perf_counter()
    if kernels:
        from .fem.p1_numba import tms_fields

        grad_part, e_field = tms_fields(mesh.nodes, mesh.tets, potential, dadt_nodes)  # -grad v, E
    else:
        grad_part = element_efield(geometry, potential)  # -grad v
        e_field = np.subtract(grad_part, element_mean(dadt_nodes, mesh.tets))
    # recover only -grad v (it jumps at tissue boundaries); add the smooth primary field back
    method = "spr" if protocol.solver.recovery == "auto" else protocol.solver.recovery
    recovered = recover(method, geometry, mesh, grad_part)
    del grad_part
    if recovered is not None:
        recovered -= element_mean(dadt_nodes, mesh.tets)
    timings["fields_s"] = time.perf_counter() - t
    logger.info("TMS %s at %s mm: dI/dt %.3g A/s, peak |E| %.3g V/m", coil.name,
                np.round(placement.center_mm, 1).tolist(), didt, float(np.linalg.norm(e_field, axis=1).max()))
    return TMSResult(protocol=protocol, mesh=mesh, potential_V=potential, E=e_field, J=sigma[:, None] * e_field,
                     sigma=sigma, solve_info=info, E_recovered=recovered, timings_s=timings, inputs=inputs,
                     dadt_V_per_m=dadt_nodes, placement=placement, coil_summary=coil.summary(), didt_A_per_s=didt,
                     program=protocol.program.expanded(), pulse=pulse)


class TMSModel:
    """A head prepared once for many coil placements.

    Built once: the stiffness matrix, its AMG hierarchy (or factorisation, ``backend``), and the linear maps from nodal
    dA/dt to element means (``M``, m x n) and to the FEM right-hand side
    (``b = sum_c B_c dA/dt_c``, each ``B_c`` with the stiffness matrix's pattern).  Each
    placement then costs one dA/dt evaluation, three sparse products and one CG solve.
    CG starts from the projection of the new solution onto the span of earlier ones
    (A-orthonormal basis of the last ``reuse`` solutions; Fischer 1998, Comput Methods Appl
    Mech Eng 163:193, doi:10.1016/S0045-7825(98)00012-7): it saves iterations on sweeps of
    neighbouring placements, not on scattered ones (measured: docs/solver.md).

    For searches, :meth:`target_functional` gives, after three adjoint solves, the ROI-mean E
    of any placement as dot products with its nodal dA/dt: no FEM solve per placement.

    Parameters
    ----------
    protocol : TMSProtocol (head, conductivities, coil and stimulator are used; placement is not)
    mesh : an already loaded head mesh (optional)
    head : a :class:`~stimsim.head_model.HeadModel` to use instead of reading the protocol's head (its
        conductivities apply, and a factorisation already set up on it is reused)
    rtol : CG tolerance of the placement solves.  Default: the protocol's ``solver.rtol``, else
        TMS's 1e-6, whose effect on E is orders of magnitude below the discretisation error
        (measured: docs/solver.md).  The primary field is computed in single precision with
        single-precision sums (``precision="fast"``: E within 8e-8 of double precision on Colin27).
    reuse : how many earlier solutions seed the next solve (0: none; CG only)
    backend : ``"auto"`` (default): a PARDISO (or CHOLMOD) factorisation when the optional package
        is installed and the head fits (:func:`~stimsim.fem.linear.pick_backend`), else AMG-CG;
        ``"amg"`` forces CG, ``"pardiso"``, ``"cholmod"`` or ``"splu"`` force that factorisation.
        A factorisation costs more once and then much less per placement than a CG solve, so it
        pays after a few placements (timings: docs/solver.md).  Direct solves leave 0 in
        :attr:`iterations`.
    """

    def __init__(self, protocol: TMSProtocol, *, mesh=None, head: HeadModel | None = None,
                 base_dir: Path | None = None, rtol: float | None = None, reuse: int = 30, backend: str = "auto"):
        self.protocol = protocol
        # a given head model brings its conductivities and any solver already set up on it
        self.head = head if head is not None else HeadModel.from_protocol(protocol, base_dir, mesh)
        self.mesh = self.head.mesh
        self.coil = load_coil(protocol.coil, base_dir)
        self.didt = coil_didt_A_per_s(protocol, self.coil, base_dir)
        self.system = self.head.grounded_system()
        self.rtol = rtol or protocol.solver.rtol or DEFAULT_RTOL["tms"]
        if backend == "auto":
            backend = pick_backend(self.system.matrix.shape[0])
            backend = backend if backend in ("pardiso", "cholmod") else "amg"
        self.backend = backend
        self._factor = None if backend == "amg" else self.head.solver(self.system, backend)
        self._precond = amg_preconditioner_for(self.system.matrix) if backend == "amg" else None
        self._mean, self._load = _primary_operators(self.head.geometry, self.head.sigma, self.system.ground)
        self.reuse = reuse
        self._basis = np.empty((reuse, self.mesh.n_nodes))  # A-orthonormal earlier solutions (a ring)
        self._n_basis = 0
        self._next = 0
        self.iterations: list[int] = []  # CG iterations per solve

    def placement(self, center_mm, direction, distance_mm: float = 4.0):
        return place_coil(self.mesh, center_mm, direction, distance_mm)

    def dadt(self, matrix) -> np.ndarray:
        """dA/dt (V/m) at the mesh nodes for the coil at a 4x4 coil-to-head matrix (mm)."""
        matrix = np.asarray(matrix, float)
        self.coil.check_outside(self.mesh, matrix)
        return self.coil.dadt(self.mesh.nodes, matrix, self.didt, precision="fast")

    def potential(self, dadt_nodes: np.ndarray) -> np.ndarray:
        """Nodal potential v (V) of the secondary field for a nodal dA/dt."""
        a = self.system.matrix
        b = sum(self._load[c] @ dadt_nodes[:, c] for c in range(3))
        if self._factor is not None:
            self.iterations.append(0)
            return self._factor.solve(b)
        basis = self._basis[:self._n_basis]
        x0 = (basis @ b) @ basis if self._n_basis else None  # A-orthogonal projection of A^-1 b
        x, it = pcg(a, b, self._precond, self.rtol, 1000, x0=x0)
        self.iterations.append(it)
        if self.reuse:
            self._extend_basis(x)
        return x

    def _extend_basis(self, x: np.ndarray) -> None:
        a = self.system.matrix
        if self._n_basis == self.reuse:  # full: drop the oldest first, so x stays in the new span
            self._basis[self._next] = 0.0
        basis = self._basis[:self._n_basis]
        w = x - (basis @ (a @ x)) @ basis if self._n_basis else x.copy()
        norm2 = float(w @ (a @ w))
        if norm2 > 1e-12 * float(x @ (a @ x)) and norm2 > 0:
            self._basis[self._next] = w / np.sqrt(norm2)
            self._next = (self._next + 1) % self.reuse
            self._n_basis = min(self._n_basis + 1, self.reuse)

    def efield(self, matrix, elements: np.ndarray | None = None) -> np.ndarray:
        """Element-wise E (V/m) for the coil at a 4x4 coil-to-head matrix (mm).

        ``elements`` restricts the returned field (not the solve) to those element indices.
        """
        dadt_nodes = self.dadt(matrix)
        v = self.system.expand(self.potential(dadt_nodes))
        geometry = self.head.geometry
        if elements is None:
            return element_efield(geometry, v) - self._mean @ dadt_nodes
        g = geometry.grads_kdm[:, :, elements]
        t = self.mesh.tets[elements]
        grad = sum(v[t[:, k], None] * g[k].T for k in range(4))
        return -grad - self._mean[elements] @ dadt_nodes

    def sweep(self, matrices, *, elements: np.ndarray | None = None, progress: bool = True):
        """Yield the E-field (V/m, element-wise; ``elements`` restricts it) for each 4x4 matrix.

        A generator, so each placement's field can be reduced or written before the next is
        computed; shows a progress bar unless ``progress=False``.
        """
        matrices = list(matrices)
        if progress:
            from rich.progress import track

            matrices = track(matrices, description=f"{len(matrices)} coil placements", transient=True)
        for matrix in matrices:
            yield self.efield(matrix, elements=elements)

    def cortical_modes(self, *, tags=None, cache_dir=None, **options):
        """Build (or read from the cache) the reduced basis that gives the whole grey-matter field of a
        placement in milliseconds (:mod:`stimsim.tms_modes`); :meth:`fast_efield` then uses it.

        ``tags``: the tissues whose nodes get the field (default: grey matter, tag 2, or the innermost
        tissue of a head without one, e.g. the sphere's brain); ``cache_dir``: where the modes are stored
        (default ``~/.cache/stimsim/tms_modes``; ``False``: not stored); ``options``:
        :func:`~stimsim.tms_modes.build_cortical_modes` (training placements, rank, ...).
        """
        from .tms_modes import cortical_modes

        if tags is None:
            present = np.unique(self.mesh.tet_tags)
            tags = (2,) if 2 in present else (int(present.min()),)
        self._modes = cortical_modes(self, tags=tags, cache_dir=cache_dir, **options)
        return self._modes

    def fast_efield(self, matrix) -> np.ndarray:
        """E (V/m) at the grey-matter nodes (``self.modes.nodes``) for a 4x4 coil matrix, in milliseconds,
        from the cortical modes (build them first: :meth:`cortical_modes`).  The full solve stays one call
        away: :meth:`efield`."""
        if getattr(self, "_modes", None) is None:
            raise ProtocolError("fast_efield needs the cortical modes: call TMSModel.cortical_modes() first")
        matrix = np.asarray(matrix, float)
        self.coil.check_outside(self.mesh, matrix)
        return self._modes.efield(self.coil, matrix, self.didt)

    @property
    def modes(self):
        """The cortical modes built by :meth:`cortical_modes` (None before)."""
        return getattr(self, "_modes", None)

    def target_functional(self, elements: np.ndarray) -> np.ndarray:
        """Linear map from nodal dA/dt to the volume-weighted mean E (V/m) over ``elements``.

        Returns ``q`` of shape (3, n, 3) with ``mean E[c] = sum(q[c] * dadt_nodes)``.
        By the adjoint (reciprocity) argument: with v = A^-1 b and b = sum_c B_c dA/dt_c, a
        linear functional r.v of the potential equals (A^-1 r).b, so three solves (one per
        component of the mean gradient) replace one solve per placement.
        """
        geometry, n = self.head.geometry, self.mesh.n_nodes
        elements = np.asarray(elements)
        w = geometry.volumes_m3[elements] / geometry.volumes_m3[elements].sum()
        tets = self.mesh.tets[elements]
        q = np.zeros((3, n, 3))
        for c in range(3):
            # mean of grad v along c = r . v; E = -grad v - dA/dt
            r = sum(np.bincount(tets[:, k], weights=w * geometry.grads_kdm[k, c, elements], minlength=n)
                    for k in range(4))
            r[self.system.ground] = 0.0
            if self._factor is not None:
                y = self._factor.solve(r)
            else:
                y, _ = pcg(self.system.matrix, r, self._precond, self.rtol, 1000)
            for cc in range(3):
                q[c, :, cc] = -(self._load[cc].T @ y)
            q[c, :, c] -= self._mean[elements].T @ w
        return q


def _primary_operators(geometry, sigma: np.ndarray, ground: int):
    """Sparse maps from nodal dA/dt: element means ``M`` (m x n) and load matrices ``B_c`` (n x n).

    ``B_c[i, j] = -sum_e sigma_e V_e (d phi_i / d x_c) / 4`` over elements containing i and j,
    the grounded node's row zeroed: ``b = sum_c B_c dadt[:, c]`` is the TMS right-hand side.
    """
    import scipy.sparse as sp

    m, n = len(geometry.tets), geometry.n_nodes
    rows = np.repeat(np.arange(m, dtype=np.int32), 4)
    mean = sp.csr_matrix((np.full(4 * m, 0.25), (rows, geometry.tets.ravel())), shape=(m, n))
    keep = np.ones(n)
    keep[ground] = 0.0
    scale = -sigma * geometry.volumes_m3
    load = []
    for c in range(3):
        d = sp.csr_matrix(((geometry.grads_kdm[:, c, :] * scale).T.ravel(), (geometry.tets.ravel(), rows)),
                          shape=(n, m))
        load.append(sp.diags(keep) @ (d @ mean).tocsr())
    return mean, load
