"""``stimsim demo``, ``stimsim run`` and ``stimsim batch``: simulate protocols, write results folders."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from ..errors import StimsimError, check_option
from .common import app, fail, state, status
from .process import fast_gil_switching


def run_and_write(protocol, base_dir, out: Path, overwrite: bool, msh_version: str = "4.1"):
    if protocol.kind in ("tdcs", "tacs"):  # (TMS loads its own kernels beside its coil placement)
        from .. import kernel_warm_up

        kernel_warm_up.start()  # numba loads while the modules below import and the mesh is read
    from rich.console import Console
    from rich.table import Table

    from ..outputs import ResultsFolder, check_space
    from ..results import results_size_estimate, write_result_files
    from ..safety import check_result
    from ..simulation import simulate

    console = Console(quiet=state["quiet"])
    # the output folder is reserved (path rules, lock, a temporary folder) before any work, so
    # an unusable --out fails at once, not after the solve; see stimsim.outputs
    with ResultsFolder(out, overwrite=overwrite) as folder:
        check_space(folder.path, *head_size_floor(protocol, base_dir), what="the results folder")
        with fast_gil_switching():
            with status(console, "solving ..."):
                result = simulate(protocol, base_dir=base_dir)
            check_space(folder.path, *results_size_estimate(result), what="the results folder")
            with status(console, "writing results ..."):
                summary = write_result_files(result, folder.path, msh_version=msh_version,
                                             safety=check_result(result).as_dict())
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


def head_size_floor(protocol, base_dir) -> tuple[int, int]:
    """A lower bound of the results' size, known before the solve: fields.msh holds at least the
    head mesh (a gzipped head at least doubles).  The exact estimate follows after the solve."""
    from ..simulation import resolve_head

    path = resolve_head(protocol.head, base_dir)
    size = path.stat().st_size * (2 if path.suffix == ".gz" else 1)
    return 2 * size, size


@app.command()
def demo(
    out: Path = typer.Option(Path("stimsim_demo"), "--out", "-o",
                             help="results folder (replaced if an earlier demo or run wrote it)"),
):
    """Run the demo tDCS protocol on the embedded three-layer sphere and write a results folder."""
    from ..protocol import load_protocol

    try:
        path = Path(str(resources.files("stimsim") / "data" / "demo_tdcs.yaml"))
        run_and_write(load_protocol(path), path.parent, out, overwrite=True)
    except StimsimError as err:
        fail(err)


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
    from ..protocol.library import resolve_protocol_argument

    try:
        if msh_version not in ("4.1", "2.2"):
            check_option("--msh-version", msh_version, ("4.1", "2.2"), error=StimsimError)
        p, base_dir = resolve_protocol_argument(protocol)
        run_and_write(p, base_dir, out, overwrite, msh_version)
    except StimsimError as err:
        fail(err)


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
    from ..protocol.library import load_protocol_file
    from ..planning.batch import run_batch, task_ids
    from ..protocol import protocol_to_dict

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
                         fallback_to_local=fallback_local, progress=not state["quiet"])
    except StimsimError as err:
        fail(err)
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
