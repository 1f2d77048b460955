"""EEG electrode positions: read cap files, project onto the scalp, look names up.

Readers (all in mm, in the head's world frame):

* ``.elc`` (ASA): ``Positions`` block of ``x y z`` rows (optionally ``name: x y z``) and a
  ``Labels`` block; ``UnitPosition`` m / cm / mm is honoured.
* ``.csv`` (SimNIBS cap): ``Type,x,y,z,Name`` rows; Fiducial rows are kept (LPA, Nz...).
* ``.tsv`` / ``.txt``: ``name x y z`` per row (tab or whitespace; a header row and extra
  columns such as ``shift_mm`` are ignored).
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import MeshError, ProtocolError, shown

__all__ = ["read_positions", "project_to_scalp", "eeg_position", "head_positions", "EMBEDDED_POSITIONS"]

#: embedded heads that ship an electrode positions file in stimsim/data
EMBEDDED_POSITIONS = {"colin27": "colin27_1005.tsv"}


class PositionsError(MeshError):
    """An electrode positions file cannot be read."""


#: largest positions file read, bytes (a 10-05 cap with 346 positions is ~15 kB)
MAX_POSITIONS_BYTES = 16 * 2**20
#: same name twice at positions this close (mm) is one electrode listed twice (SimNIBS caps list
#: Iz as both an Electrode and a Fiducial row)
_SAME_POINT_MM = 1e-3

_Row = tuple[str, list[float], int]  # name, xyz as read (file unit), line number


def _read_elc(path: Path, text: str) -> tuple[list[_Row], float]:
    scale = 1.0
    pos, labels, mode = [], [], None
    for k, raw in enumerate(text.splitlines(), 1):
        ln = raw.strip()
        if not ln or ln.startswith("#") or ln.startswith("//"):
            continue
        low = ln.lower()
        if low.startswith("unitposition"):
            unit = ln.split()[-1].lower()
            scale = {"m": 1000.0, "cm": 10.0, "mm": 1.0}.get(unit, 1.0)
            continue
        if low.startswith("positions"):
            mode = "pos"
            continue
        if low.startswith("labels"):
            mode = "lab"
            continue
        if "=" in ln or low.startswith(("referencelabel", "numberpositions")):
            continue
        if mode == "pos":
            values = (ln.split(":", 1)[1] if ":" in ln else ln).split()
            try:
                xyz = [float(v) for v in values[:3]]
            except ValueError:
                xyz = []
            if len(xyz) != 3:
                raise PositionsError(f"{path}:{k}: cannot read position row {shown(ln)}; expected 'x y z' "
                                     "(or 'name: x y z')")
            pos.append((xyz, k))
            if ":" in ln:
                labels.append((ln.split(":", 1)[0].strip(), k))
        elif mode == "lab":
            labels.extend((name, k) for name in ln.split())
    if not pos or len(labels) != len(pos):
        raise PositionsError(f"{path}: {len(pos)} positions but {len(labels)} labels; not an ASA .elc file?")
    return [(name, xyz, k) for (name, k), (xyz, _) in zip(labels, pos)], scale


def _read_csv(path: Path, text: str) -> tuple[list[_Row], float]:
    rows = []
    for k, ln in enumerate(text.splitlines(), 1):
        parts = [p.strip() for p in ln.split(",")]
        if len(parts) < 4 or not ln.strip():
            continue
        try:
            xyz = [float(v) for v in parts[1:4]]
        except ValueError:
            if k == 1:
                continue
            raise PositionsError(f"{path}:{k}: expected 'Type,x,y,z,Name', got {shown(ln)}") from None
        name = parts[4] if len(parts) > 4 and parts[4] else f"{parts[0]}{k}"
        rows.append((name, xyz, k))
    return rows, 1.0


def _read_tsv(path: Path, text: str) -> tuple[list[_Row], float]:
    rows = []
    for k, ln in enumerate(text.splitlines(), 1):
        parts = ln.split("#", 1)[0].split()
        if len(parts) < 4:
            continue
        try:
            xyz = [float(v) for v in parts[1:4]]
        except ValueError:
            if not rows:
                continue  # header
            raise PositionsError(f"{path}:{k}: expected 'name x y z', got {shown(ln)}") from None
        rows.append((parts[0], xyz, k))
    return rows, 1.0


def _collect(path: Path, rows: list[_Row], scale: float) -> dict[str, np.ndarray]:
    """``{name: xyz mm}``, refusing non-finite or absurd coordinates and names given twice."""
    from ..protocol.models import MAX_COORD_MM

    out: dict[str, np.ndarray] = {}
    first: dict[str, tuple[str, int]] = {}  # lower-case name -> (name, line)
    for name, xyz, k in rows:
        p = np.asarray(xyz, float) * scale
        if not np.all(np.isfinite(p)):
            raise PositionsError(f"{path}:{k}: electrode {shown(name)} has coordinates {shown(xyz)}, not finite "
                                 "numbers; give x y z in mm")
        if np.abs(p).max() > MAX_COORD_MM:
            raise PositionsError(f"{path}:{k}: electrode {shown(name)} is at {shown(p.tolist())} mm, more than "
                                 f"{MAX_COORD_MM:g} mm from the origin; positions are in mm (check the unit)")
        key = name.lower()
        if key in first:
            other, line = first[key]
            if other == name and np.allclose(out[other], p, rtol=0, atol=_SAME_POINT_MM):
                continue  # the same electrode listed twice (an Electrode and a Fiducial row)
            what = (f"electrode {shown(name)} is listed twice at different positions" if other == name else
                    f"electrodes {shown(other)} and {shown(name)} differ only in case (names are looked up "
                    "ignoring case)")
            lines = f"line {k}" if line == k else f"lines {line} and {k}"
            raise PositionsError(f"{path}:{k}: {what} ({lines}); rename or remove one")
        first[key] = (name, k)
        out[name] = p
    return out


def read_positions(path) -> dict[str, np.ndarray]:
    """``{name: (3,) mm}`` from a ``.elc``, ``.csv`` or ``.tsv`` positions file.

    Raises :class:`PositionsError` (naming the path, and the line where it applies) for a
    missing, unreadable, binary or oversized file, unreadable rows, non-finite or absurd
    coordinates, and a name given twice at different positions.
    """
    from ..protocol.io import read_text_file

    path = Path(path)
    suffix = path.suffix.lower()
    reader = {".elc": _read_elc, ".csv": _read_csv, ".tsv": _read_tsv, ".txt": _read_tsv}.get(suffix)
    if reader is None and path.is_file():
        raise PositionsError(f"unknown positions file type {shown(path.name)}; use .elc, .csv or .tsv")
    # ASA writes .elc files in the Windows code page: fall back to Latin-1 for them
    text = read_text_file(path, what="electrode positions", limit=MAX_POSITIONS_BYTES, error=PositionsError,
                          fallback_encoding="latin-1" if suffix == ".elc" else None)
    if reader is None:  # read_text_file accepted a file that is_file() did not: it changed meanwhile
        raise PositionsError(f"unknown positions file type {shown(path.name)}; use .elc, .csv or .tsv")
    out = _collect(path, *reader(path, text))
    if not out:
        raise PositionsError(f"{path}: no electrode positions found; expected 'name x y z' rows (.tsv), "
                             "'Type,x,y,z,Name' (.csv) or an ASA .elc file")
    return out


def project_to_scalp(mesh, points) -> np.ndarray:
    """Closest points on the mesh's outer surface (the scalp) to ``points`` (k, 3) mm."""
    from scipy.spatial import cKDTree

    pts = np.atleast_2d(np.asarray(points, float))
    faces = mesh.boundary_faces
    tri = mesh.nodes[faces]
    cen = tri.mean(axis=1)
    tree = cKDTree(cen)
    k = min(16, len(faces))
    _, cand = tree.query(pts, k=k)
    cand = np.atleast_2d(cand)
    best = np.empty_like(pts)
    for i, p in enumerate(pts):
        q = _closest_on_triangles(p, tri[cand[i]])
        d = np.linalg.norm(q - p, axis=1)
        best[i] = q[np.argmin(d)]
    return best


def _closest_on_triangles(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Closest point to p on each triangle (Ericson, Real-Time Collision Detection 5.1.5)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    denom = va + vb + vc
    with np.errstate(divide="ignore", invalid="ignore"):
        v = vb / denom
        w = vc / denom
    out = a + ab * v[:, None] + ac * w[:, None]
    # edge and vertex regions
    with np.errstate(divide="ignore", invalid="ignore"):
        reg = [
            ((d1 <= 0) & (d2 <= 0), a),
            ((d3 >= 0) & (d4 <= d3), b),
            ((d6 >= 0) & (d5 <= d6), c),
            ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * (d1 / (d1 - d3))[:, None]),
            ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * (d2 / (d2 - d6))[:, None]),
            ((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0),
             b + (c - b) * ((d4 - d3) / ((d4 - d3) + (d5 - d6)))[:, None]),
        ]
    done = np.zeros(len(tri), bool)
    for mask, q in reg:
        m = mask & ~done
        out[m] = q[m]
        done |= m
    return out


def head_positions(head: str | Path, positions=None) -> dict[str, np.ndarray]:
    """Positions for a head: the embedded file for an embedded head, else ``positions`` (a path)."""
    if positions is not None:
        return read_positions(positions)
    key = str(head).lower()
    if key in EMBEDDED_POSITIONS:
        path = Path(str(resources.files("stimsim") / "data" / EMBEDDED_POSITIONS[key]))
        return read_positions(path)
    raise ProtocolError(f"head {shown(str(head))} has no electrode positions; give a positions file (.elc/.csv/.tsv) "
                        "in the head's space, or coordinates [x, y, z] in mm")


def eeg_position(name: str, head="colin27", positions=None) -> np.ndarray:
    """Position (mm) of EEG electrode ``name`` on ``head`` (case-insensitive).

    ``positions`` may be a dict ``{name: xyz}``, a positions file path, or None (the
    embedded head's file).  Unknown names raise :class:`ProtocolError` with a suggestion.
    """
    table = positions if isinstance(positions, dict) else head_positions(head, positions)
    lookup = {k.lower(): k for k in table}
    key = str(name).strip().lower()
    if key not in lookup:
        close = difflib.get_close_matches(key[:100], list(lookup), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(lookup[c]) for c in close)}?" if close else ""
        raise ProtocolError(f"EEG position {shown(name)} is not in the cap of head {shown(str(head))} "
                            f"({len(table)} positions).{hint}")
    return np.asarray(table[lookup[key]], float)
