"""``stimsim protocols list | show | copy``, ``stimsim schema`` and ``stimsim version``.

The ``protocols_*`` functions print with rich and return an exit code (0 ok, 2 bad input), so the
typer commands only wire arguments and ``raise typer.Exit(code)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from .. import __version__
from ..errors import StimsimError
from .common import app, fail


protocols_app = typer.Typer(help="The cited protocol library (stroke, TBI, MS, PD, MCI, depression).",
                            no_args_is_help=True)
app.add_typer(protocols_app, name="protocols")


@protocols_app.command("list")
def protocols_list_cmd(
    condition: Optional[str] = typer.Option(None, "--condition", help="filter, e.g. stroke"),
    modality: Optional[str] = typer.Option(None, "--modality", help="tdcs, tacs or tms"),
):
    """Show the library: id, condition, target, modality, dose, evidence level, source."""
    raise typer.Exit(protocols_list(condition, modality))


@protocols_app.command("show")
def protocols_show_cmd(protocol_id: str = typer.Argument(..., help="library id")):
    """Print a library protocol with its rationale and citations."""
    raise typer.Exit(protocols_show(protocol_id))


@protocols_app.command("copy")
def protocols_copy_cmd(
    protocol_id: str = typer.Argument(..., help="library id"),
    dest: Path = typer.Argument(..., help="where to write the editable copy"),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Write an editable copy of a library protocol (runs with `stimsim run DEST`)."""
    raise typer.Exit(protocols_copy(protocol_id, dest, overwrite))


@app.command()
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o", help="write to a file instead of stdout")):
    """Print the JSON Schema of protocol files (for editors and validators)."""
    from ..outputs import check_output_file
    from ..protocol import protocol_json_schema
    from ..protocol.io import atomic_write_text

    # the comment marks the file as stimsim's, so a later `schema --out` may replace it
    text = json.dumps({"$comment": f"stimsim {__version__} protocol schema", **protocol_json_schema()}, indent=2)
    if out is None:
        typer.echo(text)
    else:
        try:
            atomic_write_text(check_output_file(out), text)
        except StimsimError as err:
            fail(err)


@app.command()
def version():
    """Print the stimsim version."""
    typer.echo(__version__)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _error(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def protocols_list(condition: str | None = None, modality: str | None = None, console=None) -> int:
    """Print the library as a table (filtered by condition text and/or modality)."""
    from ..protocol.library import library_table, list_protocols

    console = console or _console()
    try:
        entries = list_protocols(condition=condition, modality=modality)
    except StimsimError as err:
        return _error(err)
    if not entries:
        what = ", ".join(f"{k} {v!r}" for k, v in (("condition", condition), ("modality", modality)) if v)
        console.print(f"no library protocol matches {what}; `stimsim protocols list` shows all")
        return 0
    console.print(library_table(entries))
    console.print("Evidence levels are those stated by the cited guideline; 'no recommendation' means the "
                  "guideline made none. Decision support only, not a clinical prescription.")
    return 0


def protocols_show(protocol_id: str, console=None) -> int:
    """Print one protocol: rationale, target, dose, evidence, references, parameter sources, YAML."""
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.table import Table

    from ..protocol.library import get_protocol
    from ..protocol import protocol_to_dict

    console = console or _console()
    try:
        e = get_protocol(protocol_id)
    except StimsimError as err:
        return _error(err)
    m = e.metadata
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    info.add_row("condition", e.condition + (f" — {m['indication']}" if m.get("indication") else ""))
    info.add_row("target", e.target_text)
    info.add_row("modality", e.modality)
    info.add_row("dose", e.dose)
    info.add_row("rationale", str(m["rationale"]).strip())
    info.add_row("evidence level", e.evidence_level)
    if m.get("evidence_note"):
        info.add_row("", str(m["evidence_note"]).strip())
    console.print(Panel(info, title=f"{e.id}: {m['title']}", expand=False))

    refs = Table(title="References", show_lines=True)
    for col in ("#", "reference", "DOI", "where read"):
        refs.add_column(col, overflow="fold")
    for i, r in enumerate(m["references"], 1):
        text = f"{r['authors']} ({r['year']}). {r['title']}." + (f" {r['journal']}." if r.get("journal") else "")
        refs.add_row(str(i), text, r.get("doi") or "—", str(r.get("page_or_table") or "—"))
    console.print(refs)

    pf = m["parameters_from"]
    if isinstance(pf, dict):
        src = Table(title="Where each parameter comes from", show_lines=False)
        src.add_column("parameter", style="bold")
        src.add_column("source", overflow="fold")
        for k, v in pf.items():
            src.add_row(str(k), str(v))
        console.print(src)
    else:
        console.print(f"parameters from: {pf}")
    for key, label in (("assumptions", "Assumptions (stimsim's, not the sources')"), ("notes", "Notes")):
        items = m.get(key)
        if items:
            items = items if isinstance(items, list) else [items]
            console.print(f"[bold]{label}[/bold]")
            for it in items:
                console.print(f"  • {str(it).strip()}")
    text = yaml.safe_dump(protocol_to_dict(e.protocol), sort_keys=False, default_flow_style=None)
    console.print(Panel(Syntax(text, "yaml", theme="ansi_dark", background_color="default"),
                        title="protocol (validated, defaults filled in)", expand=False))
    console.print(f"file: {e.path}\ncopy: stimsim protocols copy {e.id} my_protocol.yaml   run: stimsim run {e.id}")
    return 0


def protocols_copy(protocol_id: str, dest: str | Path, overwrite: bool = False, console=None) -> int:
    """Write an editable copy of a library protocol to ``dest`` (a .yaml file or a folder)."""
    from ..protocol.library import copy_protocol

    console = console or _console()
    try:
        path = copy_protocol(protocol_id, dest, overwrite=overwrite)
    except (StimsimError, OSError) as err:
        return _error(err)
    console.print(f"wrote {path} (edit the 'protocol' section; run it with `stimsim run {path}`)")
    return 0


__all__ = ["protocols_list", "protocols_show", "protocols_copy"]
