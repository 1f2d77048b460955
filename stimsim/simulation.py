"""Protocol -> head -> solve -> fields: the tDCS/tACS pipeline.

``simulate(protocol)`` returns a frozen :class:`SimulationResult`; writing files is the
job of :mod:`stimsim.results`, so the pipeline can run in notebooks and batches without
touching the disk.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from . import __version__
from ._logging import logger
from .conductivity import conductivity_table, element_conductivities
from .errors import ProtocolError
from .mesh import Mesh, check_mesh, read_mesh
from .mesh.checks import check_connectivity
from .protocol import TESProtocol, protocol_to_dict
from .solvers.assembly import P1Geometry, assemble_stiffness
from .solvers.electrodes import ElectrodeSpec, PlacedElectrode, electrode_system, place_electrodes
from .solvers.fields import element_efield, recover
from .solvers.linear import FactorizedSolver, SolveInfo, amg_cg

#: heads that ship inside the package: name -> (file in stimsim/data, description)
EMBEDDED_HEADS = {
    "sphere": ("sphere3.msh.gz", "three-layer sphere, radii 85/90/95 mm, tags 3/4/5 (SimNIBS test mesh)"),
    "colin27": ("colin27.msh.gz", "Colin27 adult head (MCX labels), 588k tets, SimNIBS tags 1 WM 2 GM 3 CSF "
                                  "4 bone 5 scalp, with 10-05 EEG positions"),
}


def default_brain_tags(protocol) -> list[int] | None:
    """Tags that stand for brain in field-based checks: the embedded sphere's inner ball (3),
    else None (the checker then uses white and grey matter, 1 and 2)."""
    return [3] if protocol.head == "sphere" else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def protocol_sha256(protocol) -> str:
    """Content hash of a validated protocol (defaults included): what a results folder was computed from."""
    return hashlib.sha256(json.dumps(protocol_to_dict(protocol), sort_keys=True).encode()).hexdigest()


def resolve_head(head: str, base_dir: Path | None = None) -> Path:
    """Path of the mesh a protocol's ``head`` names (an embedded name or a file path)."""
    if head in EMBEDDED_HEADS:
        return Path(str(resources.files("stimsim") / "data" / EMBEDDED_HEADS[head][0]))
    path = Path(head).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise ProtocolError(
            f"head: {head!r} is neither an embedded head ({', '.join(EMBEDDED_HEADS)}) nor an existing mesh file"
            + (f" (looked in {path.parent})" if base_dir is not None else "")
        )
    return path


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Fields of one simulation (SI units; mesh coordinates in mm).

    Attributes
    ----------
    mesh : the head mesh
    potential_V : (n,) nodal potential, V (reference electrode at 0 V)
    E : (m,) x 3 element-wise electric field, V/m
    J : (m,) x 3 element-wise current density, A/m²
    E_recovered : (m, 3) recovered field at element centroids (or None)
    sigma : (m,) conductivity per element, S/m
    """

    protocol: TESProtocol
    mesh: Mesh
    potential_V: np.ndarray
    E: np.ndarray
    J: np.ndarray
    sigma: np.ndarray
    electrodes: list[PlacedElectrode]
    solve_info: SolveInfo
    E_recovered: np.ndarray | None = None
    timings_s: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    electrode_currents_A: dict = field(default_factory=dict)  # recomputed from K v (conservation check)
    node_data: dict = field(default_factory=dict)  # extra nodal fields to write (TMS: dAdt, V/m)
    extra: dict = field(default_factory=dict)  # modality-specific facts for the summary (coil, placement...)

    @cached_property
    def magnE(self) -> np.ndarray:
        """|E| per element, V/m (computed once; no (m, 3) temporary)."""
        return np.sqrt(np.einsum("ij,ij->i", self.E, self.E))

    def electrode_potentials_V(self) -> dict[str, float]:
        return {e.name: float(self.potential_V[e.center_node]) for e in self.electrodes}


def named_position(name: str, protocol, base_dir: Path | None = None, field: str = "position"):
    """mm coordinates of an EEG position name on the protocol's head (its positions file)."""
    from .head.eeg import eeg_position

    positions = protocol.positions
    if positions is not None and base_dir is not None and not Path(positions).is_absolute():
        positions = str(Path(base_dir) / positions)
    try:
        return tuple(float(x) for x in eeg_position(name, protocol.head, positions=positions))
    except ProtocolError as err:
        raise ProtocolError(f"{field}: {err}") from None


def _electrode_specs(protocol: TESProtocol, base_dir: Path | None = None) -> list[ElectrodeSpec]:
    specs = []
    for k, e in enumerate(protocol.electrodes):
        pos = (named_position(e.position, protocol, base_dir, f"electrodes[{k}].position")
               if isinstance(e.position, str) else tuple(e.position))
        specs.append(ElectrodeSpec(e.name, pos, e.current_A, e.shape, e.diameter_mm, e.size_mm, e.direction))
    return specs


@dataclass
class _Head:
    mesh: Mesh
    sigma: np.ndarray
    geometry: P1Geometry
    stiffness: object
    inputs: dict
    timings: dict


def _read_head(protocol, base_dir, mesh) -> tuple[Mesh, dict, dict]:
    """Read + check the head mesh; returns (mesh, input hashes, timings)."""
    timings = {}
    inputs = {"protocol_sha256": protocol_sha256(protocol)}
    t = time.perf_counter()
    if mesh is None:
        path = resolve_head(protocol.head, base_dir)
        mesh, _ = read_mesh(path)
        inputs["head"] = protocol.head
        inputs["head_file"] = path.name
        inputs["head_sha256"] = sha256_file(path)
    mesh = check_mesh(mesh, known_tags=set(conductivity_table(protocol.conductivities)), connectivity=False)
    timings["read_s"] = time.perf_counter() - t
    return mesh, inputs, timings


def _assemble_head(protocol, mesh: Mesh, inputs: dict, timings: dict, *, gradients: bool = True) -> _Head:
    """Assign conductivities and assemble the stiffness matrix of a read head.

    ``gradients=False`` (a single TMS run with numba): the numba kernels build the matrix and
    later the right-hand side and fields without the stored (4, 3, m) gradients, 61 MiB on a
    668k-tet head; ``head.geometry`` then holds volumes only.
    """
    t = time.perf_counter()
    sigma = element_conductivities(mesh.tet_tags, conductivity_table(protocol.conductivities))
    if gradients:
        geometry = P1Geometry.from_mesh(mesh)
        stiffness = assemble_stiffness(geometry, sigma)
    else:
        from .solvers._p1_numba import stiffness_matrix

        geometry = P1Geometry.volumes_only(mesh)
        stiffness = stiffness_matrix(mesh.nodes, mesh.tets, sigma)
    check_connectivity(mesh, stiffness)  # the stiffness pattern is the node graph: no extra graph
    timings["assembly_s"] = time.perf_counter() - t
    return _Head(mesh, sigma, geometry, stiffness, inputs, timings)


def _prepare_head(protocol, base_dir, mesh) -> _Head:
    """Read + check the head, assign conductivities, assemble the stiffness matrix."""
    return _assemble_head(protocol, *_read_head(protocol, base_dir, mesh))


DEFAULT_RTOL = {"tdcs": 1e-10, "tacs": 1e-10, "tms": 1e-6}  # see SolverOptions.rtol


def _solver_for(opts, matrix, kind: str = "tdcs"):
    if opts.method == "direct":
        return FactorizedSolver(matrix)
    return amg_cg(rtol=opts.rtol or DEFAULT_RTOL[kind], maxiter=opts.maxiter)


def simulate(protocol, *, base_dir: Path | None = None, mesh: Mesh | None = None,
             verbose=None) -> SimulationResult:
    """Run a protocol (tDCS, tACS or TMS): read the head, assemble, apply sources, solve, derive fields.

    Parameters
    ----------
    protocol : validated protocol (:class:`TESProtocol` or :class:`TMSProtocol`)
    base_dir : directory that relative ``head``/coil paths are relative to (the protocol's folder)
    mesh : use this mesh instead of reading ``protocol.head`` (e.g. in batches)
    verbose : log level override (``True`` = INFO)
    """
    if verbose is not None:
        from ._logging import set_log_level

        set_log_level(verbose)
    if protocol.kind == "tms":
        from .tms import run_tms

        return run_tms(protocol, base_dir, mesh)
    return _solve_tes(protocol, _prepare_head(protocol, base_dir, mesh), base_dir)


def _solve_tes(protocol: TESProtocol, head: _Head, base_dir: Path | None = None) -> SimulationResult:
    mesh, geometry, sigma, timings = head.mesh, head.geometry, head.sigma, head.timings
    t = time.perf_counter()
    placed = place_electrodes(mesh, _electrode_specs(protocol, base_dir))
    system = electrode_system(head.stiffness, placed)
    b = system.rhs([e.current_A for e in placed])
    timings["electrodes_s"] = time.perf_counter() - t

    opts = protocol.solver
    x, info = _solver_for(opts, system.matrix)(system.matrix, b)
    timings["setup_s"], timings["solve_s"] = info.setup_s, info.solve_s

    t = time.perf_counter()
    potential = system.expand(x)
    e_field = element_efield(geometry, potential)
    j_field = sigma[:, None] * e_field
    method = "nodal_average" if opts.recovery == "auto" else opts.recovery
    recovered = recover(method, geometry, mesh, e_field)
    # the current each electrode actually delivers: the discrete flux K v summed over its nodes
    flux = head.stiffness @ potential
    delivered = {e.name: float(flux[e.nodes].sum()) for e in placed}
    timings["fields_s"] = time.perf_counter() - t
    logger.info("solved %s on %r: %d iterations, peak |E| %.3g V/m", protocol.kind, protocol.head,
                info.iterations, float(np.linalg.norm(e_field, axis=1).max()))
    return SimulationResult(protocol, mesh, potential, e_field, j_field, sigma, placed, info, recovered,
                            timings, head.inputs, delivered)


__all__ = ["simulate", "SimulationResult", "resolve_head", "protocol_sha256", "EMBEDDED_HEADS", "__version__"]
