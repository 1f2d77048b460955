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
from scipy.spatial import cKDTree

from ._logging import logger
from .coils import load_coil, place_coil, placement_from_matrix
from .errors import ProtocolError
from .protocol import TMSProtocol
from .solvers.assembly import assemble_load_from_element_vectors
from .solvers.electrodes import grounded_system
from .solvers.fields import element_efield, element_mean, recover
from .solvers.primary import dipole_dadt


def coil_didt_A_per_s(protocol: TMSProtocol, coil) -> float:
    """The pulse's dI/dt in A/s from the stimulator settings (and the coil's dI/dt max for % MSO)."""
    st = protocol.stimulator
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
    pl = protocol.placement
    if pl.matrix is not None:
        return placement_from_matrix(pl.matrix, mesh)
    center = pl.center
    if isinstance(center, str):
        from .simulation import named_position

        center = named_position(center, protocol, base_dir, "placement.center")
    return place_coil(mesh, center, pl.direction, pl.distance_mm)


def check_coil_outside(mesh, dipole_positions_mm: np.ndarray) -> None:
    """Refuse a coil whose windings lie inside the head (below the scalp surface)."""
    nodes, normals = mesh.boundary_node_normals()
    tree = cKDTree(mesh.nodes[nodes])
    _, idx = tree.query(dipole_positions_mm)
    depth = np.einsum("ij,ij->i", dipole_positions_mm - mesh.nodes[nodes[idx]], normals[idx])
    inside = depth < 0
    if np.any(inside):
        raise ProtocolError(
            f"placement: the coil intersects the head ({int(inside.sum())} of {len(inside)} coil dipoles lie "
            f"up to {-depth.min():.1f} mm under the scalp); increase placement.distance_mm or check the matrix"
        )


def solve_tms(protocol: TMSProtocol, head, base_dir: Path | None = None):
    from .simulation import SimulationResult, _solver_for

    mesh, geometry, sigma, timings = head.mesh, head.geometry, head.sigma, head.timings
    t = time.perf_counter()
    coil = load_coil(protocol.coil, base_dir)
    didt = coil_didt_A_per_s(protocol, coil)
    placement = placement_for(protocol, mesh, base_dir)
    dpos, dmom = coil.transformed(placement.matrix)
    check_coil_outside(mesh, dpos)
    dadt_nodes = dipole_dadt(mesh.nodes, dpos, dmom, didt)
    timings["dadt_s"] = time.perf_counter() - t

    t = time.perf_counter()
    dadt_elem = element_mean(dadt_nodes, mesh.tets)
    b_nodal = assemble_load_from_element_vectors(geometry, -sigma[:, None] * dadt_elem)
    system = grounded_system(head.stiffness, node=int(mesh.tets[0, 0]))
    b = system.rhs_from_nodal(b_nodal)
    timings["rhs_s"] = time.perf_counter() - t

    x, info = _solver_for(protocol.solver, system.matrix)(system.matrix, b)
    timings["setup_s"], timings["solve_s"] = info.setup_s, info.solve_s

    t = time.perf_counter()
    potential = system.expand(x)
    grad_part = element_efield(geometry, potential)  # -grad v
    e_field = grad_part - dadt_elem
    # recover only -grad v (it jumps at tissue boundaries); add the smooth primary field back
    method = "spr" if protocol.solver.recovery == "auto" else protocol.solver.recovery
    recovered = recover(method, geometry, mesh, grad_part)
    if recovered is not None:
        recovered -= dadt_elem
    timings["fields_s"] = time.perf_counter() - t
    extra = {
        "coil": {"name": coil.name, "dipoles": coil.n_dipoles,
                 "didt_max_A_per_s": coil.didt_max_A_per_s},
        "didt_A_per_s": didt,
        "placement": {"matrix": placement.matrix.tolist(), "scalp_point_mm": placement.scalp_point_mm.tolist(),
                      "distance_mm": placement.distance_mm},
        "program": protocol.program.expanded(),
    }
    logger.info("TMS %s at %s mm: dI/dt %.3g A/s, peak |E| %.3g V/m", coil.name,
                np.round(placement.center_mm, 1).tolist(), didt, float(np.linalg.norm(e_field, axis=1).max()))
    return SimulationResult(protocol, mesh, potential, e_field, sigma[:, None] * e_field, sigma, [], info,
                            recovered, timings, head.inputs, {}, {"dAdt": dadt_nodes}, extra)


class TMSModel:
    """A head prepared once for many coil placements: stiffness, grounding and AMG hierarchy reused.

    Each :meth:`efield` call costs one dA/dt evaluation, one right-hand side and one
    preconditioned CG solve.

    Parameters
    ----------
    protocol : TMSProtocol (head, conductivities, coil and stimulator are used; placement is not)
    mesh : an already loaded head mesh (optional)
    rtol : CG tolerance for the placement solves
    """

    def __init__(self, protocol: TMSProtocol, *, mesh=None, base_dir: Path | None = None, rtol: float | None = None):
        from .simulation import _prepare_head
        from .solvers.linear import FactorizedSolver

        self.protocol = protocol
        self.head = _prepare_head(protocol, base_dir, mesh)
        self.mesh = self.head.mesh
        self.coil = load_coil(protocol.coil, base_dir)
        self.didt = coil_didt_A_per_s(protocol, self.coil)
        self.system = grounded_system(self.head.stiffness, node=int(self.mesh.tets[0, 0]))
        self.solver = FactorizedSolver(self.system.matrix, backend="amg", rtol=rtol or protocol.solver.rtol)

    def placement(self, center_mm, direction, distance_mm: float = 4.0):
        return place_coil(self.mesh, center_mm, direction, distance_mm)

    def efield(self, matrix, elements: np.ndarray | None = None) -> np.ndarray:
        """Element-wise E (V/m) for the coil at a 4x4 coil-to-head matrix (mm).

        ``elements`` restricts the returned field (not the solve) to those element indices.
        """
        mesh, geometry, sigma = self.mesh, self.head.geometry, self.head.sigma
        dpos, dmom = self.coil.transformed(np.asarray(matrix, float))
        check_coil_outside(mesh, dpos)
        dadt_elem = element_mean(dipole_dadt(mesh.nodes, dpos, dmom, self.didt), mesh.tets)
        b = self.system.rhs_from_nodal(assemble_load_from_element_vectors(geometry, -sigma[:, None] * dadt_elem))
        v = self.system.expand(self.solver.solve(b))
        if elements is None:
            return element_efield(geometry, v) - dadt_elem
        g = geometry.grads_kdm[:, :, elements]
        t = mesh.tets[elements]
        grad = sum(v[t[:, k], None] * g[k].T for k in range(4))
        return -grad - dadt_elem[elements]
