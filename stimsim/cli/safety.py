"""``stimsim check``: a protocol (and optionally its field) against published safety limits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import StimsimError
from .common import app, fail


@app.command("check")
def check_cmd(
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
    try:
        code = run_check(protocol, as_json=as_json, simulate=simulate, questionnaire_path=questionnaire,
                         brain_tags=brain_tag or None)
    except StimsimError as err:
        fail(err)
    raise typer.Exit(code=code)


def run_check(protocol_path: Path, *, as_json: bool, simulate: bool, questionnaire_path: Path | None = None,
              brain_tags: list[int] | None = None, out=None) -> int:
    """Load, optionally simulate, check and print; return 0 (no FAIL) or 1 (any FAIL).

    Parameters
    ----------
    protocol_path : protocol YAML
    as_json : print the report as JSON instead of a table
    simulate : also run the simulation and check the field-based rules
    questionnaire_path : optional YAML mapping of TMS screening answers (item: yes/no)
    brain_tags : tissue tags counted as brain by the field-based rules (default 1, 2)
    out : text stream to print to (default stdout)
    """
    from ..protocol.library import resolve_protocol_argument
    from ..safety.check import check
    from ..safety.questionnaire import load_questionnaire

    protocol, base_dir = resolve_protocol_argument(protocol_path)
    answers = load_questionnaire(questionnaire_path) if questionnaire_path is not None else None
    fields = None
    if simulate:
        from ..simulation import simulate as _simulate

        fields = _simulate(protocol, base_dir=base_dir)
    if brain_tags is None:
        from ..simulation import default_brain_tags

        brain_tags = default_brain_tags(protocol)
    report = check(protocol, fields, brain_tags=brain_tags, questionnaire=answers)
    stream = out if out is not None else sys.stdout
    if as_json:
        stream.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        from rich.console import Console

        Console(file=stream, width=max(120, Console(file=stream).width)).print(report.to_table())
    return 1 if report.verdict == "FAIL" else 0  # NOT_CHECKED and WARN rows never change the exit code
