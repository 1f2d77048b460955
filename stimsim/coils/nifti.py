"""TMS coils given as a sampled vector potential ("A-field" NIfTI files, SimNIBS convention).

The file is a 4D NIfTI-1 image of shape (nx, ny, nz, 3): the magnetic vector potential A
of the coil per unit dI/dt (V/m per A/s), x/y/z components in the coil frame (see
:mod:`stimsim.coils.model`), on a regular grid whose affine maps voxel indices to
coil-frame coordinates in mm.  Such files hold no dI/dt at 100 % output that we could rely
on; give ``coil.didt_max_A_per_us`` in the protocol for ``percent_mso``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._logging import logger
from ..errors import ProtocolError
from .model import CoilError

#: share of evaluation points outside the grid above which a warning is logged
OUTSIDE_WARN_FRACTION = 0.01


@dataclass(frozen=True, eq=False)
class GridCoil:
    """A coil known by dA/dt per unit dI/dt on a regular grid in the coil frame.

    Attributes
    ----------
    name : label
    a_field : (nx, ny, nz, 3) A per unit dI/dt (V/m per A/s), coil-frame components, stored dtype
    affine : (4, 4) voxel index -> coil-frame mm
    didt_max_A_per_s : maximum dI/dt at 100 % output, if known (from the protocol)
    metadata : file facts (path, voxel size)
    """

    name: str
    a_field: np.ndarray
    affine: np.ndarray
    didt_max_A_per_s: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        a, aff = np.asarray(self.a_field), np.asarray(self.affine, float)
        if a.ndim != 4 or a.shape[3] != 3 or min(a.shape[:3]) < 2:
            raise CoilError(f"coil {self.name!r}: an A-field must have shape (nx, ny, nz, 3) with n >= 2 "
                            f"(a 3-vector per voxel of a 3D grid), got {a.shape}")
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise CoilError(f"coil {self.name!r}: the grid affine must be a finite, invertible 4x4 matrix")
        object.__setattr__(self, "a_field", a)
        object.__setattr__(self, "affine", aff)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.a_field.shape[:3])

    def __repr__(self):
        return f"<GridCoil {self.name!r} | grid {self.grid_shape}, dI/dt max {self.didt_max_A_per_s}>"

    def summary(self) -> dict:
        """JSON-ready description for a result's ``extra["coil"]``."""
        return {"name": self.name, "grid_shape": list(self.grid_shape),
                "voxel_size_mm": np.linalg.norm(self.affine[:3, :3], axis=0).round(6).tolist(),
                "didt_max_A_per_s": self.didt_max_A_per_s}

    def transformed(self, matrix_mm):
        raise CoilError(f"coil {self.name!r} is a sampled A-field: it has no dipoles (windings) to place or draw")

    def dadt(self, points_mm: np.ndarray, matrix_mm: np.ndarray, didt_A_per_s: float, *,
             precision: str = "double") -> np.ndarray:
        """dA/dt (V/m, head frame) at head points (mm) for a 4x4 coil-to-head matrix (mm).

        Trilinear interpolation of each component (``precision`` is accepted for the common
        coil interface; the interpolation runs in the file's dtype).  Points outside the grid
        get 0, which under-estimates the field there: more than 1 % of them logs a warning.
        """
        from scipy.ndimage import map_coordinates

        if precision not in ("double", "single", "fast"):
            raise ValueError(f"precision: {precision!r} is not 'double', 'single' or 'fast'")
        pts = np.asarray(points_mm, float).reshape(-1, 3)
        m = np.asarray(matrix_mm, float)
        # head mm -> coil mm -> voxel indices, as one affine map
        to_voxel = np.linalg.inv(self.affine) @ np.linalg.inv(m)
        ijk = pts @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        upper = np.array(self.grid_shape) - 1
        # a small tolerance keeps points on the grid's faces (round-off of the inverse maps) inside
        outside = np.any((ijk < -1e-6) | (ijk > upper + 1e-6), axis=1)
        coords = np.clip(ijk, 0, upper).T
        a = np.column_stack([map_coordinates(self.a_field[..., c], coords, order=1, mode="nearest")
                             for c in range(3)]).astype(float)
        a[outside] = 0.0
        n_out = int(outside.sum())
        if n_out > OUTSIDE_WARN_FRACTION * len(pts):
            logger.warning("coil %s: %d of %d points (%.1f %%) lie outside the A-field grid; dA/dt is set to 0 "
                           "there, which under-estimates the field (use a file whose grid covers the head)",
                           self.name, n_out, len(pts), 100.0 * n_out / len(pts))
        # coil-frame vector components -> head frame
        return a @ (m[:3, :3].T * didt_A_per_s)

    def check_outside(self, mesh, matrix_mm: np.ndarray) -> None:
        """Refuse a placement whose coil centre (the grid has no windings to test) lies inside the head."""
        from .placement import scalp_depth

        depth = float(scalp_depth(mesh, np.asarray(matrix_mm, float)[None, :3, 3])[0])
        if depth < 0:
            raise ProtocolError(
                f"placement: the coil intersects the head (its centre lies {-depth:.1f} mm under the scalp); "
                "increase placement.distance_mm or check the matrix"
            )


def read_nifti_coil(path: str | Path) -> GridCoil:
    """Read a 4D NIfTI A-field coil (.nii or .nii.gz, SimNIBS convention); see the module docstring.

    Raises
    ------
    CoilError
        When nibabel is missing, or the file is unreadable, not 4D with a last axis of 3,
        holds non-finite values, or has a singular affine.
    """
    path = Path(path)
    try:
        import nibabel as nib
    except ImportError:
        raise CoilError(f"{path}: reading NIfTI coil files needs nibabel: pip install nibabel "
                        "(or pip install 'stimsim[head]')") from None
    if not path.is_file():
        raise CoilError(f"coil file not found: {path}")
    try:
        img = nib.load(str(path), mmap=False)  # an in-memory copy: no open file handle kept
        data = np.asanyarray(img.dataobj)  # stored dtype unless the header asks for scaling
        affine = np.asarray(img.affine, float)
    except Exception as err:  # nibabel raises several kinds for damaged files
        raise CoilError(f"{path}: not a readable NIfTI file ({err})") from None
    if data.ndim != 4 or data.shape[3] != 3 or min(data.shape[:3]) < 2:
        raise CoilError(f"{path}: an A-field coil must be a 4D image of shape (nx, ny, nz, 3), n >= 2 "
                        f"(x, y, z components of A on a 3D grid), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise CoilError(f"{path}: the A-field holds {int(np.count_nonzero(~np.isfinite(data)))} non-finite values")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CoilError(f"{path}: the image affine is singular or non-finite; voxel positions cannot be recovered")
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    return GridCoil(name, data, affine, None, {"file": str(path), "voxel_size_mm": zooms.tolist()})
