"""Load, save and describe protocols (YAML <-> pydantic models)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ..errors import ProtocolError
from .models import Protocol, TESProtocol, TMSProtocol

_ADAPTER = TypeAdapter(Protocol)
_KINDS = ("tdcs", "tacs", "tms")


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: 'electrodes[1].current_mA: Input should be a valid number (got 'x')'."""
    lines = []
    for e in err.errors():
        loc = ""
        parts = list(e["loc"])
        if parts and parts[0] in _KINDS:  # the discriminated-union branch, not a field
            parts = parts[1:]
        for part in parts:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif "[" not in str(part) and not str(part)[:1].isupper():  # skip model/validator names
                loc += ("." if loc else "") + str(part)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see `stimsim schema`)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        suffix = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{suffix}" if loc else f"{source}: {msg}{suffix}")
    return "; ".join(lines)


def validate_protocol(data: Any, source: str = "protocol") -> TESProtocol | TMSProtocol:
    """Validate a mapping (e.g. parsed YAML) into a protocol model."""
    if isinstance(data, (TESProtocol, TMSProtocol)):
        return data
    if not isinstance(data, dict):
        raise ProtocolError(f"{source}: a protocol must be a mapping with a 'kind' key, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ProtocolError(f"{source}: kind: must be one of {list(_KINDS)}, got {kind!r}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ProtocolError(_format_validation_error(err, source)) from None


def read_yaml(path: Path):
    """Parse a YAML file; malformed YAML is a ProtocolError naming the line and column."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ProtocolError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ProtocolError(f"{path}: not a text (UTF-8) YAML file") from None


def load_protocol(path: str | os.PathLike) -> TESProtocol | TMSProtocol:
    """Read and validate a protocol YAML file.

    Raises
    ------
    ProtocolError
        For a missing file, malformed YAML (with its line), unknown keys or bad values.
    """
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"protocol file not found: {path}")
    data = read_yaml(path)
    if isinstance(data, dict) and set(data) == {"metadata", "protocol"}:
        # a library document (or a copy of one): the runnable part is its 'protocol' section
        # (stimsim.library validates the metadata)
        return validate_protocol(data["protocol"], source=f"{path}: protocol")
    return validate_protocol(data, source=str(path))


def protocol_to_dict(protocol) -> dict:
    """Plain JSON/YAML-ready dict (defaults included, None dropped)."""
    return protocol.model_dump(mode="json", exclude_none=True)


def save_protocol(protocol, path: str | os.PathLike) -> Path:
    """Write a protocol as YAML atomically (temp file, then rename)."""
    path = Path(path)
    text = yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
    return path


def protocol_json_schema() -> dict:
    """JSON Schema of the protocol file format."""
    return _ADAPTER.json_schema()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_schema(path: str | os.PathLike) -> None:
    atomic_write_text(Path(path), json.dumps(protocol_json_schema(), indent=2))
