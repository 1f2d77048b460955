"""TMS coils: dipole models (.ccd files, parametric circular/figure-8), sampled A-field grids
(.nii/.nii.gz, read-only) and their placement."""

from .model import CoilError, DipoleCoil, make_coil, read_ccd
from .nifti import GridCoil, read_nifti_coil
from .placement import CoilPlacement, place_coil, placement_from_matrix
from .library import SHIPPED_COILS, load_coil

__all__ = ["DipoleCoil", "GridCoil", "CoilError", "read_ccd", "read_nifti_coil", "make_coil", "CoilPlacement",
           "place_coil", "placement_from_matrix", "load_coil", "SHIPPED_COILS"]
