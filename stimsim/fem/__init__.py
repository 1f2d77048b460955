"""P1 finite elements for the quasi-static head problem div(sigma grad v) = f.

Small composable pieces, each one implementation:

* geometry and forms (:mod:`~stimsim.fem.assembly`): element gradients and volumes
  (:class:`P1Geometry`), the stiffness matrix, loads from element vectors (the TMS source);
* boundary conditions (:mod:`~stimsim.fem.electrodes`): electrode patches as equipotential
  unknowns carrying set currents, or one grounded node;
* linear solvers (:mod:`~stimsim.fem.linear`): AMG-preconditioned CG, a factorised solver for
  many right-hand sides, :func:`solver_for` (what a protocol's ``solver:`` asks for);
* fields (:mod:`~stimsim.fem.fields`): element E = -grad v, node-wise recovery;
* the TMS primary field (:mod:`stimsim.fem.primary`, imports numba when installed) and the
  numba P1 kernels (:mod:`stimsim.fem.p1_numba`); both load on first use, so a tDCS run never
  imports numba.
"""

from .assembly import P1Geometry, assemble_load_from_element_vectors, assemble_stiffness
from .electrodes import (ElectrodeSpec, ElectrodeSystem, GroundedSystem, PlacedElectrode, electrode_system,
                         grounded_system, place_electrodes)
from .fields import element_efield, element_mean, recover
from .kernels import use_numba
from .linear import (DEFAULT_RTOL, FactorizedSolver, SolveInfo, amg_cg, amg_hierarchy, amg_preconditioner,
                     amg_preconditioner_for, pcg, solver_for)

__all__ = ["P1Geometry", "assemble_stiffness", "assemble_load_from_element_vectors", "ElectrodeSpec",
           "ElectrodeSystem", "GroundedSystem", "PlacedElectrode", "electrode_system", "grounded_system",
           "place_electrodes", "use_numba", "element_efield", "element_mean", "recover", "DEFAULT_RTOL",
           "FactorizedSolver", "SolveInfo", "amg_cg", "amg_hierarchy", "amg_preconditioner", "amg_preconditioner_for", "pcg", "solver_for"]
