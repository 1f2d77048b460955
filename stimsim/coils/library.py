"""Coils shipped with stimsim and resolution of a protocol's ``coil`` entry."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .model import CoilError, DipoleCoil, make_coil, read_ccd
from .nifti import GridCoil, read_nifti_coil

#: shipped .ccd files (SimNIBS legacy coil models, GPL-3.0; see stimsim/data/README.md)
SHIPPED_COILS = ("Magstim_70mm_Fig8.ccd", "MagVenture_MC_B70.ccd")


def load_coil(spec, base_dir: Path | None = None) -> DipoleCoil | GridCoil:
    """Coil model for a protocol's ``coil`` entry (:class:`stimsim.protocol.CoilSpec`).

    ``.nii``/``.nii.gz`` files are read as A-field grid coils, anything else as .ccd dipoles.
    """
    if spec.type is not None:
        coil = make_coil(spec.type, outer_diameter_mm=spec.outer_diameter_mm,
                         inner_diameter_mm=spec.inner_diameter_mm, turns=spec.turns,
                         winding_depth_mm=spec.winding_depth_mm, didt_max_A_per_us=spec.didt_max_A_per_us)
        return coil
    path = Path(spec.file).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).is_file():
        path = Path(base_dir) / path
    if not path.is_file():
        name = path.name if path.name.endswith(".ccd") else path.name + ".ccd"
        if name in SHIPPED_COILS:
            path = Path(str(resources.files("stimsim") / "data" / "coils" / (name + ".gz")))
        else:
            raise CoilError(f"coil.file: {spec.file!r} is neither a file nor a shipped coil "
                            f"({', '.join(SHIPPED_COILS)})")
    coil = read_nifti_coil(path) if path.name.lower().endswith((".nii", ".nii.gz")) else read_ccd(path)
    if spec.didt_max_A_per_us is not None:
        from dataclasses import replace

        coil = replace(coil, didt_max_A_per_s=spec.didt_max_A_per_us * 1e6)
    return coil
