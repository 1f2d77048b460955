"""Load, save and describe protocols (YAML <-> pydantic models)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ..errors import MAX_VALUE_CHARS, ProtocolError, StimsimError, check_option, clip, shown
from .models import Protocol, TESProtocol, TIProtocol, TMSProtocol

_ADAPTER = TypeAdapter(Protocol)
_KINDS = ("tdcs", "tacs", "ti", "tms")

# --- limits on what a protocol file may be ---------------------------------------------------
# A protocol is a few hundred bytes to a few kB of YAML.  These limits refuse hostile or
# mistaken input quickly, before it costs time or memory (a 457-byte "billion laughs" file of
# nested aliases expands to ~10^9 nodes, and its validation error used to be 522 MB long).

#: largest protocol file read, bytes (hundreds of times any real protocol)
MAX_PROTOCOL_BYTES = 2**20
#: most aliases (``*name``) in one protocol; real ones use none or a few (shared pad settings)
MAX_ALIASES = 100
#: largest size of the document with every alias expanded: one per node plus the characters of
#: its scalars; a file without aliases under MAX_PROTOCOL_BYTES stays well below it
MAX_EXPANDED = 4 * 2**20
#: deepest nesting of mappings and lists (a protocol needs 4)
MAX_DEPTH = 64
#: longest integer literal read (the int parser is quadratic in its digits)
MAX_INT_CHARS = 64
#: most problems listed in one validation message (then "... and N more")
MAX_PROBLEMS = 5

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A YAML document refused by :class:`_ProtocolLoader`: a problem and where it is."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _ProtocolLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, alias bombs, deep nesting and huge integers.

    The pure-Python loader (not libyaml's) so that composing can be watched node by node;
    protocols are small, so its speed does not matter.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name); a protocol needs at most a few",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep; a protocol needs 4",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return self.construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # merged keys (<<: *base) may be overridden: that is what merging is for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: the base class says so
                if first is not key_node.start_mark:
                    raise _Refused(f"duplicate key {shown(key)} (first at line {first.line + 1}); YAML keeps only "
                                   "the last one, so remove one of them", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        if len(str(node.value)) > MAX_INT_CHARS:
            raise _Refused(f"an integer of {len(node.value)} characters; no protocol value needs more than "
                           f"{MAX_INT_CHARS}", node.start_mark)
        return super().construct_yaml_int(node)


_ProtocolLoader.add_constructor("tag:yaml.org,2002:int", _ProtocolLoader.construct_yaml_int)


def _check_expanded_size(root) -> None:
    """Refuse a document whose alias-expanded size exceeds MAX_EXPANDED, or that refers to itself.

    Each distinct node is visited once (sizes are memoised), so this costs time in proportion to
    the file, not to its expansion."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # entered, not finished: the current path
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            if isinstance(node, yaml.ScalarNode):
                total = 1 + len(node.value)
            elif isinstance(node, yaml.MappingNode):
                total = 1 + sum(size[id(k)] + size[id(v)] for k, v in node.value)
            else:
                total = 1 + sum(size[id(c)] for c in node.value)
            if total > MAX_EXPANDED:
                raise _Refused(f"its aliases (*name) expand it to more than {MAX_EXPANDED // 2**20} MiB; a "
                               "protocol is a few kB (is this a 'billion laughs' file?)", node.start_mark)
            size[key] = total
            continue
        if key in size:
            continue
        if key in open_:
            raise _Refused("an alias (*name) refers to a node that contains it; a protocol cannot be "
                           "recursive", node.start_mark)
        open_.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        stack.extend((c, False) for c in children if id(c) not in size)


def _location(parts) -> str:
    loc = ""
    for part in parts:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif "[" not in str(part) and not str(part)[:1].isupper() and part not in _BRANCHES:
            loc += ("." if loc else "") + str(part)  # model, validator and union-branch names skipped
    return loc


# names pydantic gives union branches in error locations (position: [x, y, z] | "C3")
_BRANCHES = {"str", "int", "float", "bool", "none"}


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One item per problem: 'electrodes[1].current_mA: Input should be a valid number (got 'x')'.

    At most MAX_PROBLEMS problems are listed and every echoed value is capped
    (:func:`stimsim.errors.shown`), so a hostile file cannot produce a huge message."""
    errors = err.errors()
    items = []
    for e in errors:
        parts = list(e["loc"])
        if parts and parts[0] in _KINDS:  # the discriminated-union branch, not a field
            parts = parts[1:]
        items.append((e, _location(parts)))
    locs = [loc for _, loc in items]
    lines = []
    for e, loc in items:
        if e["type"] == "string_type" and sum(other.startswith(loc) for other in locs) > 1:
            continue  # the 'or a name' branch of a [x, y, z] | name field: the other branch says more
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see `stimsim schema`)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        suffix = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {shown(got)})"
        if loc and msg.startswith((f"{loc}:", f"{loc}.", f"{loc} ", f"{loc}[")):
            loc = ""  # a model's own check already names it ("stimulator: give exactly one of ...")
        lines.append(f"{source}: {loc}: {msg}{suffix}" if loc else f"{source}: {msg}{suffix}")
    if len(lines) > MAX_PROBLEMS:
        lines = lines[:MAX_PROBLEMS] + [f"... and {len(lines) - MAX_PROBLEMS} more problems"]
    return "; ".join(lines)


def validate_protocol(data: Any, source: str = "protocol") -> TESProtocol | TIProtocol | TMSProtocol:
    """Validate a mapping (e.g. parsed YAML) into a protocol model."""
    if isinstance(data, (TESProtocol, TIProtocol, TMSProtocol)):
        return data
    if not isinstance(data, dict):
        raise ProtocolError(f"{source}: a protocol must be a mapping with a 'kind' key, got {type(data).__name__}")
    kind = data.get("kind")
    check_option(f"{source}: kind", kind, _KINDS)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ProtocolError(_format_validation_error(err, source)) from None


def read_text_file(path: str | os.PathLike, what: str = "protocol", limit: int = MAX_PROTOCOL_BYTES,
                   error: type[StimsimError] = ProtocolError, fallback_encoding: str | None = None) -> str:
    """The text of a small UTF-8 input file; anything else is ``error`` naming the path.

    A missing file, a directory, an unreadable file, one larger than ``limit`` bytes, a binary
    file and one that is not UTF-8 (unless ``fallback_encoding`` decodes it) each give one
    message that says what to do.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{path}: is a directory; give the path of the {what} file itself")
        if path.exists() and not path.is_file():  # a FIFO or device would block or never end
            raise error(f"{path}: not a regular file; give the path of the {what} file")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} file ({err.strerror or type(err).__name__}); check the "
                    "path and its permissions") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit / 2**20:g} MiB; a {what} file is a few kB of text, so this is "
                    "probably the wrong file")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise error(f"{path}: UTF-16 text; save the {what} file as UTF-8")
    binary = _CONTROL.search(data)
    if binary:
        raise error(f"{path}: a binary file (control byte 0x{data[binary.start()]:02x} at offset {binary.start()}), "
                    f"not a text {what} file; check the path")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if fallback_encoding:
            return data.decode(fallback_encoding)
        raise error(f"{path}: not UTF-8 text (undecodable byte at offset {err.start}: binary, or another "
                    f"encoding); save the {what} file as UTF-8") from None


# bytes no text file contains (C0 controls but tab, newlines and form feed; DEL)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def read_yaml(path: str | os.PathLike):
    """Parse a small YAML file safely.

    Malformed YAML is a ProtocolError naming the line and column; so are duplicate keys, more
    than MAX_ALIASES aliases, alias expansion beyond MAX_EXPANDED, nesting deeper than MAX_DEPTH
    and unreadable files (see :func:`read_text_file`).
    """
    text = read_text_file(path)
    try:
        return yaml.load(text, Loader=_ProtocolLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = clip(getattr(err, "problem", None) or str(err).splitlines()[0], 2 * MAX_VALUE_CHARS)
        if isinstance(err, _Refused):  # well-formed, but not accepted as a protocol
            raise ProtocolError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}") from None
        raise ProtocolError(f"{path}: malformed YAML{' at ' + where if where else ''}: {problem}") from None


def load_protocol(path: str | os.PathLike) -> TESProtocol | TIProtocol | TMSProtocol:
    """Read and validate a protocol YAML file.

    Raises
    ------
    ProtocolError
        For a missing, unreadable, binary or oversized file, malformed YAML (with its line),
        duplicate keys, alias bombs, unknown keys or bad values.
    """
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data, dict) and set(data) == {"metadata", "protocol"}:
        # a library document (or a copy of one): the runnable part is its 'protocol' section
        # (stimsim.protocol.library validates the metadata)
        return validate_protocol(data["protocol"], source=f"{path}: protocol")
    return validate_protocol(data, source=str(path))


def protocol_to_dict(protocol) -> dict:
    """Plain JSON/YAML-ready dict (defaults included, None dropped)."""
    return protocol.model_dump(mode="json", exclude_none=True)


def save_protocol(protocol, path: str | os.PathLike) -> Path:
    """Write a protocol as YAML atomically (temp file, then rename).

    The first line marks the file as stimsim's (:data:`stimsim.outputs.STIMSIM_MARK`), so a
    later run may replace it; a file without the mark is never replaced.
    """
    from .. import __version__

    path = Path(path)
    text = (f"# written by stimsim {__version__}\n"
            + yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False, default_flow_style=None))
    atomic_write_text(path, text)
    return path


def protocol_json_schema() -> dict:
    """JSON Schema of the protocol file format."""
    return _ADAPTER.json_schema()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically (:func:`stimsim.outputs.atomic_file`)."""
    from ..outputs import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
