"""TMS coils: dipole models (.ccd files, parametric circular/figure-8) and their placement."""

from .model import CoilError, DipoleCoil, make_coil, read_ccd
from .placement import CoilPlacement, place_coil, placement_from_matrix
from .library import SHIPPED_COILS, load_coil

__all__ = ["DipoleCoil", "CoilError", "read_ccd", "make_coil", "CoilPlacement", "place_coil",
           "placement_from_matrix", "load_coil", "SHIPPED_COILS"]
