"""What every command shares: the app and its global options, one-line errors, argument parsing."""

from __future__ import annotations

import logging

import typer

from .._logging import logger
from ..errors import StimsimError
from .process import single_malloc_arena

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Plan and simulate noninvasive brain stimulation (tDCS/tACS, TMS).\n\n"
    "Examples:\n\n  stimsim demo\n\n  stimsim run protocol.yaml --out results/\n\n"
    "  stimsim check protocol.yaml --simulate\n\n  stimsim schema > protocol.schema.json",
)

state = {"quiet": False}


#: commands whose work runs on threads that allocate large grids: the default malloc arenas
#: (:func:`~.process.single_malloc_arena`)
MESHING_COMMANDS = ("mesh", "head", "segment")


@app.callback()
def global_options(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each step with timings"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing but errors"),
):
    from rich.logging import RichHandler

    state["quiet"] = quiet
    if ctx.invoked_subcommand not in MESHING_COMMANDS:
        single_malloc_arena()
    handler = RichHandler(show_path=False, console=stderr_console())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def status(console, text: str):
    """A spinner while ``text`` runs; none when quiet (its refresh thread would still wake up)."""
    from contextlib import nullcontext

    return nullcontext() if console.quiet else console.status(text, spinner="dots")


def fail(err: Exception) -> None:
    typer.echo(f"error: {one_line(err)}", err=True)
    raise typer.Exit(code=2)


def brain_tags_of(head: str) -> list[int]:
    """Targets must lie in brain (:func:`stimsim.tissues.default_brain_tags`)."""
    from ..tissues import default_brain_tags

    return default_brain_tags(head)


def numbers(text: str) -> list[float]:
    """``"1, 2.5,3"`` -> ``[1.0, 2.5, 3.0]``; ``[]`` when any part is not a number."""
    try:
        return [float(x) for x in str(text).replace(" ", "").split(",")]
    except ValueError:
        return []


def vec(text: str, what: str):
    v = numbers(text)
    if len(v) != 3:
        raise StimsimError(f"{what}: give three numbers 'x,y,z' in mm, got {text!r}")
    return v


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."
