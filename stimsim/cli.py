"""Command line: ``stimsim demo | run | check | schema | version``.

Every deliberate error (bad protocol, unreadable mesh, solver failure) prints one line
``error: ...`` and exits with code 2; no partial output folder is left behind.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

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
    handler = RichHandler(show_path=False, console=_stderr_console())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def _run_and_write(protocol, base_dir, out: Path, overwrite: bool, msh_version: str = "4.1"):
    from rich.console import Console
    from rich.table import Table

    from .results import write_results
    from .simulation import simulate

    console = Console(quiet=_state["quiet"])
    if out.exists() and not overwrite:
        raise StimsimError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    with console.status("solving ...", spinner="dots"):
        result = simulate(protocol, base_dir=base_dir)
    with console.status("writing results ...", spinner="dots"):
        write_results(result, out, overwrite=overwrite, msh_version=msh_version)
    summary = json.loads((out / "summary.json").read_text())
    table = Table(title=f"|E| per tissue (V/m) — {protocol.kind}, {protocol.head}")
    for col in ("tissue", "volume cm³", "mean", "p99", "p99.9", "max"):
        table.add_column(col, justify="right")
    for name, s in summary["magnE_V_per_m"].items():
        table.add_row(name, f"{s['volume_mm3'] / 1e3:.1f}", f"{s['mean']:.4f}", f"{s['p99']:.4f}",
                      f"{s['p99.9']:.4f}", f"{s['max']:.4f}")
    console.print(table)
    if "safety" in summary:
        console.print(f"safety check: {summary['safety']['verdict']} (details: stimsim check PROTOCOL)")
    sv = summary["solver"]
    console.print(f"solver {sv['method']}: {sv['iterations']} iterations, relative residual "
                  f"{sv['relative_residual']:.1e}; wrote {out}/fields.msh, fields.vtu, summary.json")



@app.command()
def demo(
    out: Path = typer.Option(Path("stimsim_demo"), "--out", "-o", help="results folder (replaced if present)"),
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
    protocol: Path = typer.Argument(..., help="protocol YAML file"),
    out: Path = typer.Option(..., "--out", "-o", help="results folder to create"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing results folder"),
    msh_version: str = typer.Option("4.1", "--msh-version", help="Gmsh format of fields.msh: 4.1 or 2.2"),
):
    """Simulate a protocol and write fields.msh, fields.vtu, summary.json and protocol.yaml to OUT.

    Example: stimsim run my_montage.yaml --out results/my_montage
    """
    from .protocol import load_protocol

    try:
        if msh_version not in ("4.1", "2.2"):
            raise StimsimError(f"--msh-version: {msh_version!r} is not one of 4.1, 2.2")
        p = load_protocol(protocol)
        _run_and_write(p, protocol.resolve().parent, out, overwrite, msh_version)
    except StimsimError as err:
        _fail(err)


@app.command()
def check(
    protocol: Path = typer.Argument(..., help="protocol YAML file"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    simulate: bool = typer.Option(False, "--simulate", help="also simulate and check field-based rules"),
    questionnaire: Optional[Path] = typer.Option(None, "--questionnaire",
                                                 help="YAML of TMS screening answers (item: yes/no)"),
    brain_tag: Optional[list[int]] = typer.Option(None, "--brain-tag",
                                                  help="tissue tag counted as brain (repeatable; default 1, 2)"),
):
    """Check a protocol against published safety limits: PASS / WARN / FAIL per rule, with citations.

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


@app.command()
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o", help="write to a file instead of stdout")):
    """Print the JSON Schema of protocol files (for editors and validators)."""
    from .protocol import protocol_json_schema
    from .protocol.io import write_schema

    if out is None:
        typer.echo(json.dumps(protocol_json_schema(), indent=2))
    else:
        write_schema(out)


@app.command()
def version():
    """Print the stimsim version."""
    typer.echo(__version__)


def main():  # entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
