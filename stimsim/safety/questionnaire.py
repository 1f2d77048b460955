"""TMS screening answers from a file (``stimsim check --questionnaire FILE``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import clip
from .check import SafetyInputError

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


__all__ = ["load_questionnaire"]
