"""Protocol -> head -> solve -> fields: the tDCS/tACS pipeline.

``simulate(protocol)`` returns a frozen :class:`SimulationResult`; writing files is the
job of :mod:`stimsim.results`, so the pipeline can run in notebooks and batches without
touching the disk.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._logging import log_level, logger
from .fem import ElectrodeSpec, electrode_system, element_efield, place_electrodes, recover, solver_for
from .fem.electrodes import boundary_node_areas, skin_current_density
from .head_model import (EMBEDDED_HEADS, HeadModel, named_position, protocol_sha256, read_head,  # noqa: F401
                         resolve_head, resolve_position, sha256_file)
from .mesh import Mesh
from .protocol import TESProtocol
from .simulation_result import SimulationResult, TESResult, TIResult, TMSResult
from .tissues import default_brain_tags as default_brain_tags_of_head


def default_brain_tags(protocol) -> list[int] | None:
    """Tags that stand for brain in field-based checks: the embedded sphere's inner ball (3), else
    None, so that the checker applies each rule's own default (white and grey matter,
    :data:`stimsim.tissues.BRAIN_TAGS`)."""
    return default_brain_tags_of_head(protocol.head) if protocol.head == "sphere" else None


def electrode_specs(protocol: TESProtocol, base_dir: Path | None = None, mesh: Mesh | None = None
                    ) -> list[ElectrodeSpec]:
    """The protocol's electrodes with EEG names and MNI points resolved to mm positions on its head
    (``mesh``: the head, needed for MNI points, which are moved onto its scalp)."""
    specs = []
    for k, e in enumerate(protocol.electrodes):
        pos = resolve_position(e.position, protocol, mesh, base_dir, f"electrodes[{k}].position")
        specs.append(ElectrodeSpec(e.name, pos, e.current_A, e.shape, e.diameter_mm, e.size_mm, e.direction))
    return specs


#: serialises simulate() across the threads of a process (see its docstring)
_ONE_AT_A_TIME = threading.RLock()


def simulate(protocol, *, base_dir: Path | None = None, mesh: Mesh | None = None,
             verbose=None) -> SimulationResult:
    """Run a protocol (tDCS, tACS, temporal interference or TMS): read the head, assemble, apply sources,
    solve, derive fields.

    Parameters
    ----------
    protocol : validated protocol (:class:`TESProtocol`, :class:`TIProtocol` or :class:`TMSProtocol`)
    base_dir : directory that relative ``head``/coil paths are relative to (the protocol's folder)
    mesh : use this mesh instead of reading ``protocol.head`` (e.g. in batches)
    verbose : log level during this call (``True`` = INFO), restored afterwards

    Calls from several threads of one process run one at a time: the numba kernels already use every
    core, and numba's "workqueue" back end (where neither TBB nor OpenMP is installed) aborts the
    process when two threads launch parallel kernels at once.  Processes run in parallel as before.
    """
    with _ONE_AT_A_TIME, log_level(verbose):
        if protocol.kind == "tms":
            from .tms import run_tms

            return run_tms(protocol, base_dir, mesh)
        if protocol.kind == "ti":
            from .ti import run_ti

            return run_ti(protocol, base_dir, mesh)
        return _run_tes(protocol, base_dir, mesh)


def _run_tes(protocol, base_dir: Path | None, mesh: Mesh | None) -> SimulationResult:
    """A single tDCS/tACS run.  With numba the head keeps no element gradients (kernels recompute
    them; 56 MiB less on Colin27), and the kernels (assembly, E, the AMG V-cycle) are loaded by a
    worker thread (:mod:`stimsim.kernel_warm_up`) while this thread reads the mesh."""
    from . import kernel_warm_up
    from .fem.kernels import use_numba

    if not use_numba():
        return solve_tes(protocol, HeadModel.from_protocol(protocol, base_dir, mesh), base_dir)
    kernel_warm_up.start()
    mesh, inputs, timings = read_head(protocol, base_dir, mesh)
    kernel_warm_up.wait()
    kernels = use_numba()  # False if numba turned out not to import
    head = HeadModel.assemble(mesh, protocol.conductivities, inputs=inputs, timings=timings, gradients=not kernels)
    return solve_tes(protocol, head, base_dir)


def solve_tes(protocol: TESProtocol, head: HeadModel, base_dir: Path | None = None) -> TESResult:
    """tDCS/tACS on a prepared head: place the electrodes, solve, derive E, J and the delivered currents."""
    if protocol.channels is not None:  # multichannel tACS
        from .tacs import solve_multichannel_tacs

        return solve_multichannel_tacs(protocol, head, electrode_specs(protocol, base_dir, head.mesh), base_dir)
    t = time.perf_counter()
    skin = head  # the head without sponges: what the skin current density is computed on
    placed = on_skin = place_electrodes(head.mesh, electrode_specs(protocol, base_dir, head.mesh))
    head, placed = head.with_electrode_layers(on_skin, protocol.electrodes, protocol.conductivities)
    mesh, geometry, sigma, timings = head.mesh, head.geometry, head.sigma, dict(head.timings)
    system = electrode_system(head.stiffness, placed)
    b = system.rhs([e.current_A for e in placed])
    timings["electrodes_s"] = time.perf_counter() - t

    opts = protocol.solver
    x, info = solver_for(opts, system.matrix, protocol.kind)(system.matrix, b)
    timings["setup_s"], timings["solve_s"] = info.setup_s, info.solve_s

    t = time.perf_counter()
    potential = system.expand(x)
    e_field = element_efield(geometry, potential, mesh.nodes)
    j_field = sigma[:, None] * e_field
    method = "nodal_average" if opts.recovery == "auto" else opts.recovery
    recovered = recover(method, geometry, mesh, e_field)
    # the current each electrode actually delivers: the discrete flux K v summed over its nodes
    flux = head.stiffness @ potential
    delivered = {e.name: float(flux[e.nodes].sum()) for e in placed}
    # the current entering the skin under each pad, node by node (the head's own elements only)
    skin_flux = flux if skin is head else skin.stiffness @ potential[:skin.mesh.n_nodes]
    node_area = boundary_node_areas(skin.mesh)
    skin_density = {e.name: skin_current_density(e, skin_flux, node_area) for e in on_skin}
    timings["fields_s"] = time.perf_counter() - t
    logger.info("solved %s on %r: %d iterations, peak |E| %.3g V/m", protocol.kind, protocol.head,
                info.iterations, float(np.linalg.norm(e_field, axis=1).max()))
    return TESResult(protocol=protocol, mesh=mesh, potential_V=potential, E=e_field, J=j_field, sigma=sigma,
                     solve_info=info, E_recovered=recovered, timings_s=timings, inputs=head.inputs,
                     electrodes=placed, electrode_currents_A=delivered, skin_current_density=skin_density)


__all__ = ["simulate", "solve_tes", "SimulationResult", "TESResult", "TIResult", "TMSResult", "electrode_specs",
           "named_position", "default_brain_tags", "HeadModel", "resolve_head", "protocol_sha256", "sha256_file", "EMBEDDED_HEADS",
           "__version__"]
