"""``stimsim mesh``, ``stimsim head`` and ``stimsim segment``: head models from label volumes and MRIs."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import typer

from ..cache import sha256_file
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
    surface_size_mm: Optional[float] = typer.Option(None, "--surface-size", help="surface mesher: spacing of the "
                                                    "tissue surfaces' sampling, mm (default: half the element "
                                                    "size, sizes graded inwards; equal to it: about uniform)"),
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
                                  progress=not state["quiet"], method=method, surface_size_mm=surface_size_mm))

NECK_HELP = ("a scan cut through the brain stem is extended this far down, 0..100 mm (its lowest slice "
             "repeated, rounded up to whole voxels; default 20) so that the head is closed below the brain, not "
             "through it; 0: the head ends where the scan does (docs/mri.md)")


@app.command()
def head(
    t1: Path = typer.Argument(..., help="T1-weighted MRI of the whole head (.nii/.nii.gz/.mgz)"),
    out: Path = typer.Option(..., "--out", "-o", help="head folder to create (head.msh, labels.nii.gz, "
                             "positions.tsv, subject_to_mni.txt, qc.png, head.json)"),
    t2: Optional[Path] = typer.Option(None, "--t2", help="T2-weighted MRI (resampled onto the T1)"),
    lesion: Optional[Path] = typer.Option(None, "--lesion", help="lesion mask on the T1's grid"),
    lesion_tag: int = typer.Option(3, "--lesion-tag", help="tissue tag of lesioned voxels in the mesh (3: CSF)"),
    threads: int = typer.Option(2, "--threads", help="SAMSEG threads"),
    fast: bool = typer.Option(False, "--fast", help="SAMSEG's coarse level only (previews, tests)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a head folder stimsim wrote"),
    method: str = typer.Option("auto", "--method", help="mesher: auto | surface | lattice"),
    element_size_mm: Optional[float] = typer.Option(None, "--element-size", help="target edge length, mm"),
    neck_mm: Optional[float] = typer.Option(None, "--neck-mm", help=NECK_HELP),
):
    """A person's head model from their MRI: SAMSEG tissues -> mesh -> EEG positions and MNI transform.

    Needs the "mri" extra and SAMSEG (README: heads from MRI).  Each stage is cached in OUT/stimsim-cache/, so a
    rerun after a crash resumes.  Example: stimsim head T1.nii.gz --out subj/ (then `head: subj/`).
    """
    raise typer.Exit(head_command(t1, out, t2=t2, lesion=lesion, lesion_tag=lesion_tag, threads=threads, fast=fast,
                                  overwrite=overwrite, method=method, element_size_mm=element_size_mm,
                                  neck_mm=neck_mm, quiet=state["quiet"]))


@app.command()
def segment(
    t1: Path = typer.Argument(..., help="T1-weighted MRI (whole head, or brain only)"),
    out: Path = typer.Option(..., "--out", "-o", help="label volume to write (.nii.gz), SimNIBS tags"),
    t2: Optional[Path] = typer.Option(None, "--t2", help="T2-weighted MRI (resampled onto the T1)"),
    threads: int = typer.Option(2, "--threads", help="SAMSEG threads"),
    fast: bool = typer.Option(False, "--fast", help="SAMSEG's coarse level only (previews, tests)"),
    neck_mm: Optional[float] = typer.Option(None, "--neck-mm", help=NECK_HELP + "; a brain-only image gets none"),
):
    """Only the segmentation: T1 (+T2) -> labels.nii.gz in SimNIBS tags (1 WM .. 6 eyes).

    Example: stimsim segment T1.nii.gz --out labels.nii.gz (then stimsim mesh labels.nii.gz --labels simnibs)
    """
    raise typer.Exit(segment_command(t1, out, t2=t2, threads=threads, fast=fast, neck_mm=neck_mm, quiet=state["quiet"]))


_METHOD_NAMES = {"surface": "nested smoothed surfaces + TetGen", "lattice": "BCC lattice, closed and snapped"}


def mesh_command(labels: Path, labels_map: str, out: Path, element_size_mm: float | None = None,
                 lesion: Path | None = None, lesion_tag: int = 3, progress: bool = True, method: str = "auto",
                 surface_size_mm: float | None = None) -> int:
    """Mesh a label volume and write it (temporary file, then renamed) with its summary beside it
    (:func:`mesh_summary_path`: the quality report, per-tissue volumes, the mesher's steps and
    timings; JSON); print the quality summary.
    Returns the exit code (0 ok, 2 bad input with a one-line ``error: ...`` on stderr and nothing
    written).  ``method``: ``auto`` (surface when tetgen and scikit-image import, else lattice with
    a warning), ``surface`` or ``lattice`` (see :func:`stimsim.head.meshers.make_head_mesh`).

    Checks (docs/mesh_checks.md): before meshing, the head must span 3 element sizes and 4 voxels
    along each axis and every tissue needs 8 voxels and one element's volume (h^3/12); after it,
    a tissue missing from the mesh, a tissue volume off its voxel volume by more than 50 % or a
    flat / inverted element is an error (exit 2, nothing written); a volume off by more than 5 %,
    dihedral angles below 5 deg and radius ratios below 0.1 are warnings with the numbers.
    ``surface_size_mm``: see :func:`~stimsim.head.meshers.make_head_mesh`."""
    from rich.console import Console

    from ..head.meshers import make_head_mesh, print_summary, quality_summary, resolve_method
    from ..mesh import write_mesh

    console = Console(stderr=True)
    out = Path(out)
    try:
        name = out.name.lower()
        if not name.endswith((".msh", ".msh.gz", ".vtu")):
            raise StimsimError(f"--out {out}: use a .msh, .msh.gz or .vtu file name")
        if not out.parent.exists():
            raise StimsimError(f"--out {out}: folder {out.parent} does not exist")
        summary_path = mesh_summary_path(out)
        _check_replaceable(out, summary_path)  # before the work; again before the write (it takes minutes)
        _check_size_option("--element-size", element_size_mm)
        _check_size_option("--surface-size", surface_size_mm)
        method = resolve_method(method)
        mesh, info = make_head_mesh(Path(labels), None, labels_map, method=method, element_size_mm=element_size_mm,
                                    lesion=lesion, lesion_tag=lesion_tag, progress=progress, return_info=True,
                                    surface_size_mm=surface_size_mm)
        expected = info.expected_volume_mm3 or info.voxel_volume_mm3
        q = info.quality or quality_summary(mesh, expected)
        summary = _mesh_summary(out, labels, method, info, q, expected)
        try:  # both written to temporary files first; renamed into place only when both are complete
            from ..outputs import atomic_file

            ext = next(e for e in (".msh.gz", ".msh", ".vtu") if out.name.lower().endswith(e))
            others = _check_replaceable(out, summary_path)
            with atomic_file(summary_path) as tmp_summary:
                with atomic_file(out, suffix=ext) as tmp_mesh:
                    write_mesh(tmp_mesh, mesh)
                    # the meshes this summary vouches for: this one as written, and the others beside it
                    summary["meshes_sha256"] = {**{k: v for k, v in others.items() if k != out.name},
                                                out.name: sha256_file(tmp_mesh)}
                    _write_json(tmp_summary, summary)
                # the mesh is in place; the summary follows (a failed mesh rename removes both temporaries)
        except OSError as exc:
            raise StimsimError(f"--out {out}: cannot write ({exc}); choose a folder you can write to, with "
                               "free space") from None
    except StimsimError as exc:
        console.print(f"error: {_as_typed(exc)}", markup=False, highlight=False, soft_wrap=True)  # one line, unwrapped
        return 2
    console.print(f"method {method} ({_METHOD_NAMES[method]})" + (f", from cache {info.cache_file}"
                                                                  if info.from_cache else ""),
                  markup=False, highlight=False)
    print_summary(q, expected, console)
    console.print(f"wrote {out} and {summary_path.name} ({info.timings_s.get('total_s', 0):.1f} s)", markup=False,
                  highlight=False)
    return 0


def _as_typed(exc: Exception) -> str:
    """An error of the mesher's checks, which name its keyword arguments, with the options a person typed."""
    return str(exc).replace("element_size_mm", "--element-size").replace("surface_size_mm", "--surface-size")


def _check_size_option(flag: str, value: float | None) -> None:
    """A size in mm given on the command line: a positive number, named by its option."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise StimsimError(f"{flag} must be a positive size in mm, got {value:g}; leave it out for the default")


MESH_SUMMARY_FORMAT = "stimsim-mesh-summary-1"


def mesh_summary_path(out: Path) -> Path:
    """Where ``stimsim mesh --out X.msh`` (or .msh.gz, .vtu) stores the mesh's summary: X.summary.json."""
    name = out.name
    for ext in (".msh.gz", ".msh", ".vtu"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return out.with_name(f"{name}.summary.json")


def _our_summary(path: Path) -> dict | None:
    """The summary ``stimsim mesh`` wrote at ``path``, or None (absent, or not ours)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MESH_SUMMARY_FORMAT else None


def _meshes_written(summary: dict | None) -> dict[str, str | None]:
    """{file name: sha256 or None (a summary before the hashes)} of the meshes a summary says stimsim
    mesh wrote beside it (X.msh, X.msh.gz and X.vtu share one summary)."""
    if not summary:
        return {}
    out = {str(k): (str(v) if v else None) for k, v in (summary.get("meshes_sha256") or {}).items()}
    if summary.get("mesh") and str(summary["mesh"]) not in out:
        out[str(summary["mesh"])] = None
    return out


def _check_replaceable(out: Path, summary: Path) -> dict[str, str | None]:
    """An existing mesh or summary is replaced only when stimsim mesh wrote it: the summary is ours
    (its format), and an existing mesh is one that summary lists, with the content it recorded (a mesh
    file carries no mark of its own; one edited or copied over since is not replaced).  Returns the
    meshes the summary lists (the new summary keeps those still there)."""
    import os

    if out.is_dir() or out.is_symlink():
        raise StimsimError(f"--out {out} is a folder or a link; give a new file name")
    ours = None
    if summary.exists() or summary.is_symlink():
        ours = None if summary.is_symlink() else _our_summary(summary)
        if ours is None:
            raise StimsimError(f"--out: {summary} exists and was not written by stimsim mesh; move it away or "
                               "choose another --out")
    written = _meshes_written(ours)
    if out.exists():
        same = [name for name in written if (out.parent / name).exists()
                and os.path.samefile(out, out.parent / name)]
        if not same:
            raise StimsimError(f"--out {out} exists and no stimsim summary beside it ({summary.name}) names it; "
                               "stimsim replaces only its own files: move it away or choose another --out")
        sha = written[same[0]]
        if sha is not None and sha256_file(out) != sha:
            raise StimsimError(f"--out {out} has changed since stimsim mesh wrote it; stimsim replaces only its "
                               "own files: move it away or choose another --out")
    return {name: sha for name, sha in written.items() if (out.parent / name).exists()}


def _mesh_summary(out: Path, labels: Path, method: str, info, q: dict, expected: dict) -> dict:
    from .. import __version__

    def plain(d):  # JSON keys: tags as strings
        return {str(k): v for k, v in d.items()}

    return {"format": MESH_SUMMARY_FORMAT, "written_by": f"stimsim {__version__}", "mesh": out.name,
            "labels": str(labels), "method": method, "from_cache": bool(info.from_cache),
            "nodes": q["n_nodes"], "tetrahedra": q["n_tets"],
            "volume_mm3_per_tag": plain(q["volume_mm3_per_tag"]), "voxel_volume_mm3_per_tag": plain(expected),
            "volume_error_per_tag": plain(q.get("volume_error_per_tag", {})),
            "connectivity": plain(q["connectivity"]),
            "shape": {"min_dihedral_deg": q["min_dihedral_deg"], "max_dihedral_deg": q["max_dihedral_deg"],
                      "radius_ratio": q["radius_ratio"], "edge_length_mm": q["edge_length_mm"],
                      **q["elements"]},
            "cut_faces": getattr(info, "cut_faces", {}),
            # tissues of the labels meshed as another (the surface mesher: one too thin for the elements)
            "merged_tags": plain(getattr(info, "merged_tags", {})),
            "mesher": info.mesher, "timings_s": info.timings_s}


def _write_json(path: Path, data: dict) -> None:
    import json

    path.write_text(json.dumps(data, indent=1, default=_json_default), encoding="utf-8")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _err(exc) -> int:
    text = str(exc).replace("\n", " ")
    print(f"error: {text}", file=sys.stderr, flush=True)
    return 2


def _say(quiet: bool):
    if quiet:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def head_command(t1: Path, out: Path, *, t2: Path | None = None, lesion: Path | None = None, lesion_tag: int = 3,
                 threads: int = 2, fast: bool = False, overwrite: bool = False, method: str = "auto",
                 element_size_mm: float | None = None, neck_mm: float | None = None, quiet: bool = False) -> int:
    """Make a head folder from a T1 (+T2, + lesion mask).  Returns the exit code: 0 done (a summary
    line on stderr), 2 bad input or a failed stage (one ``error:`` line on stderr; ``--out`` then holds
    nothing, or only ``stimsim-cache/`` with a finished segmentation for a rerun to resume)."""
    from ..head.cleanup import check_neck_mm
    from ..head.subject import make_head_folder

    if not 1 <= int(threads) <= 256:
        return _err(f"--threads must be 1..256, got {threads}")
    try:
        _check_size_option("--element-size", element_size_mm)  # before the segmentation's minutes
        cleanup = None if neck_mm is None else {"neck_mm": check_neck_mm(neck_mm, "--neck-mm")}
        info = make_head_folder(t1, out, t2=t2, lesion=lesion, lesion_tag=lesion_tag, threads=threads, fast=fast,
                                overwrite=overwrite, method=method, element_size_mm=element_size_mm,
                                cleanup=cleanup, progress=_say(quiet))
    except (StimsimError, OSError) as exc:
        return _err(_as_typed(exc) if isinstance(exc, StimsimError) else exc)
    vol = info["tissue_volume_cm3"]["labels"]
    names = info["tags"]
    if not quiet:
        print(f"wrote {out}: {info['mesh']['tetrahedra']:,} tetrahedra; tissues (cm^3) "
              + ", ".join(f"{names[str(k)]} {v:.0f}" for k, v in sorted(vol.items()))
              + f"; {info['total_time_s']:.0f} s", file=sys.stderr, flush=True)
    for w in info.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr, flush=True)
    return 0


def segment_command(t1: Path, out: Path, *, t2: Path | None = None, threads: int = 2, fast: bool = False,
                    neck_mm: float | None = None, quiet: bool = False) -> int:
    """Segment a T1 (+T2) into SimNIBS tags and write ``out`` (.nii or .nii.gz, a new file); a brain-only
    image is accepted (then only WM, GM and CSF are labelled).  Exit codes as :func:`head_command`."""
    from ..head.cleanup import check_neck_mm
    from ..outputs import check_output_file
    from ..head.subject import save_nifti, segment_mri

    out = Path(out)
    try:
        if not out.name.lower().endswith((".nii", ".nii.gz")):
            raise StimsimError(f"--out {out}: give a .nii.gz (or .nii) file name")
        if not 1 <= int(threads) <= 256:
            raise StimsimError(f"--threads must be 1..256, got {threads}")
        check_output_file(out)
        cleanup = None if neck_mm is None else {"neck_mm": check_neck_mm(neck_mm, "--neck-mm")}
        res = segment_mri(t1, t2, threads=threads, fast=fast, cleanup=cleanup, progress=_say(quiet))
        out.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(out, res.tags, res.affine, label=True)
    except (StimsimError, OSError) as exc:
        return _err(exc)
    if not quiet:
        kind = "whole head" if res.whole_head else "brain only"
        names = {1: "WM", 2: "GM", 3: "CSF", 4: "bone", 5: "scalp", 6: "eyes"}
        print(f"wrote {out} ({kind}); tissues (cm^3) "
              + ", ".join(f"{names[k]} {v:.0f}" for k, v in sorted(res.volumes_cm3.items())), file=sys.stderr)
    return 0
