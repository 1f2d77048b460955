"""Command line: ``stimsim demo | run | check | view | report | protocols | mesh | leadfield |
optimize | batch | schema | version``.

Every deliberate error (bad protocol, unreadable mesh, solver failure) prints one line
``error: ...`` and exits with code 2; no partial output folder is left behind.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from . import __version__
from ._logging import logger
from .errors import StimsimError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Plan and simulate noninvasive brain stimulation (tDCS/tACS, TMS).\n\n"
    "Examples:\n\n  stimsim demo\n\n  stimsim run protocol.yaml --out results/\n\n"
    "  stimsim check protocol.yaml --simulate\n\n  stimsim schema > protocol.schema.json",
)

_state = {"quiet": False}


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each step with timings"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing but errors"),
):
    from rich.logging import RichHandler

    _state["quiet"] = quiet
    _single_malloc_arena()
    handler = RichHandler(show_path=False, console=_stderr_console())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)


def _single_malloc_arena() -> None:
    """One glibc malloc arena for all threads (M_ARENA_MAX = 1).

    A TMS run computes the coil's field in a worker thread; with an arena per thread, memory
    that thread frees is not reused by the main thread, so peak RSS grows by ~30 MB on a
    668k-tet head (and the run is no faster).  The work is in large numpy arrays, so sharing
    one arena costs no lock contention worth measuring.  Process-wide: only the CLI sets it.
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
        except (OSError, AttributeError):  # not glibc: keep the allocator's default
            pass


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _status(console, text: str):
    """A spinner while ``text`` runs; none when quiet (its refresh thread would still wake up)."""
    from contextlib import nullcontext

    return nullcontext() if console.quiet else console.status(text, spinner="dots")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def _run_and_write(protocol, base_dir, out: Path, overwrite: bool, msh_version: str = "4.1"):
    from rich.console import Console
    from rich.table import Table

    from .outputs import ResultsFolder, check_space
    from .results import results_size_estimate, write_result_files
    from .simulation import simulate

    console = Console(quiet=_state["quiet"])
    # the output folder is reserved (path rules, lock, a temporary folder) before any work, so
    # an unusable --out fails at once, not after the solve; see stimsim.outputs
    with ResultsFolder(out, overwrite=overwrite) as folder:
        check_space(folder.path, *_head_size_floor(protocol, base_dir), what="the results folder")
        # A TMS run, and every run's writing, has a worker thread running Python (numba loading its
        # kernels, coil placement, file writers) while the main thread runs numpy, which releases
        # and re-takes the GIL at every call; each re-take waited up to the 5 ms default switch
        # interval.  At 0.2 ms a TMS run on the 668k-tet sphere took 2.11 instead of 2.21 s (mean of
        # 10).  Restored afterwards (tests run the CLI in their own process).
        previous = sys.getswitchinterval()
        sys.setswitchinterval(2e-4)
        try:
            with _status(console, "solving ..."):
                result = simulate(protocol, base_dir=base_dir)
            check_space(folder.path, *results_size_estimate(result), what="the results folder")
            with _status(console, "writing results ..."):
                summary = write_result_files(result, folder.path, msh_version=msh_version)
        finally:
            sys.setswitchinterval(previous)
        folder.commit()
    table = Table(title=f"|E| per tissue (V/m) — {protocol.kind}, {protocol.head}")
    for col in ("tissue", "volume cm³", "mean", "p99", "p99.9", "max"):
        table.add_column(col, justify="right")
    for name, s in summary["magnE_V_per_m"].items():
        table.add_row(name, f"{s['volume_mm3'] / 1e3:.1f}", f"{s['mean']:.4f}", f"{s['p99']:.4f}",
                      f"{s['p99.9']:.4f}", f"{s['max']:.4f}")
    console.print(table)
    if "safety" in summary:
        safety = summary["safety"]
        console.print(f"safety check: {safety.get('summary', safety['verdict'])} (details: stimsim check PROTOCOL)")
    sv = summary["solver"]
    console.print(f"solver {sv['method']}: {sv['iterations']} iterations, relative residual "
                  f"{sv['relative_residual']:.1e}; wrote {out}/fields.msh, fields.vtu, summary.json")


def _head_size_floor(protocol, base_dir) -> tuple[int, int]:
    """A lower bound of the results' size, known before the solve: fields.msh holds at least the
    head mesh (a gzipped head at least doubles).  The exact estimate follows after the solve."""
    from .simulation import resolve_head

    path = resolve_head(protocol.head, base_dir)
    size = path.stat().st_size * (2 if path.suffix == ".gz" else 1)
    return 2 * size, size


@app.command()
def demo(
    out: Path = typer.Option(Path("stimsim_demo"), "--out", "-o",
                             help="results folder (replaced if an earlier demo or run wrote it)"),
):
    """Run the demo tDCS protocol on the embedded three-layer sphere and write a results folder."""
    from .protocol import load_protocol

    try:
        path = Path(str(resources.files("stimsim") / "data" / "demo_tdcs.yaml"))
        _run_and_write(load_protocol(path), path.parent, out, overwrite=True)
    except StimsimError as err:
        _fail(err)


@app.command()
def run(
    protocol: str = typer.Argument(..., help="protocol YAML file or library id (`stimsim protocols list`)"),
    out: Path = typer.Option(..., "--out", "-o", help="results folder to create"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace an existing results folder (only one stimsim wrote)"),
    msh_version: str = typer.Option("4.1", "--msh-version", help="Gmsh format of fields.msh: 4.1 or 2.2"),
):
    """Simulate a protocol and write fields.msh, fields.vtu, summary.json and protocol.yaml to OUT.

    Example: stimsim run my_montage.yaml --out results/my_montage
    """
    from .library import resolve_protocol_argument

    try:
        if msh_version not in ("4.1", "2.2"):
            raise StimsimError(f"--msh-version: {msh_version!r} is not one of 4.1, 2.2")
        p, base_dir = resolve_protocol_argument(protocol)
        _run_and_write(p, base_dir, out, overwrite, msh_version)
    except StimsimError as err:
        _fail(err)


@app.command()
def check(
    protocol: str = typer.Argument(..., help="protocol YAML file or library id"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    simulate: bool = typer.Option(False, "--simulate", help="also simulate and check field-based rules"),
    questionnaire: Optional[Path] = typer.Option(None, "--questionnaire",
                                                 help="YAML of TMS screening answers (item: yes/no)"),
    brain_tag: Optional[list[int]] = typer.Option(None, "--brain-tag",
                                                  help="tissue tag counted as brain (repeatable; default 1, 2)"),
):
    """Check a protocol against published safety limits: PASS / WARN / FAIL / NOT CHECKED per rule, with citations.

    Exit code 0 when no rule fails, 1 when any fails, 2 on bad input.

    Example: stimsim check my_montage.yaml --simulate
    """
    from .safety.cli import run_check

    try:
        code = run_check(protocol, as_json=as_json, simulate=simulate, questionnaire_path=questionnaire,
                         brain_tags=brain_tag or None)
    except StimsimError as err:
        _fail(err)
    raise typer.Exit(code=code)


def _read_positions(path: Path) -> dict:
    """name -> (x, y, z) mm from a .tsv/.csv (name,x,y,z or SimNIBS Type,x,y,z,Name) or .elc file."""
    try:
        from .head.eeg import read_positions  # richer readers when the head module is present
    except ImportError:
        read_positions = None
    if read_positions is not None:
        return dict(read_positions(path))
    import csv

    if not path.is_file():
        raise StimsimError(f"positions file not found: {path}")
    out = {}
    delim = "\t" if path.suffix == ".tsv" else ","
    for row in csv.reader(path.read_text().splitlines(), delimiter=delim):
        try:
            out[row[0]] = tuple(float(x) for x in row[1:4])
        except (ValueError, IndexError):
            continue  # header or comment rows
    if not out:
        raise StimsimError(f"{path}: no 'name,x,y,z' rows found")
    return out


def _brain_tags(head: str) -> list[int]:
    """Targets must lie in brain: the embedded sphere's inner ball, else white/grey matter."""
    return [3] if head == "sphere" else [1, 2]


def _vec(text: str, what: str):
    try:
        v = [float(x) for x in text.replace(" ", "").split(",")]
    except ValueError:
        v = []
    if len(v) != 3:
        raise StimsimError(f"{what}: give three numbers 'x,y,z' in mm, got {text!r}")
    return v


@app.command()
def leadfield(
    head: str = typer.Argument(..., help="'sphere' or a head mesh file"),
    positions: Path = typer.Option(..., "--positions", help="electrode positions file (.tsv/.csv/.elc, mm)"),
    reference: str = typer.Option(..., "--reference", help="name of the return electrode"),
    out: Path = typer.Option(..., "--out", "-o", help="leadfield file (.npz)"),
    diameter_mm: Optional[float] = typer.Option(None, "--diameter-mm", help="disc pads (default: point electrodes)"),
):
    """Field of every electrode against a reference, one set-up and many right-hand sides.

    Example: stimsim leadfield sphere --positions cap.tsv --reference REF --out lf.npz
    """
    from .mesh import read_mesh
    from .planning import compute_leadfield, save_leadfield
    from .simulation import resolve_head

    from .outputs import check_output_file

    try:
        check_output_file(out)
        if diameter_mm is not None and not diameter_mm > 0:
            raise StimsimError(f"--diameter-mm: give a pad diameter > 0 mm (got {diameter_mm})")
        mesh, _ = read_mesh(resolve_head(head, Path.cwd()))
        lf = compute_leadfield(mesh, _read_positions(positions), reference,
                               shape="disc" if diameter_mm else "point", diameter_mm=diameter_mm,
                               progress=not _state["quiet"])
        save_leadfield(lf, out)
    except StimsimError as err:
        _fail(err)
    typer.echo(f"wrote {out}: {len(lf.names) - 1} electrodes x {lf.fields.shape[1]} elements "
               f"({lf.fields.nbytes / 2**20:.0f} MiB float32)")


optimize_app = typer.Typer(help="Optimise a tDCS montage or a TMS coil position.", no_args_is_help=True)
app.add_typer(optimize_app, name="optimize")


@optimize_app.command("tdcs")
def optimize_tdcs_cmd(
    leadfield_file: Path = typer.Option(..., "--leadfield", help="leadfield .npz from `stimsim leadfield`"),
    head: str = typer.Option(..., "--head", help="the head the leadfield was computed on"),
    target: str = typer.Option(..., "--target", help="'x,y,z' mm"),
    radius: float = typer.Option(10.0, "--radius", help="target ROI radius, mm"),
    direction: str = typer.Option("normal", "--direction", help="'normal' (into the head) or 'x,y,z'"),
    max_total_mA: float = typer.Option(2.0, "--max-total-mA", help="total injected current limit, mA"),
    max_electrode_mA: float = typer.Option(1.0, "--max-electrode-mA", help="per-electrode current limit, mA"),
    max_electrodes: Optional[int] = typer.Option(None, "--max-electrodes"),
    allow_unsafe: bool = typer.Option(
        False, "--allow-unsafe", help="allow limits above the safety FAIL limits (rules.yaml) and write a montage "
                                      "that FAILs the safety check"),
    out: Path = typer.Option(..., "--out", "-o", help="protocol YAML to write"),
):
    """Maximise the mean field along a direction in a target ROI under current limits (LP, HiGHS).

    Limits above the safety checker's verified FAIL limits (per electrode, total) are an error, and so is a
    montage that FAILs `stimsim check`, unless --allow-unsafe.

    Example: stimsim optimize tdcs --leadfield lf.npz --head sphere --target 30,20,70 --out best.yaml
    """
    from .mesh import read_mesh
    from .planning import load_leadfield, montage_protocol, optimize_tdcs
    from .planning.leadfield import mesh_sha256
    from .planning.optimize import check_current_limits, check_montage
    from .protocol import save_protocol, validate_protocol
    from .simulation import resolve_head

    from .outputs import check_output_file

    try:
        check_output_file(out)
        if not (np.isfinite(radius) and radius > 0):
            raise StimsimError(f"--radius: give a target ROI radius > 0 mm (got {radius})")
        notices = check_current_limits(max_total_mA, max_electrode_mA, allow_unsafe=allow_unsafe)  # before any work
        lf = load_leadfield(leadfield_file)
        mesh, _ = read_mesh(resolve_head(head, Path.cwd()))
        if mesh_sha256(mesh) != lf.mesh_sha256:
            raise StimsimError(f"{leadfield_file} was computed on another mesh than {head!r}")
        d = direction if direction == "normal" else _vec(direction, "--direction")
        sol = optimize_tdcs(lf, mesh, _vec(target, "--target"), radius, d, max_total_mA=max_total_mA,
                            max_electrode_mA=max_electrode_mA, max_electrodes=max_electrodes,
                            tags=_brain_tags(head), allow_unsafe=allow_unsafe)
        montage = validate_protocol(montage_protocol(sol, lf, head))
        report = check_montage(montage, allow_unsafe=allow_unsafe)  # a FAIL is an error unless --allow-unsafe
        save_protocol(montage, out)
    except StimsimError as err:
        _fail(err)
    for notice in notices:
        typer.echo(f"warning: {notice}", err=True)
    typer.echo(f"wrote {out}: mean field {sol.target_field_V_per_m:.4g} V/m in the target; currents (mA) "
               + ", ".join(f"{n} {i:+.3f}" for n, i in sol.currents_mA.items()))
    typer.echo(f"safety check of {out}: {report.summary} (details: stimsim check {out})")


@optimize_app.command("tms")
def optimize_tms_cmd(
    protocol: str = typer.Argument(..., help="TMS protocol file or library id (head, coil, stimulator)"),
    target: str = typer.Option(..., "--target", help="'x,y,z' mm"),
    grid_radius: float = typer.Option(20.0, "--grid-radius", help="search radius around the target, mm"),
    grid_step: float = typer.Option(10.0, "--grid-step", help="grid spacing, mm"),
    angles: int = typer.Option(12, "--angles", help="handle directions over 180 degrees"),
    direction: Optional[str] = typer.Option(
        None, "--direction", help="maximise E along 'normal' (into the head) or 'x,y,z' instead of |E|"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the best placement as a protocol YAML"),
):
    """Search coil centres x handle angles around a target; report the placement with the largest |E|.

    Example: stimsim optimize tms tms.yaml --target 0,20,75 --grid-radius 20 --angles 12
    """
    from .library import resolve_protocol_argument
    from .planning import search_tms
    from .protocol import save_protocol
    from .tms import TMSModel

    from .outputs import check_output_file

    try:
        _check_search_grid(grid_radius, grid_step, angles)
        if out is not None:
            check_output_file(out)
        p, base_dir = resolve_protocol_argument(protocol)
        if p.kind != "tms":
            raise StimsimError(f"{protocol}: kind is {p.kind!r}; optimize tms needs a TMS protocol")
        model = TMSModel(p, base_dir=base_dir)
        res = search_tms(model, _vec(target, "--target"), grid_radius_mm=grid_radius, grid_step_mm=grid_step,
                         angles=angles, progress=not _state["quiet"], tags=_brain_tags(p.head),
                         direction=None if direction is None else
                         direction if direction == "normal" else _vec(direction, "--direction"))
        if out is not None:
            save_protocol(p.model_copy(update={"placement": p.placement.model_copy(
                update={"center": None, "direction": None, "matrix": res.matrix.tolist()})}), out)
    except StimsimError as err:
        _fail(err)
    typer.echo(json.dumps({"objective": res.objective, "objective_V_per_m": res.objective_V_per_m,
                           "roi_mean_magnE_V_per_m": res.roi_mean_magnE_V_per_m,
                           "center_mm": np.round(res.center_mm, 2).tolist(),
                           "direction": np.round(res.direction, 4).tolist(),
                           "matrix": np.round(res.matrix, 6).tolist(), "evaluated": len(res.table)}, indent=1))


#: most placements one grid search may evaluate (~0.17 s each): beyond that, coarsen the grid
MAX_GRID_PLACEMENTS = 200_000


def _check_search_grid(radius_mm: float, step_mm: float, angles: int) -> None:
    import math

    if not (math.isfinite(radius_mm) and radius_mm >= 0):
        raise StimsimError(f"--grid-radius: give a radius >= 0 mm (got {radius_mm})")
    if not (math.isfinite(step_mm) and step_mm > 0):
        raise StimsimError(f"--grid-step: give a spacing > 0 mm (got {step_mm})")
    if angles < 1:
        raise StimsimError(f"--angles: give at least 1 handle direction (got {angles})")
    n = (2 * math.floor(radius_mm / step_mm) + 1) ** 2 * angles
    if n > MAX_GRID_PLACEMENTS:
        raise StimsimError(f"--grid-step {step_mm:g} with --grid-radius {radius_mm:g} and --angles {angles} would "
                           f"evaluate up to {n:.3g} placements (limit {MAX_GRID_PLACEMENTS:,}); use a larger "
                           "--grid-step or fewer --angles")


@app.command()
def batch(
    protocols: list[Path] = typer.Argument(..., help="protocol YAML files (or folders of them)"),
    out: Path = typer.Option(..., "--out", "-o", help="results root: one folder per protocol"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="local parallel processes (joblib)"),
    dask_scheduler: Optional[str] = typer.Option(None, "--dask-scheduler", help="tcp://host:port of a dask cluster"),
    fallback_local: bool = typer.Option(False, "--fallback-local", help="run locally if the scheduler is down"),
):
    """Simulate many protocols in parallel; finished ones are kept, a rerun resumes.

    Example: stimsim batch montages/ --out results/ --jobs 2
    """
    from .library import load_protocol_file
    from .planning.batch import run_batch, task_ids
    from .protocol import protocol_to_dict

    try:
        if jobs < 1:
            raise StimsimError(f"--jobs: give a number of parallel processes >= 1 (got {jobs})")
        files, seen = [], set()
        for p in protocols:
            for f in (sorted(p.glob("*.yaml")) if p.is_dir() else [p]):
                if f.resolve() not in seen:  # the same file twice is one task
                    seen.add(f.resolve())
                    files.append(f)
        if not files:
            raise StimsimError("no protocol files found (folders are searched for *.yaml)")
        ids = task_ids(files)
        tasks = {tid: protocol_to_dict(load_protocol_file(f)) for tid, f in zip(ids, files)}
        # relative head/coil/positions paths are relative to each protocol's own folder, as in `run`
        base_dirs = {tid: f.resolve().parent for tid, f in zip(ids, files)}
        rows = run_batch(tasks, out, base_dir=base_dirs, jobs=jobs, scheduler=dask_scheduler,
                         fallback_to_local=fallback_local, progress=not _state["quiet"])
    except StimsimError as err:
        _fail(err)
    failed = 0
    for r, f in zip(rows, files):
        if "error" in r:
            failed += 1
            typer.echo(f"error: {f}: {r['error']}", err=True)
        else:
            typer.echo(f"{r['id']}: peak |E| {r['peak_magnE_V_per_m']:.4g} V/m, safety {r['safety']}"
                       + (" (done earlier)" if r.get("resumed") else ""))
    if failed:
        raise typer.Exit(code=2)


protocols_app = typer.Typer(help="The cited protocol library (stroke, TBI, MS, PD, MCI, depression).",
                            no_args_is_help=True)
app.add_typer(protocols_app, name="protocols")


@protocols_app.command("list")
def protocols_list_cmd(
    condition: Optional[str] = typer.Option(None, "--condition", help="filter, e.g. stroke"),
    modality: Optional[str] = typer.Option(None, "--modality", help="tdcs, tacs or tms"),
):
    """Show the library: id, condition, target, modality, dose, evidence level, source."""
    from .library_cli import protocols_list

    raise typer.Exit(protocols_list(condition, modality))


@protocols_app.command("show")
def protocols_show_cmd(protocol_id: str = typer.Argument(..., help="library id")):
    """Print a library protocol with its rationale and citations."""
    from .library_cli import protocols_show

    raise typer.Exit(protocols_show(protocol_id))


@protocols_app.command("copy")
def protocols_copy_cmd(
    protocol_id: str = typer.Argument(..., help="library id"),
    dest: Path = typer.Argument(..., help="where to write the editable copy"),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Write an editable copy of a library protocol (runs with `stimsim run DEST`)."""
    from .library_cli import protocols_copy

    raise typer.Exit(protocols_copy(protocol_id, dest, overwrite))


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
    from .head.cli import mesh_command

    raise typer.Exit(mesh_command(labels, labels_map, out, element_size_mm, lesion, lesion_tag=lesion_tag,
                                  progress=not _state["quiet"], method=method))


@app.command()
def view(
    results: Path = typer.Argument(..., help="results folder of `stimsim run` (or its fields.vtu/.msh)"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write"),
    field: str = typer.Option("magnE", "--field", help="magnE, E, J, magnJ, E_recovered, v, dAdt"),
    view_name: Optional[str] = typer.Option(None, "--view", help="top, bottom, left, right, front, back, iso"),
    cut: Optional[str] = typer.Option(None, "--cut", help="x | y | z | ox,oy,oz,nx,ny,nz (cut plane)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="hide values below this"),
    surface: str = typer.Option("brain", "--surface", help="brain, gm, wm, scalp or tags"),
    roi: Optional[str] = typer.Option(None, "--roi", help="'x,y,z,r' mm: mark a region of interest"),
):
    """Render the field off-screen to a PNG (brain surface, cut planes, electrodes or coil, colour bar).

    Example: stimsim view stimsim_demo --out fig.png --view left --cut y
    """
    from rich.console import Console

    from .outputs import check_output_file
    from .viz.cli import view_command

    try:
        check_output_file(out)
        with _status(Console(stderr=True, quiet=_state["quiet"]), "rendering ..."):
            code = view_command(results, out, field, view_name, cut, threshold, surface=surface, roi=roi)
    except StimsimError as err:
        _fail(err)
    raise typer.Exit(code=code)


@app.command()
def report(
    protocol: str = typer.Argument(..., help="protocol YAML file or library id"),
    out: Path = typer.Option(..., "--out", "-o", help="HTML file to write (self-contained)"),
    results: Optional[Path] = typer.Option(None, "--results", help="reuse (or create) this results folder"),
    roi: Optional[str] = typer.Option(None, "--roi", help="'x,y,z,r' mm: ROI for the dose table"),
):
    """One self-contained HTML page: protocol, pictures, dose/ROI table, safety verdicts, provenance.

    Example: stimsim report montage.yaml --out report.html --roi 30,20,70,10
    """
    from rich.console import Console

    from .library import get_protocol, library_ids
    from .viz.cli import report_command

    from .outputs import check_output_file, check_output_target

    try:
        check_output_file(out)
        if results is not None:
            check_output_target(results, option="--results")
        source = protocol
        if not Path(protocol).is_file() and protocol in library_ids():
            source = get_protocol(protocol).path  # a library id: report its file
        with _status(Console(stderr=True, quiet=_state["quiet"]), "simulating and rendering ..."):
            code = report_command(source, out, results, roi=roi)
    except StimsimError as err:
        _fail(err)
    raise typer.Exit(code=code)


@app.command()
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o", help="write to a file instead of stdout")):
    """Print the JSON Schema of protocol files (for editors and validators)."""
    from .outputs import check_output_file
    from .protocol import protocol_json_schema
    from .protocol.io import atomic_write_text

    # the comment marks the file as stimsim's, so a later `schema --out` may replace it
    text = json.dumps({"$comment": f"stimsim {__version__} protocol schema", **protocol_json_schema()}, indent=2)
    if out is None:
        typer.echo(text)
    else:
        try:
            atomic_write_text(check_output_file(out), text)
        except StimsimError as err:
            _fail(err)


@app.command()
def version():
    """Print the stimsim version."""
    typer.echo(__version__)


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like an exception, so every ``finally``/``with`` clean-up runs
    (a results folder's temporary files are removed); not a KeyboardInterrupt, which click
    would turn into "Aborted!"."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_on_signal(signum, frame):
    import signal

    # the clean-up that follows must not be cut short by a second Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def main():  # entry point
    """Run the CLI; every failure ends as one ``error:`` line (exit 2 for bad input or a file
    problem, 1 for an internal error, 128 + signal number when interrupted)."""
    import signal

    from .outputs import os_error_message

    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    code = 0
    try:
        code = app(standalone_mode=False)  # click returns the exit code of typer.Exit
        code = code if isinstance(code, int) else 0
    except Interrupted as ex:
        code = 128 + ex.signum
        typer.echo(f"error: interrupted by {signal.Signals(ex.signum).name}; nothing half-written was left",
                   err=True)
    except (KeyboardInterrupt, EOFError):
        code = 130
        typer.echo("error: interrupted", err=True)
    except StimsimError as err:
        code = 2
        typer.echo(f"error: {_one_line(err)}", err=True)
    except UnicodeDecodeError as err:
        code = 2
        typer.echo(f"error: a file given is not UTF-8 text ({_one_line(err.reason)} at byte {err.start}); "
                   "give a text file (YAML, TSV, CSV)", err=True)
    except OSError as err:
        code = 2
        typer.echo(f"error: {_one_line(os_error_message(err))}", err=True)
    except MemoryError:
        code = 2
        typer.echo("error: out of memory; use a coarser mesh or a machine with more memory", err=True)
    except Exception as err:  # a bug: one line, and the traceback when asked for
        if hasattr(err, "show") and isinstance(getattr(err, "exit_code", None), int):
            err.show()  # a usage error (typer's click): its own message and exit code 2
            sys.exit(err.exit_code)
        if logger.level and logger.level <= logging.INFO:
            raise
        code = 1
        typer.echo(f"error: internal error ({type(err).__name__}: {_one_line(err, 200)}); please report it "
                   "(run with `stimsim -v` to see the traceback)", err=True)
    finally:
        # At exit the interpreter's last garbage collections walk every object numba, scipy
        # and pydantic created: ~0.2 s after a TMS run.  Frozen objects are skipped; the
        # objects are freed with the process all the same.
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
