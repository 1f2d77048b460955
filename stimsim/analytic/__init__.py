"""Analytic reference solutions used to validate the FEM solvers.

* :func:`tdcs_sphere_potential`, :func:`tdcs_sphere_efield`: point electrodes on a
  concentric multi-layer sphere (Legendre series, Rush & Driscoll 1968).
* :func:`tms_sphere_efield`: magnetic dipoles outside a spherically symmetric conductor
  (closed form, Heller & van Hulsteyn 1992); :func:`dipole_dadt`: free-space dA/dt.
* :func:`rel_l2`, :func:`rdm`, :func:`mag`: error metrics.
"""

from .metrics import mag, rdm, rel_l2
from .sphere_tdcs import auto_n_terms, tdcs_sphere_efield, tdcs_sphere_potential
from .sphere_tms import MU0, dipole_dadt, tms_sphere_efield

__all__ = [
    "tdcs_sphere_potential",
    "tdcs_sphere_efield",
    "auto_n_terms",
    "tms_sphere_efield",
    "dipole_dadt",
    "MU0",
    "rel_l2",
    "rdm",
    "mag",
]
