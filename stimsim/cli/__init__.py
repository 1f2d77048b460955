"""Command line: ``stimsim demo | run | batch | check | leadfield | optimize | protocols | schema |
mesh | view | report | version``, one module per command group.

Every deliberate error (bad protocol, unreadable mesh, solver failure, an output that would
replace someone's files) prints one line ``error: ...`` and exits with code 2; no partial output
is left behind.  ``main`` maps file-system errors, interruptions and bugs to one line too.
"""

from __future__ import annotations

import logging
import sys

import typer

from .._hugepages import hugepage_advice
from .._logging import logger
from ..errors import StimsimError
# each module registers its commands, in this order in `stimsim --help`
from . import simulate, safety, planning, head, viz, protocols  # noqa: F401, I001
from .common import app, one_line
from .process import Interrupted, freeze_gc, install_signal_handlers


def main():  # entry point
    """Run the CLI; every failure ends as one ``error:`` line (exit 2 for bad input or a file
    problem, 1 for an internal error, 128 + signal number when interrupted)."""
    import signal

    from ..outputs import os_error_message

    install_signal_handlers()
    hugepage_advice(False)  # the whole process is stimsim's: its large grids are faster without (_hugepages)
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
        typer.echo(f"error: {one_line(err)}", err=True)
    except UnicodeDecodeError as err:
        code = 2
        typer.echo(f"error: a file given is not UTF-8 text ({one_line(err.reason)} at byte {err.start}); "
                   "give a text file (YAML, TSV, CSV)", err=True)
    except OSError as err:
        code = 2
        typer.echo(f"error: {one_line(os_error_message(err))}", err=True)
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
        typer.echo(f"error: internal error ({type(err).__name__}: {one_line(err, 200)}); please report it "
                   "(run with `stimsim -v` to see the traceback)", err=True)
    finally:
        freeze_gc()
    sys.exit(code)


__all__ = ["app", "main"]
