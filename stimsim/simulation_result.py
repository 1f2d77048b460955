"""What a simulation returns: one typed result per modality (fields in SI units, mesh in mm).

:class:`SimulationResult` holds what every modality has (potential, E, J, conductivities, the
solver's report); :class:`TESResult` adds the placed electrodes and the currents they deliver,
:class:`TMSResult` the coil, its placement, dI/dt and the primary field dA/dt.  Results are
frozen: writers, safety checks and pictures read them, nothing changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .fem import PlacedElectrode, SolveInfo
from .mesh import Mesh


@dataclass(frozen=True, eq=False, kw_only=True)
class SimulationResult:
    """Fields of one simulation.

    Attributes
    ----------
    protocol : the validated protocol that was run
    mesh : the head mesh (mm)
    potential_V : (n,) nodal potential, V (TES: reference electrode at 0 V; TMS: one grounded node)
    E : (m, 3) element-wise electric field, V/m
    J : (m, 3) element-wise current density, A/m²
    sigma : (m,) conductivity per element, S/m
    solve_info : iterations, residual and times of the linear solve
    E_recovered : (m, 3) recovered field at element centroids, or None
    timings_s : seconds per stage
    inputs : hashes of the protocol and head file the result was computed from
    """

    protocol: object
    mesh: Mesh
    potential_V: np.ndarray
    E: np.ndarray
    J: np.ndarray
    sigma: np.ndarray
    solve_info: SolveInfo
    E_recovered: np.ndarray | None = None
    timings_s: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    @cached_property
    def magnE(self) -> np.ndarray:
        """|E| per element, V/m (computed once; no (m, 3) temporary)."""
        return np.sqrt(np.einsum("ij,ij->i", self.E, self.E))

    def node_fields(self) -> dict[str, np.ndarray]:
        """Nodal fields to write: the potential ``v`` (V), and what the modality adds."""
        return {"v": self.potential_V}


@dataclass(frozen=True, eq=False, kw_only=True)
class TESResult(SimulationResult):
    """tDCS/tACS: also the placed electrodes and the current each delivers.

    Attributes
    ----------
    electrodes : electrode patches on the scalp, in protocol order
    electrode_currents_A : current each electrode delivers, recomputed from the discrete flux
        ``K v`` over its nodes (a conservation check: equals the set current to solver precision)
    """

    electrodes: list[PlacedElectrode] = field(default_factory=list)
    electrode_currents_A: dict = field(default_factory=dict)

    def electrode_potentials_V(self) -> dict[str, float]:
        return {e.name: float(self.potential_V[e.center_node]) for e in self.electrodes}


@dataclass(frozen=True, eq=False, kw_only=True)
class TMSResult(SimulationResult):
    """TMS: also the coil, its placement and the primary field.

    Attributes
    ----------
    dadt_V_per_m : (n, 3) primary field dA/dt at the nodes, V/m (E = -dA/dt - grad v)
    placement : the coil's :class:`~stimsim.coils.placement.CoilPlacement` (4x4 matrix, mm)
    coil_summary : the coil's description (name, dipoles or grid, dI/dt at 100 %)
    didt_A_per_s : the pulse's dI/dt, A/s
    program : the expanded pulse program (trains, pulses, timing)
    """

    dadt_V_per_m: np.ndarray
    placement: object
    coil_summary: dict
    didt_A_per_s: float
    program: dict = field(default_factory=dict)

    def node_fields(self) -> dict[str, np.ndarray]:
        return {"v": self.potential_V, "dAdt": self.dadt_V_per_m}

    def tms_summary(self) -> dict:
        """The summary's ``tms`` section (JSON-ready)."""
        pl = self.placement
        return {"coil": self.coil_summary, "didt_A_per_s": self.didt_A_per_s,
                "placement": {"matrix": np.asarray(pl.matrix).tolist(),
                              "scalp_point_mm": np.asarray(pl.scalp_point_mm).tolist(),
                              "distance_mm": pl.distance_mm},
                "program": self.program}


__all__ = ["SimulationResult", "TESResult", "TMSResult"]
