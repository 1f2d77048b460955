"""The protocol library: cited neurorehabilitation protocols shipped with stimsim.

Each library file ``stimsim/data/protocols/<id>.yaml`` has two top-level sections:

``metadata``
    id, title, condition, target ({eeg: C3} and/or {mni_mm: [x, y, z]}), modality (tdcs | tacs | tms),
    rationale (one sentence), evidence_level (as stated by the cited guideline, or "no recommendation"),
    references ([{authors, year, title, journal, doi, page_or_table}], at least one with a DOI) and
    parameters_from (which reference each number comes from); optional: indication, evidence_note,
    assumptions, notes.
``protocol``
    the runnable protocol mapping (validated by :func:`stimsim.protocol.validate_protocol`).

The protocol models forbid unknown keys, so the metadata lives in its own section and is stripped here
before validation.  Any function that takes a protocol argument can use
:func:`resolve_protocol_argument`, which accepts a library id, a plain protocol YAML file, or an
editable library copy (written by :func:`copy_protocol`).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ProtocolError
from .io import load_protocol, read_yaml, validate_protocol
from .models import TESProtocol, TMSProtocol

#: regular expression a reference DOI must match
DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")

#: metadata fields every library protocol must have
REQUIRED_METADATA = ("id", "title", "condition", "target", "modality", "rationale", "evidence_level",
                     "references", "parameters_from")
OPTIONAL_METADATA = ("indication", "evidence_note", "assumptions", "notes")
REQUIRED_REFERENCE = ("authors", "year", "title")
OPTIONAL_REFERENCE = ("journal", "doi", "page_or_table", "url", "note")
MODALITIES = ("tdcs", "tacs", "tms")
_ID_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def library_dir() -> Path:
    """Folder holding the library YAML files (inside the installed package)."""
    return Path(str(resources.files("stimsim") / "data" / "protocols"))


@dataclass(frozen=True)
class LibraryEntry:
    """One library protocol: its metadata, the validated protocol and the file it came from."""

    id: str
    metadata: dict
    protocol: TESProtocol | TMSProtocol
    path: Path

    @property
    def condition(self) -> str:
        return self.metadata["condition"]

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    @property
    def target_text(self) -> str:
        t = self.metadata["target"]
        parts = []
        if t.get("eeg"):
            parts.append(str(t["eeg"]))
        if t.get("description"):
            parts.append(str(t["description"]))
        if t.get("mni_mm") is not None:
            parts.append("MNI [" + ", ".join(f"{float(x):g}" for x in t["mni_mm"]) + "]")
        return " / ".join(parts)

    @property
    def dose(self) -> str:
        """Short dose summary computed from the protocol (the numbers that were validated)."""
        return describe_dose(self.protocol)

    @property
    def evidence_level(self) -> str:
        return str(self.metadata["evidence_level"])

    @property
    def source(self) -> str:
        """First-author-year list of the references, DOI-bearing ones first."""
        refs = self.metadata["references"]
        return "; ".join(_short_ref(r) for r in refs)


def _short_ref(ref: dict) -> str:
    reg = re.search(r"NCT\d{8}", str(ref.get("title", "")))
    if reg and not isinstance(ref.get("year"), int):
        return f"{reg.group(0)} (registry)"
    first = str(ref["authors"]).split(",")[0].strip()
    return f"{first} {ref['year']}"


def describe_dose(protocol) -> str:
    """One-line dose of a protocol, e.g. '2 mA, 25 min, 6 sessions' or '1 Hz rTMS, 1500 pulses, 90 % rMT'."""
    sessions = getattr(protocol, "sessions", None)
    per_day = getattr(protocol, "sessions_per_day", None)
    course = ""
    if sessions:
        course = f", {sessions} session{'s' if sessions != 1 else ''}"
        if per_day and per_day > 1:
            course += f" ({per_day}/day)"
    if protocol.kind in ("tdcs", "tacs"):
        amp = sum(e.current_mA for e in protocol.electrodes if e.current_mA > 0)
        freq = ""
        if protocol.kind == "tacs":
            freq = (f" at {protocol.frequency_hz:g} Hz" if protocol.channels is None else
                    " at " + ", ".join(f"{c.frequency_hz:g}" for c in protocol.channels) + " Hz")
        dur = f", {protocol.duration_min:g} min" if protocol.duration_min is not None else ""
        return f"{amp:g} mA{freq}{dur}{course}"
    prog = protocol.program
    x = prog.expanded()
    if prog.type == "rtms":
        head = f"{prog.frequency_hz:g} Hz rTMS"
    elif prog.type in ("itbs", "ctbs"):
        head = prog.type.replace("tbs", "TBS")
    elif prog.type == "tbs":
        head = "TBS"
    else:
        head = "single-pulse TMS"
    inten = ""
    if prog.intensity_pct_rmt is not None:
        inten = f", {prog.intensity_pct_rmt:g} % rMT"
    elif prog.intensity_pct_amt is not None:
        inten = f", {prog.intensity_pct_amt:g} % aMT"
    elif prog.intensity_pct_mso is not None:
        inten = f", {prog.intensity_pct_mso:g} % MSO"
    return f"{head}, {x['total_pulses']} pulses{inten}{course}"


# ----------------------------------------------------------------------------------------- loading


def split_library_document(data: Any, source: str = "protocol") -> tuple[dict | None, Any]:
    """Split a parsed YAML document into (metadata, protocol mapping).

    A library document is a mapping with exactly the keys ``metadata`` and ``protocol``; anything else
    is returned unchanged as a plain protocol with metadata ``None``.
    """
    if isinstance(data, dict) and "metadata" in data and "protocol" in data:
        extra = sorted(set(data) - {"metadata", "protocol"})
        if extra:
            raise ProtocolError(f"{source}: unknown top-level key(s) {extra}; a library protocol has only "
                                "'metadata' and 'protocol'")
        return data["metadata"], data["protocol"]
    if isinstance(data, dict) and ("metadata" in data) != ("protocol" in data):
        have, lack = ("metadata", "protocol") if "metadata" in data else ("protocol", "metadata")
        if "kind" not in data:
            raise ProtocolError(f"{source}: has a '{have}' section but no '{lack}' section; a library protocol "
                                "needs both")
    return None, data


def validate_metadata(meta: Any, source: str = "metadata", expected_id: str | None = None) -> dict:
    """Check a library metadata mapping; raise ProtocolError naming every missing or bad field."""
    if not isinstance(meta, dict):
        raise ProtocolError(f"{source}: metadata must be a mapping, got {type(meta).__name__}")
    problems = []
    missing = [k for k in REQUIRED_METADATA if meta.get(k) in (None, "", [], {})]
    if missing:
        problems.append(f"missing metadata field(s): {', '.join(missing)}")
    unknown = sorted(set(meta) - set(REQUIRED_METADATA) - set(OPTIONAL_METADATA))
    if unknown:
        problems.append(f"unknown metadata field(s) {unknown}; allowed: "
                        f"{', '.join(REQUIRED_METADATA + OPTIONAL_METADATA)}")
    pid = meta.get("id")
    if pid is not None:
        if not isinstance(pid, str) or not _ID_RE.match(pid):
            problems.append(f"id: must be lower-case words joined by '-', got {pid!r}")
        elif expected_id is not None and pid != expected_id:
            problems.append(f"id: {pid!r} does not match the file name {expected_id!r}")
    if meta.get("modality") is not None and meta.get("modality") not in MODALITIES:
        problems.append(f"modality: must be one of {list(MODALITIES)}, got {meta.get('modality')!r}")
    for key in ("title", "condition", "rationale", "evidence_level"):
        if meta.get(key) is not None and not isinstance(meta.get(key), str):
            problems.append(f"{key}: must be text")
    target = meta.get("target")
    if target is not None:
        if not isinstance(target, dict) or not (target.get("eeg") or target.get("mni_mm") is not None):
            problems.append("target: needs 'eeg' (an EEG position name) and/or 'mni_mm' ([x, y, z])")
        elif target.get("mni_mm") is not None:
            m = target["mni_mm"]
            if not (isinstance(m, (list, tuple)) and len(m) == 3 and all(isinstance(x, (int, float)) for x in m)):
                problems.append(f"target.mni_mm: must be three numbers [x, y, z], got {m!r}")
    refs = meta.get("references")
    if refs is not None:
        if not isinstance(refs, list) or not refs:
            problems.append("references: must be a non-empty list")
        else:
            any_doi = False
            for i, ref in enumerate(refs):
                if not isinstance(ref, dict):
                    problems.append(f"references[{i}]: must be a mapping")
                    continue
                lack = [k for k in REQUIRED_REFERENCE if ref.get(k) in (None, "")]
                if lack:
                    problems.append(f"references[{i}]: missing {', '.join(lack)}")
                bad = sorted(set(ref) - set(REQUIRED_REFERENCE) - set(OPTIONAL_REFERENCE))
                if bad:
                    problems.append(f"references[{i}]: unknown field(s) {bad}")
                doi = ref.get("doi")
                if doi is not None:
                    if not isinstance(doi, str) or not DOI_RE.match(doi):
                        problems.append(f"references[{i}].doi: {doi!r} is not a DOI (10.NNNN/...); give the bare "
                                        "DOI without 'https://doi.org/'")
                    else:
                        any_doi = True
            if not any_doi:
                problems.append("references: at least one reference needs a DOI")
    pf = meta.get("parameters_from")
    if pf is not None and not isinstance(pf, (dict, list, str)):
        problems.append("parameters_from: must map each parameter to the reference it comes from")
    if problems:
        raise ProtocolError(f"{source}: " + "; ".join(problems))
    return meta


def load_entry(path: str | os.PathLike) -> LibraryEntry:
    """Load and validate one library file (metadata and protocol)."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"library protocol file not found: {path}")
    data = read_yaml(path)
    meta, proto = split_library_document(data, source=str(path))
    if meta is None:
        raise ProtocolError(f"{path}: not a library protocol: needs top-level 'metadata' and 'protocol' sections")
    validate_metadata(meta, source=f"{path}: metadata", expected_id=path.stem)
    protocol = validate_protocol(proto, source=f"{path}: protocol")
    if protocol.kind != meta["modality"]:
        raise ProtocolError(f"{path}: metadata.modality is {meta['modality']!r} but protocol.kind is "
                            f"{protocol.kind!r}")
    return LibraryEntry(id=meta["id"], metadata=meta, protocol=protocol, path=path)


def _library_files(directory: Path | None = None) -> list[Path]:
    d = Path(directory) if directory is not None else library_dir()
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.yaml") if p.is_file())


def library_ids(directory: Path | None = None) -> list[str]:
    """All library ids (file names without .yaml), sorted."""
    return [p.stem for p in _library_files(directory)]


def _matches_modality(entry: LibraryEntry, modality: str) -> bool:
    m = modality.strip().lower()
    if m in ("tes", "tcs"):
        return entry.modality in ("tdcs", "tacs")
    if m in ("rtms", "itbs", "ctbs", "tbs"):
        if entry.modality != "tms":
            return False
        t = entry.protocol.program.type
        return t == m or (m == "tbs" and t in ("itbs", "ctbs", "tbs"))
    return entry.modality == m


def list_protocols(condition: str | None = None, modality: str | None = None,
                   directory: Path | None = None) -> list[LibraryEntry]:
    """Library protocols, optionally filtered.

    Parameters
    ----------
    condition : case-insensitive text matched against the condition, indication and title
        (``"stroke"`` also finds post-stroke depression)
    modality : ``tdcs``, ``tacs``, ``tms``, ``tes`` (= tdcs or tacs), or a TMS programme type
        (``rtms``, ``itbs``, ``ctbs``, ``tbs``)
    """
    valid_mod = MODALITIES + ("tes", "tcs", "rtms", "itbs", "ctbs", "tbs")
    if modality is not None and modality.strip().lower() not in valid_mod:
        raise ProtocolError(f"modality: must be one of {', '.join(valid_mod)}, got {modality!r}")
    entries = [load_entry(p) for p in _library_files(directory)]
    if condition:
        c = condition.strip().lower()
        entries = [e for e in entries
                   if c in " ".join(str(e.metadata.get(k, "")) for k in ("condition", "indication", "title")).lower()]
    if modality:
        entries = [e for e in entries if _matches_modality(e, modality)]
    return entries


def nearest_ids(name: str, n: int = 3, directory: Path | None = None) -> list[str]:
    """Library ids closest to ``name`` (difflib), best first."""
    ids = library_ids(directory)
    close = difflib.get_close_matches(name, ids, n=n, cutoff=0.4)
    if len(close) < n:  # also offer ids sharing a word with the query
        words = set(re.split(r"[-_\s]+", name.lower())) - {""}
        for i in ids:
            if i not in close and words & set(i.split("-")):
                close.append(i)
            if len(close) >= n:
                break
    return close


def get_protocol(protocol_id: str, directory: Path | None = None) -> LibraryEntry:
    """The library protocol with this id; an unknown id raises ProtocolError naming the nearest ids."""
    if not isinstance(protocol_id, str) or not protocol_id.strip():
        raise ProtocolError("protocol id: give a library id (see `stimsim protocols list`)")
    pid = protocol_id.strip()
    files = {p.stem: p for p in _library_files(directory)}
    if pid not in files:
        near = nearest_ids(pid, directory=directory)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ProtocolError(f"unknown library protocol {pid!r}{hint} (`stimsim protocols list` shows all "
                            f"{len(files)})")
    return load_entry(files[pid])


def load_protocol_file(path: str | os.PathLike) -> TESProtocol | TMSProtocol:
    """Load a protocol YAML that is either a plain protocol or a library document (metadata stripped)."""
    path = Path(path)
    data = read_yaml(path)  # reports a missing, unreadable or non-text file itself
    meta, proto = split_library_document(data, source=str(path))
    if meta is None:
        return load_protocol(path)
    validate_metadata(meta, source=f"{path}: metadata")
    return validate_protocol(proto, source=f"{path}: protocol")


def resolve_protocol_argument(arg: str | os.PathLike) -> tuple[TESProtocol | TMSProtocol, Path]:
    """(protocol, base_dir) for a command-line argument: a protocol YAML file or a library id.

    ``base_dir`` is the folder relative head paths are resolved against: the file's folder, or the
    library folder for ids.
    """
    text = os.fspath(arg)
    path = Path(text).expanduser()
    looks_like_path = (path.suffix.lower() in (".yaml", ".yml", ".json") or os.sep in text
                       or (os.altsep is not None and os.altsep in text))
    if path.is_file() or (path.exists() and looks_like_path):  # a folder or device: read_yaml says what
        return load_protocol_file(path), path.parent.resolve()
    if looks_like_path:
        raise ProtocolError(f"protocol file not found: {text}")
    if text not in library_ids():
        near = nearest_ids(text)
        hint = f"; nearest library ids: {', '.join(near)}" if near else ""
        raise ProtocolError(f"{text!r} is neither a protocol file nor a library protocol id{hint} "
                            "(`stimsim protocols list` shows the library)")
    entry = get_protocol(text)
    return entry.protocol, entry.path.parent


# ----------------------------------------------------------------------------------------- output


def library_table(entries: list[LibraryEntry] | None = None, title: str | None = None):
    """A rich Table of library protocols: id, condition, target, modality, dose, evidence level, source."""
    from rich.table import Table

    if entries is None:
        entries = list_protocols()
    table = Table(title=title or f"stimsim protocol library ({len(entries)} protocols)", show_lines=False)
    for col in ("id", "condition", "target", "modality", "dose", "evidence level", "source"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.id, e.condition, e.target_text, e.modality, e.dose, e.evidence_level, e.source)
    return table


def copy_protocol(protocol_id: str, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write an editable copy (metadata + protocol, comments kept) of a library protocol; returns its path.

    ``dest`` may be a file path or an existing folder (the copy is then ``<folder>/<id>.yaml``).  The copy
    is written atomically and an existing file is only replaced with ``overwrite=True``.
    """
    from .io import atomic_write_text

    entry = get_protocol(protocol_id)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{entry.id}.yaml"
    if dest.exists() and not overwrite:
        raise ProtocolError(f"{dest} already exists; choose another file name or pass overwrite")
    if dest.suffix.lower() not in (".yaml", ".yml"):
        raise ProtocolError(f"{dest}: the copy must be a .yaml (or .yml) file")
    text = entry.path.read_text(encoding="utf-8")
    header = (f"# Editable copy of stimsim library protocol '{entry.id}'.\n"
              "# Edit the 'protocol' section; keep 'metadata' (the citations) accurate if you change the dose.\n")
    atomic_write_text(dest, header + text)
    return dest


__all__ = ["LibraryEntry", "library_dir", "list_protocols", "get_protocol", "library_ids", "nearest_ids",
           "resolve_protocol_argument", "load_protocol_file", "load_entry", "validate_metadata",
           "split_library_document", "library_table", "copy_protocol", "describe_dose", "DOI_RE",
           "REQUIRED_METADATA"]
