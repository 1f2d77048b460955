"""Command-line front end of the safety check (wired into ``stimsim check`` by stimsim.cli).

``run_check(path, as_json=..., simulate=...)`` prints the report (table or JSON, see
docs/safety_verdicts.md) and returns the exit code: 0 when no rule FAILs, 1 when any does.  Bad input
raises :class:`~stimsim.errors.StimsimError` (the caller maps it to exit code 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from ..errors import clip
from .check import SafetyInputError, check


_QUESTIONNAIRE_FIX = ("--questionnaire expects a UTF-8 YAML or JSON mapping of screening items to yes/no, "
                      "e.g. 'pregnancy: no' (the tms.screening row of `stimsim check` lists the items)")


def load_questionnaire(path: str | Path) -> dict:
    """Screening answers from a YAML/JSON mapping ``item: yes|no`` (validated later by ``check``).

    Every way the file can be unusable (missing, a directory, unreadable, binary or not UTF-8, malformed
    YAML, not a mapping) raises :class:`SafetyInputError` naming the path and the fix.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise SafetyInputError(f"questionnaire {path} is a directory, not a file; {_QUESTIONNAIRE_FIX}")
        if not path.is_file():
            raise SafetyInputError(f"questionnaire file not found: {path}; {_QUESTIONNAIRE_FIX}")
        raw = path.read_bytes()
    except (OSError, ValueError) as err:  # permission denied, a name the OS refuses, ...
        raise SafetyInputError(f"questionnaire {path}: cannot read it ({getattr(err, 'strerror', None) or err}); "
                               f"check the path and its permissions; {_QUESTIONNAIRE_FIX}") from None
    if b"\0" in raw:
        raise SafetyInputError(f"questionnaire {path}: a binary file (it contains NUL bytes), not text; "
                               f"{_QUESTIONNAIRE_FIX}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SafetyInputError(f"questionnaire {path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                               f"{err.start}); is it a binary file (an image, a PDF)? {_QUESTIONNAIRE_FIX}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SafetyInputError(f"{path}: malformed YAML: {clip(str(err))}; {_QUESTIONNAIRE_FIX}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SafetyInputError(f"{path}: expected a mapping of item -> yes/no, got {type(data).__name__}; "
                               f"{_QUESTIONNAIRE_FIX}")
    return data


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
    from stimsim.library import resolve_protocol_argument

    protocol, base_dir = resolve_protocol_argument(protocol_path)
    answers = load_questionnaire(questionnaire_path) if questionnaire_path is not None else None
    fields = None
    if simulate:
        from stimsim.simulation import simulate as _simulate

        fields = _simulate(protocol, base_dir=base_dir)
    if brain_tags is None:
        from stimsim.simulation import default_brain_tags

        brain_tags = default_brain_tags(protocol)
    report = check(protocol, fields, brain_tags=brain_tags, questionnaire=answers)
    stream = out if out is not None else sys.stdout
    if as_json:
        stream.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        from rich.console import Console

        Console(file=stream, width=max(120, Console(file=stream).width)).print(report.to_table())
    return 1 if report.verdict == "FAIL" else 0  # NOT_CHECKED and WARN rows never change the exit code
