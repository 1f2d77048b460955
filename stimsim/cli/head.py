"""``stimsim mesh``: a tetrahedral head model from a tissue label volume."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import StimsimError
from .common import app, state

@app.command()
def mesh(
    labels: Path = typer.Argument(..., help="NIfTI label volume (.nii/.nii.gz)"),
    labels_map: str = typer.Option(..., "--labels", help="simnibs | roast | colin27 | FILE.tsv (label -> tag)"),
    out: Path = typer.Option(..., "--out", "-o", help="head mesh to write (.msh, .msh.gz or .vtu)"),
    method: str = typer.Option("auto", "--method", help="auto | surface | lattice: surface = smooth nested "
                               "surfaces + TetGen (volumes within ~2 %; needs tetgen, scikit-image), lattice = "
                               "BCC lattice (pip wheels only; thin CSF costs volume accuracy), auto = surface "
                               "when installed"),
    element_size_mm: Optional[float] = typer.Option(None, "--element-size", help="target edge length, mm "
                                                    "(default: surface 8, lattice 3.2)"),
    lesion: Optional[Path] = typer.Option(None, "--lesion", help="lesion mask (NIfTI, same grid as the labels)"),
    lesion_tag: int = typer.Option(3, "--lesion-tag", help="tissue tag given to lesioned voxels (default 3: CSF; "
                                   "e.g. 11 for its own tag, conductivity set in the protocol)"),
):
    """Build a tetrahedral head model from a tissue label volume (SimNIBS tags).

    Labels too small for --element-size are refused; a mesh that loses a tissue, is more than
    50 % off a tissue's voxel volume or has flat elements is not written (exit 2); volume errors
    over 5 %, dihedral angles under 5 degrees and radius ratios under 0.1 are warnings with
    numbers (docs/mesh_checks.md).

    Example: stimsim mesh labels.nii.gz --labels simnibs --out head.msh --lesion stroke_mask.nii.gz
    """
    raise typer.Exit(mesh_command(labels, labels_map, out, element_size_mm, lesion, lesion_tag=lesion_tag,
                                  progress=not state["quiet"], method=method))


_METHOD_NAMES = {"surface": "nested smoothed surfaces + TetGen", "lattice": "BCC lattice, closed and snapped"}


def mesh_command(labels: Path, labels_map: str, out: Path, element_size_mm: float | None = None,
                 lesion: Path | None = None, lesion_tag: int = 3, progress: bool = True, method: str = "auto") -> int:
    """Mesh a label volume and write it (temporary file, then renamed); print the quality summary.
    Returns the exit code (0 ok, 2 bad input with a one-line ``error: ...`` on stderr and nothing
    written).  ``method``: ``auto`` (surface when tetgen and scikit-image import, else lattice with
    a warning), ``surface`` or ``lattice`` (see :func:`stimsim.head.meshing.make_head_mesh`).

    Checks (docs/mesh_checks.md): before meshing, the head must span 3 element sizes and 4 voxels
    along each axis and every tissue needs 8 voxels and one element's volume (h^3/12); after it,
    a tissue missing from the mesh, a tissue volume off its voxel volume by more than 50 % or a
    flat / inverted element is an error (exit 2, nothing written); a volume off by more than 5 %,
    dihedral angles below 5 deg and radius ratios below 0.1 are warnings with the numbers."""
    from rich.console import Console

    from ..head.meshing import make_head_mesh, print_summary, quality_summary, resolve_method, write_mesh_atomic

    console = Console(stderr=True)
    out = Path(out)
    try:
        name = out.name.lower()
        if not name.endswith((".msh", ".msh.gz", ".vtu")):
            raise StimsimError(f"--out {out}: use a .msh, .msh.gz or .vtu file name")
        if not out.parent.exists():
            raise StimsimError(f"--out {out}: folder {out.parent} does not exist")
        method = resolve_method(method)
        mesh, info = make_head_mesh(Path(labels), None, labels_map, method=method, element_size_mm=element_size_mm,
                                    lesion=lesion, lesion_tag=lesion_tag, progress=progress, return_info=True)
        expected = info.expected_volume_mm3 or info.voxel_volume_mm3
        q = info.quality or quality_summary(mesh, expected)
        write_mesh_atomic(out, mesh)
    except StimsimError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)  # one line, unwrapped
        return 2
    console.print(f"method {method} ({_METHOD_NAMES[method]})" + (f", from cache {info.cache_file}"
                                                                  if info.from_cache else ""),
                  markup=False, highlight=False)
    print_summary(q, expected, console)
    console.print(f"wrote {out} ({info.timings_s.get('total_s', 0):.1f} s)", markup=False, highlight=False)
    return 0
