"""Gmsh MSH reader and writer (MSH 2.2 and 4.1, ASCII and binary, optionally gzipped).

Only what a tetrahedral head model needs is kept: nodes, triangles (Gmsh element type 2)
and tetrahedra (type 4) with their tags, plus ``$NodeData`` / ``$ElementData`` fields.
Other element types (points, lines, quads, ...) are read past and dropped.

Speed: every section is handed to numpy in one piece.  ASCII sections are tokenised with
``np.fromstring(..., sep=" ")``; the variable line lengths of an MSH 2.2 ``$Elements``
section are found from the byte positions of newlines and token starts.  Binary sections
are viewed with ``np.frombuffer``.  Python only loops over *blocks* (entity blocks in MSH
4.1, runs of identical element-block headers in binary MSH 2.2), never over nodes or
elements.

Conventions on reading
----------------------
* Nodes are ordered by increasing file node id, elements by increasing file element id
  (files written by Gmsh or by :func:`write_msh` are already in that order), and node ids
  are mapped to 0-based contiguous indices even when the file ids have gaps.
* Tags: MSH 2.2 uses the physical tag of each element, or its elementary tag where the
  physical tag is 0.  MSH 4.1 uses the first physical tag of the element's entity (from
  ``$Entities``), or the entity tag where the entity has no physical group.
* Fields: ``{"node": {name: (n,) or (n, k)}, "element": {name: (m,) or (m, k) over the
  tetrahedra}, "tri_element": {name: ... over the triangles}}``.  Entries missing from a
  data section are NaN.  When a name appears in several sections (time steps), the last
  one wins.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .._logging import logger
from ..errors import MeshError
from ..outputs import atomic_file
from .model import Mesh

__all__ = ["read_msh", "write_msh", "MeshFileNotFoundError", "checked_fields"]


class MeshFileNotFoundError(MeshError, FileNotFoundError):
    """The mesh file does not exist (both a :class:`MeshError` and a :class:`FileNotFoundError`)."""


class _FormatError(Exception):
    """Internal: the file content does not follow the MSH format (message without path)."""


#: Gmsh element type -> number of nodes (first and second order types and a few more)
_NODES_PER_TYPE = {
    1: 2, 2: 3, 3: 4, 4: 4, 5: 8, 6: 6, 7: 5, 8: 3, 9: 6, 10: 9, 11: 10, 12: 27, 13: 18,
    14: 14, 15: 1, 16: 8, 17: 20, 18: 15, 19: 13, 20: 9, 21: 10, 22: 12, 23: 15, 24: 15,
    25: 21, 26: 4, 27: 5, 28: 6, 29: 20, 30: 35, 31: 56, 92: 64, 93: 125,
}  # fmt: skip
_TRI, _TET = 2, 4
_DIM_OF_TYPE = {_TRI: 2, _TET: 3}


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def _open_bytes(path: Path) -> bytes:
    if not path.exists():
        raise MeshFileNotFoundError(f"mesh file not found: {path}")
    if path.is_dir():
        raise MeshError(f"{path} is a directory, not a mesh file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MeshError(f"cannot read mesh file {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise MeshError(f"{path}: corrupt gzip data ({exc}); re-create or re-download the file") from exc
    return raw


class _IdMap:
    """Map sorted unique file ids (int64) to 0-based positions; -1 for unknown ids."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        n = len(ids)
        self._offset = None
        self._table = None
        if n == 0:
            return
        if ids[0] == 1 and ids[-1] == n:
            self._offset = 1
        elif ids[0] >= 0 and ids[-1] <= 4 * n + 1_000_000:
            table = np.full(int(ids[-1]) + 1, -1, np.int64)
            table[ids] = np.arange(n)
            self._table = table

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.int64)
        n = len(self.ids)
        if n == 0:
            return np.full(q.shape, -1, np.int64)
        if self._offset is not None:
            idx = q - self._offset
            idx[(idx < 0) | (idx >= n)] = -1
            return idx
        if self._table is not None:
            ok = (q >= 0) & (q < len(self._table))
            out = np.full(q.shape, -1, np.int64)
            out[ok] = self._table[q[ok]]
            return out
        pos = np.searchsorted(self.ids, q)
        pos = np.minimum(pos, n - 1)
        return np.where(self.ids[pos] == q, pos, -1)


def _sort_by_id(ids: np.ndarray, what: str) -> np.ndarray | None:
    """Return the permutation that sorts ``ids`` (None if already strictly increasing)."""
    n = len(ids)
    if n < 2 or np.all(ids[1:] > ids[:-1]):
        return None
    lo = int(ids.min())
    if int(ids.max()) - lo + 1 == n:  # a permutation of a contiguous range: O(n) placement
        seen = np.zeros(n, bool)
        seen[ids - lo] = True
        if seen.all():
            order = np.empty(n, np.int64)
            order[ids - lo] = np.arange(n)
            return order
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        raise _FormatError(f"duplicate {what} id {int(s[dup[0]])} ({dup.size} duplicates)")
    return order


def _fromstring(body: bytes, dtype) -> np.ndarray:
    try:
        return np.fromstring(body, dtype=dtype, sep=" ")
    except ValueError as exc:
        raise _FormatError(f"non-numeric text where numbers were expected ({exc})") from None


def _token_starts(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Byte positions of token starts and of newlines in an ASCII block (vectorised)."""
    b = np.frombuffer(body, np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ns = b > 32  # space, tab, CR, LF are all <= 32
    st = np.flatnonzero(ns[1:] & ~ns[:-1]) + 1
    if ns[0]:
        st = np.concatenate(([0], st))
    nl = np.flatnonzero(b == 10)
    return st, nl


# ---------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------
class _Blocks:
    """Element pieces of one type collected over blocks."""

    def __init__(self):
        self.ids: list[np.ndarray] = []
        self.tags: list[np.ndarray] = []
        self.nodes: list[np.ndarray] = []

    def add(self, ids, tags, nodes):
        self.ids.append(np.asarray(ids, np.int64))
        self.tags.append(np.asarray(tags, np.int64))
        self.nodes.append(np.asarray(nodes, np.int64))

    def concat(self, nn: int):
        if not self.ids:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, nn), np.int64)
        return (np.concatenate(self.ids), np.concatenate(self.tags), np.concatenate(self.nodes).reshape(-1, nn))


class _Parser:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0
        self.version = None
        self.binary = False
        self.e = "<"
        self.size_t = "u8"
        self.node_ids = None
        self.nodes = None
        self.elems = {_TRI: _Blocks(), _TET: _Blocks()}
        self.entity_tag = {}  # (dim, entity tag) -> physical tag
        self.data = []  # (kind, name, tags, values)
        self.n_other = 0
        self.section = "MeshFormat"

    # -- low level ---------------------------------------------------------------------
    def skip_ws(self):
        buf, n = self.buf, len(self.buf)
        while self.pos < n and buf[self.pos] in b" \t\r\n":
            self.pos += 1

    def line(self) -> bytes:
        j = self.buf.find(b"\n", self.pos)
        if j < 0:
            j = len(self.buf)
        s = self.buf[self.pos : j].strip()
        self.pos = j + 1
        return s

    def int_line(self, what: str) -> int:
        s = self.line()
        try:
            return int(s.split()[0])
        except (ValueError, IndexError):
            raise _FormatError(f"expected {what}, found {s[:40]!r}") from None

    def body(self, name: bytes) -> bytes:
        """Everything up to ``$End<name>``; moves past the end marker."""
        marker = b"$End" + name
        j = self.buf.find(marker, self.pos)
        if j < 0:
            raise _FormatError(f"section ${name.decode()} has no {marker.decode()} (truncated file?)")
        out = self.buf[self.pos : j]
        self.pos = j + len(marker)
        return out

    def end(self, name: bytes):
        """Expect (after whitespace) the end marker of a binary section."""
        self.skip_ws()
        marker = b"$End" + name
        if not self.buf.startswith(marker, self.pos):
            raise _FormatError(
                f"binary section ${name.decode()} does not end where its counts say (corrupt or truncated file)"
            )
        self.pos += len(marker)

    def frombuffer(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        if count < 0 or self.pos + count * dtype.itemsize > len(self.buf):
            raise _FormatError("binary data shorter than its header says (truncated file?)")
        a = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += count * dtype.itemsize
        return a

    def unpack(self, fmt: str):
        s = struct.Struct(self.e + fmt)
        if self.pos + s.size > len(self.buf):
            raise _FormatError("binary data shorter than its header says (truncated file?)")
        out = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return out

    # -- driver ------------------------------------------------------------------------
    def parse(self):
        self.skip_ws()
        if not self.buf.startswith(b"$MeshFormat"):
            if self.buf.startswith(b"$NOD") or self.buf.startswith(b"$PostFormat"):
                raise _FormatError("MSH version 1 / post-processing format is not supported; re-save as MSH 2.2 or 4.1")
            raise _FormatError("not a Gmsh MSH file (it does not start with $MeshFormat)")
        while True:
            self.skip_ws()
            if self.pos >= len(self.buf):
                break
            if self.buf[self.pos] != 36:  # '$'
                raise _FormatError(f"expected a section header like $Nodes at byte {self.pos}")
            name = self.line()[1:]
            self.section = name.decode(errors="replace")
            handler = {
                b"MeshFormat": self.mesh_format,
                b"Entities": self.entities,
                b"Nodes": self.nodes_section,
                b"Elements": self.elements_section,
                b"NodeData": lambda: self.data_section(b"NodeData", "node"),
                b"ElementData": lambda: self.data_section(b"ElementData", "element"),
            }.get(name)
            if name != b"MeshFormat" and self.version is None:
                raise _FormatError("$MeshFormat must come first")
            if handler is None:
                if name.startswith(b"End"):
                    raise _FormatError(f"unexpected ${name.decode(errors='replace')}")
                logger.debug("skipping section $%s", name.decode(errors="replace"))
                self.body(name)
            else:
                handler()
        self.section = None
        if self.nodes is None:
            raise _FormatError("no $Nodes section")

    def mesh_format(self):
        parts = self.line().split()
        if len(parts) < 3:
            raise _FormatError("malformed $MeshFormat line")
        version, ftype, dsize = parts[0].decode(), int(parts[1]), int(parts[2])
        major = version.split(".")[0]
        if version.startswith("4.1"):
            self.version = 4
        elif major == "2":
            self.version = 2
        else:
            raise _FormatError(f"MSH version {version} is not supported; re-save the mesh as MSH 2.2 or 4.1 in Gmsh")
        self.binary = ftype == 1
        if self.binary:
            one = self.buf[self.pos : self.pos + 4]
            if one == struct.pack("<i", 1):
                self.e = "<"
            elif one == struct.pack(">i", 1):
                self.e = ">"
            else:
                raise _FormatError("binary MSH without the endianness marker")
            self.pos += 4
            if self.version == 2 and dsize != 8:
                raise _FormatError(f"binary MSH 2 with {dsize}-byte reals is not supported (need 8)")
            if self.version == 4:
                if dsize not in (4, 8):
                    raise _FormatError(f"unsupported size_t size {dsize}")
                self.size_t = f"u{dsize}"
        self.body(b"MeshFormat")

    # -- $Entities (MSH 4.1) -------------------------------------------------------------
    def entities(self):
        if self.version != 4:
            self.body(b"Entities")
            return
        if self.binary:
            st = "Q" if self.size_t == "u8" else "I"
            counts = self.unpack(st * 4)
            for dim, count in enumerate(counts):
                for _ in range(count):
                    (tag,) = self.unpack("i")
                    self.pos += 8 * (3 if dim == 0 else 6)
                    (nph,) = self.unpack(st)
                    phys = self.unpack("i" * nph)
                    if dim > 0:
                        (nb,) = self.unpack(st)
                        self.pos += 4 * nb
                    self.entity_tag[(dim, tag)] = phys[0] if nph else tag
            self.end(b"Entities")
        else:
            t = _fromstring(self.body(b"Entities"), np.float64)
            i = 4
            counts = t[:4].astype(np.int64)
            for dim, count in enumerate(counts):
                for _ in range(int(count)):
                    tag = int(t[i])
                    i += 4 if dim == 0 else 7
                    nph = int(t[i])
                    phys = t[i + 1 : i + 1 + nph]
                    i += 1 + nph
                    if dim > 0:
                        i += 1 + int(t[i])
                    self.entity_tag[(dim, tag)] = int(phys[0]) if nph else tag
            if i > len(t):
                raise _FormatError("$Entities section is shorter than its counts say")

    # -- $Nodes ----------------------------------------------------------------------------
    def nodes_section(self):
        if self.nodes is not None:
            raise _FormatError("more than one $Nodes section")
        if self.version == 2:
            n = self.int_line("the number of nodes")
            if self.binary:
                rec = self.frombuffer([("id", self.e + "i4"), ("xyz", self.e + "f8", 3)], n)
                ids, xyz = rec["id"].astype(np.int64), rec["xyz"]
                self.end(b"Nodes")
            else:
                t = _fromstring(self.body(b"Nodes"), np.float64)
                if t.size != 4 * n:
                    raise _FormatError(f"$Nodes announces {n} nodes but holds {t.size / 4:g} lines of 4 numbers")
                t = t.reshape(n, 4)
                ids, xyz = t[:, 0].astype(np.int64), t[:, 1:]
        else:
            ids_l, xyz_l = [], []
            if self.binary:
                st = self.e + self.size_t
                nblocks, n, _, _ = (int(v) for v in self.frombuffer(st, 4))
                sfmt = "iii" + ("Q" if self.size_t == "u8" else "I")
                for _ in range(nblocks):
                    dim, _tag, par, nb = self.unpack(sfmt)
                    nc = 3 + (dim if par else 0)
                    ids_l.append(self.frombuffer(st, nb).astype(np.int64))
                    xyz_l.append(self.frombuffer(self.e + "f8", nb * nc).reshape(nb, nc)[:, :3])
                self.end(b"Nodes")
            else:
                t = _fromstring(self.body(b"Nodes"), np.float64)
                nblocks, n = int(t[0]), int(t[1])
                i = 4
                for _ in range(nblocks):
                    dim, par, nb = int(t[i]), int(t[i + 2]), int(t[i + 3])
                    i += 4
                    nc = 3 + (dim if par else 0)
                    ids_l.append(t[i : i + nb].astype(np.int64))
                    i += nb
                    xyz_l.append(t[i : i + nb * nc].reshape(nb, nc)[:, :3])
                    i += nb * nc
                if i != len(t):
                    raise _FormatError("$Nodes section length does not match its block counts")
            ids = np.concatenate(ids_l) if ids_l else np.zeros(0, np.int64)
            xyz = np.concatenate(xyz_l) if xyz_l else np.zeros((0, 3))
            if len(ids) != n:
                raise _FormatError(f"$Nodes announces {n} nodes but its blocks hold {len(ids)}")
        order = _sort_by_id(ids, "node")
        if order is not None:
            ids, xyz = ids[order], xyz[order]
        self.node_ids = ids
        self.nodes = np.array(xyz, dtype=np.float64)  # own, native-endian copy

    # -- $Elements -------------------------------------------------------------------------
    def _keep(self, etype: int, ids, tags, nodes):
        if etype in self.elems:
            self.elems[etype].add(ids, tags, nodes)
        else:
            self.n_other += len(ids)

    def elements_section(self):
        if self.version == 2:
            n = self.int_line("the number of elements")
            if self.binary:
                self._elements2_binary(n)
                self.end(b"Elements")
            else:
                self._elements2_ascii(n, self.body(b"Elements"))
        else:
            if self.binary:
                self._elements4_binary()
                self.end(b"Elements")
            else:
                self._elements4_ascii(self.body(b"Elements"))

    def _elements2_ascii(self, n: int, body: bytes):
        st, nl = _token_starts(body)
        tok = _fromstring(body, np.int64)
        if tok.size != st.size:
            raise _FormatError("$Elements holds non-integer tokens")
        if tok.size == 0:
            if n:
                raise _FormatError(f"$Elements announces {n} elements but is empty")
            return
        first = np.concatenate(([0], np.searchsorted(st, nl)))
        first = first[first < st.size]
        first = first[np.concatenate(([True], first[1:] > first[:-1]))]
        if first.size != n:
            raise _FormatError(f"$Elements announces {n} elements but holds {first.size} lines")
        length = np.diff(np.concatenate((first, [tok.size])))
        if np.any(length < 3):
            raise _FormatError("an element line in $Elements has fewer than 3 numbers")
        etype = tok[first + 1]
        ntags = tok[first + 2]
        for t in np.unique(etype):
            t = int(t)
            sel = etype == t
            if t not in self.elems:
                self.n_other += int(sel.sum())
                continue
            nn = _NODES_PER_TYPE[t]
            o, nt = first[sel], ntags[sel]
            if np.any(length[sel] != 3 + nt + nn) or np.any(nt < 0):
                raise _FormatError(f"element lines of type {t} do not have 3 + tags + {nn} numbers")
            phys = np.where(nt >= 1, tok[np.minimum(o + 3, tok.size - 1)], 0)
            geom = np.where(nt >= 2, tok[np.minimum(o + 4, tok.size - 1)], 0)
            nodes = tok[(o + 3 + nt)[:, None] + np.arange(nn)]
            self._keep(t, tok[o], np.where(phys != 0, phys, geom), nodes)

    def _elements2_binary(self, n: int):
        words = np.frombuffer(self.buf, self.e + "i4", count=(len(self.buf) - self.pos) // 4, offset=self.pos)
        p = 0
        left = n
        while left > 0:
            if p + 3 > len(words):
                raise _FormatError("binary $Elements is truncated")
            etype, nb, ntags = (int(v) for v in words[p : p + 3])
            if etype not in _NODES_PER_TYPE:
                raise _FormatError(f"unknown Gmsh element type {etype} in binary $Elements")
            if nb <= 0 or ntags < 0 or nb > left:
                raise _FormatError("corrupt element block header in binary $Elements")
            rec = 1 + ntags + _NODES_PER_TYPE[etype]
            blen = 3 + nb * rec
            kmax = min(left // nb, (len(words) - p) // blen)
            if kmax < 1:
                raise _FormatError("binary $Elements is truncated")
            k = self._run_length(words, p, blen, kmax)
            recs = words[p : p + k * blen].reshape(k, blen)[:, 3:].reshape(k * nb, rec)
            nn = _NODES_PER_TYPE[etype]
            if etype in self.elems:
                phys = recs[:, 1] if ntags >= 1 else np.zeros(len(recs), np.int64)
                geom = recs[:, 2] if ntags >= 2 else np.zeros(len(recs), np.int64)
                self._keep(etype, recs[:, 0], np.where(phys != 0, phys, geom), recs[:, 1 + ntags : 1 + ntags + nn])
            else:
                self.n_other += len(recs)
            left -= k * nb
            p += k * blen
        self.pos += 4 * p

    @staticmethod
    def _run_length(words: np.ndarray, p: int, blen: int, kmax: int) -> int:
        """How many consecutive blocks of length ``blen`` repeat the header at ``p``."""
        head = words[p : p + 3]
        k, chunk = 1, 64
        while k < kmax:
            c = min(chunk, kmax - k)
            h = words[p + k * blen : p + (k + c) * blen].reshape(c, blen)[:, :3]
            bad = np.flatnonzero(np.any(h != head, axis=1))
            if bad.size:
                return k + int(bad[0])
            k += c
            chunk *= 4
        return k

    def _tag_of_entity(self, dim: int, etag: int) -> int:
        return self.entity_tag.get((dim, etag), etag)

    def _elements4_binary(self):
        st = self.e + self.size_t
        nblocks, n, _, _ = (int(v) for v in self.frombuffer(st, 4))
        sfmt = "iii" + ("Q" if self.size_t == "u8" else "I")
        total = 0
        for _ in range(nblocks):
            dim, etag, etype, nb = self.unpack(sfmt)
            if etype not in _NODES_PER_TYPE:
                raise _FormatError(f"unknown Gmsh element type {etype} in binary $Elements")
            nn = _NODES_PER_TYPE[etype]
            total += nb
            if etype in self.elems:
                a = self.frombuffer(st, nb * (1 + nn)).reshape(nb, 1 + nn).astype(np.int64)
                self._keep(etype, a[:, 0], np.full(nb, self._tag_of_entity(dim, etag)), a[:, 1:])
            else:
                self.frombuffer(st, nb * (1 + nn))
                self.n_other += nb
        if total != n:
            raise _FormatError(f"$Elements announces {n} elements but its blocks hold {total}")

    def _elements4_ascii(self, body: bytes):
        t = _fromstring(body, np.int64)
        if t.size < 4:
            raise _FormatError("$Elements section is too short")
        nblocks, n = int(t[0]), int(t[1])
        i, total = 4, 0
        for _ in range(nblocks):
            dim, etag, etype, nb = (int(v) for v in t[i : i + 4])
            i += 4
            if etype not in _NODES_PER_TYPE:
                raise _FormatError(f"unknown Gmsh element type {etype} in $Elements")
            nn = _NODES_PER_TYPE[etype]
            a = t[i : i + nb * (1 + nn)]
            if a.size != nb * (1 + nn):
                raise _FormatError("$Elements section is shorter than its block counts say")
            a = a.reshape(nb, 1 + nn)
            i += nb * (1 + nn)
            total += nb
            self._keep(etype, a[:, 0], np.full(nb, self._tag_of_entity(dim, etag)), a[:, 1:])
        if i != t.size or total != n:
            raise _FormatError("$Elements section length does not match its block counts")

    # -- $NodeData / $ElementData ------------------------------------------------------------
    def data_section(self, name: bytes, kind: str):
        nstr = self.int_line("the number of string tags")
        strings = [self.line().decode(errors="replace").strip().strip('"') for _ in range(nstr)]
        nreal = self.int_line("the number of real tags")
        for _ in range(nreal):
            self.line()
        nint = self.int_line("the number of integer tags")
        ints = [self.int_line("an integer tag") for _ in range(nint)]
        if nint < 3:
            raise _FormatError(f"${name.decode()} needs 3 integer tags (time step, components, count)")
        ncomp, nent = ints[1], ints[2]
        if ncomp < 1 or nent < 0:
            raise _FormatError(f"${name.decode()} has {ncomp} components and {nent} entries")
        if self.binary:
            rec = self.frombuffer([("tag", self.e + "i4"), ("val", self.e + "f8", (ncomp,))], nent)
            tags, vals = rec["tag"].astype(np.int64), np.array(rec["val"], np.float64).reshape(nent, ncomp)
            self.end(name)
        else:
            t = _fromstring(self.body(name), np.float64)
            if t.size != nent * (1 + ncomp):
                raise _FormatError(f"${name.decode()} holds {t.size} numbers, expected {nent} x {1 + ncomp}")
            t = t.reshape(nent, 1 + ncomp)
            tags, vals = t[:, 0].astype(np.int64), t[:, 1:]
        label = strings[0] if strings and strings[0] else f"{kind}_data_{len(self.data)}"
        self.data.append((kind, label, tags, vals))

    # -- assembly ----------------------------------------------------------------------------
    def result(self) -> tuple[Mesh, dict]:
        node_map = _IdMap(self.node_ids)
        parts = {}
        for etype, blocks in self.elems.items():
            nn = _NODES_PER_TYPE[etype]
            ids, tags, conn = blocks.concat(nn)
            order = _sort_by_id(ids, "element")
            if order is not None:
                ids, tags, conn = ids[order], tags[order], conn[order]
            idx = node_map(conn.ravel()).reshape(conn.shape)
            if np.any(idx < 0):
                bad = conn[idx < 0][0]
                raise _FormatError(f"an element refers to node id {int(bad)}, which is not in $Nodes")
            parts[etype] = (ids, tags, idx)
        if self.n_other:
            logger.debug("ignored %d elements that are neither triangles nor tetrahedra", self.n_other)
        tri_ids, tri_tags, tris = parts[_TRI]
        tet_ids, tet_tags, tets = parts[_TET]
        for what, a in (("tetrahedron", tet_tags), ("triangle", tri_tags)):
            if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
                raise _FormatError(f"a {what} tag is outside the 32-bit integer range")
        if self.nodes.size and not np.all(np.isfinite(self.nodes)):
            logger.warning("mesh file has non-finite node coordinates")
        mesh = Mesh(nodes=self.nodes, tets=tets, tet_tags=tet_tags, tris=tris, tri_tags=tri_tags)

        fields = {"node": {}, "element": {}, "tri_element": {}}
        tet_map, tri_map = _IdMap(tet_ids), _IdMap(tri_ids)
        for kind, label, tags, vals in self.data:
            if kind == "node":
                targets = [("node", node_map(tags), mesh.n_nodes)]
                if not (targets[0][1] >= 0).all():
                    logger.warning("$NodeData %r refers to node ids that are not in the mesh; ignored them", label)
            else:
                targets = [("element", tet_map(tags), len(tets)), ("tri_element", tri_map(tags), len(tris))]
            for key, idx, size in targets:
                ok = idx >= 0
                if not ok.any():
                    continue
                out = np.full((size, vals.shape[1]), np.nan)
                out[idx[ok]] = vals[ok]
                if out.shape[1] == 1:
                    out = out[:, 0]
                if label in fields[key]:
                    logger.debug("field %r appears more than once; keeping the last", label)
                fields[key][label] = out
        return mesh, fields


#: what numpy / struct raise on malformed input that slipped past the explicit checks
_RAW_ERRORS = (
    ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, UnicodeDecodeError, MemoryError,
)  # fmt: skip


def read_msh(path) -> tuple[Mesh, dict]:
    """Read a Gmsh MSH 2.2 / 4.1 file (ASCII or binary, optionally gzipped).

    Returns
    -------
    mesh : Mesh
        Nodes, tetrahedra and triangles with their tags (see module docstring).
    fields : dict
        ``{"node": {name: array}, "element": {name: array over tets},
        "tri_element": {name: array over triangles}}``.

    Raises
    ------
    MeshFileNotFoundError
        The file does not exist (also a ``FileNotFoundError``).
    MeshError
        The file is not a readable MSH file.
    """
    path = Path(path)
    raw = _open_bytes(path)
    p = _Parser(raw)
    try:
        p.parse()
        mesh, fields = p.result()
    except (_FormatError, MeshError) as exc:
        where = f"section ${p.section}" if p.section else "linking elements to nodes"
        raise MeshError(
            f"{path}: not a readable Gmsh MSH file: {exc} ({where}); re-export the mesh from Gmsh"
        ) from None
    except _RAW_ERRORS as exc:
        raise MeshError(
            f"{path}: not a readable Gmsh MSH file ({type(exc).__name__}: {exc}; section ${p.section or '-'}); "
            "re-export the mesh from Gmsh"
        ) from None
    logger.debug("read %s: %r", path, mesh)
    return mesh, fields


# ---------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------
def checked_fields(data, rows: int, what: str) -> dict[str, np.ndarray]:
    """``name -> float64 array`` with ``rows`` rows (1 or 3 columns); a clear error naming ``what`` otherwise."""
    out = {}
    for name, arr in (data or {}).items():
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[0] != rows or a.shape[1] < 1:
            raise MeshError(
                f"{what} {name!r} has shape {np.shape(arr)}; expected ({rows},) or ({rows}, k) "
                f"(one row per {'node' if what == 'node_data' else 'tetrahedron'})"
            )
        clean = str(name).replace('"', "'").replace("\n", " ")
        out[clean] = np.ascontiguousarray(a)
    return out


def _fmt_rows(first_col: np.ndarray, rest: np.ndarray, int_rest: bool) -> bytes:
    """ASCII lines ``id v1 v2 ...`` (ints as %d, reals with round-trip precision)."""
    n, k = rest.shape
    if n == 0:
        return b""
    if int_rest:
        table = np.column_stack([first_col.astype(np.int64), rest.astype(np.int64)])
        line = " ".join(["%d"] * (k + 1)) + "\n"
    else:
        table = np.column_stack([first_col.astype(np.float64), rest.astype(np.float64)])
        line = "%d" + " %r" * k + "\n"
    return ((line * n) % tuple(table.ravel().tolist())).encode("ascii")


_ROWS_PER_WRITE = 1 << 16  # binary blocks are written in pieces of this many rows (a few MB)


class _Writer:
    """Streams sections straight to an open file, so at most one field's bytes are in memory."""

    def __init__(self, mesh: Mesh, binary: bool, version: int, fh):
        self.m = mesh
        self.binary = binary
        self.v = version
        self.fh = fh

    def w(self, b):
        if isinstance(b, np.ndarray):  # raw array bytes, written without an extra copy
            self.fh.write(memoryview(np.ascontiguousarray(b)).cast("B"))
        else:
            self.fh.write(b if isinstance(b, bytes) else b.encode("ascii"))

    def header(self):
        self.w(f"$MeshFormat\n{'2.2' if self.v == 2 else '4.1'} {int(self.binary)} 8\n")
        if self.binary:
            self.w(struct.pack("<i", 1) + b"\n")
        self.w("$EndMeshFormat\n")

    # -- MSH 2.2 -------------------------------------------------------------------------
    def mesh2(self):
        m = self.m
        n = m.n_nodes
        self.w(f"$Nodes\n{n}\n")
        ids = np.arange(1, n + 1)
        if self.binary:
            rec = np.empty(n, [("id", "<i4"), ("xyz", "<f8", 3)])
            rec["id"], rec["xyz"] = ids, m.nodes
            self.w(rec)
            self.w(b"\n")
        else:
            self.w(_fmt_rows(ids, m.nodes, False))
        self.w("$EndNodes\n")
        k, nt = len(m.tris), m.n_tets
        self.w(f"$Elements\n{k + nt}\n")
        start = 1
        for etype, conn, tags in ((_TRI, m.tris, m.tri_tags), (_TET, m.tets, m.tet_tags)):
            cnt = len(conn)
            if cnt == 0:
                continue
            if self.binary:
                body = np.empty((cnt, 3 + conn.shape[1]), "<i4")
                body[:, 0] = np.arange(start, start + cnt)
                body[:, 1] = tags
                body[:, 2] = tags
                np.add(conn, 1, out=body[:, 3:])
                self.w(np.array([etype, cnt, 2], "<i4").tobytes())
                self.w(body)
            else:
                cols = np.empty((cnt, 4 + conn.shape[1]), np.int64)
                cols[:, 0] = etype
                cols[:, 1] = 2
                cols[:, 2] = tags
                cols[:, 3] = tags
                np.add(conn, 1, out=cols[:, 4:])
                self.w(_fmt_rows(np.arange(start, start + cnt), cols, True))
            start += cnt
        if self.binary:
            self.w("\n")
        self.w("$EndElements\n")

    # -- MSH 4.1 -------------------------------------------------------------------------
    def _groups(self):
        """[(dim, tag, etype, element ids, conn)] one block per (dim, tag)."""
        m = self.m
        out = []
        start = 1
        for etype, conn, tags in ((_TRI, m.tris, m.tri_tags), (_TET, m.tets, m.tet_tags)):
            eids = np.arange(start, start + len(conn))
            start += len(conn)
            for t in np.unique(tags):
                sel = np.flatnonzero(tags == t)
                out.append((_DIM_OF_TYPE[etype], int(t), etype, eids[sel], conn[sel]))
        return out

    def mesh4(self):
        m = self.m
        groups = self._groups()
        surf = [g for g in groups if g[0] == 2]
        vol = [g for g in groups if g[0] == 3]
        # $Entities: one entity per tag, physical tag = entity tag
        self.w("$Entities\n")
        ent = []
        for dim, tag, _, _, conn in surf + vol:
            used = np.zeros(m.n_nodes, bool)
            used[conn.ravel()] = True
            xyz = m.nodes[used]
            ent.append((dim, tag, xyz.min(axis=0), xyz.max(axis=0)))
        if self.binary:
            b = [struct.pack("<4Q", 0, 0, len(surf), len(vol))]
            for _dim, tag, lo, hi in ent:
                b.append(struct.pack("<i6dQiQ", tag, *lo, *hi, 1, tag, 0))
            self.w(b"".join(b) + b"\n")
        else:
            lines = [f"0 0 {len(surf)} {len(vol)}"]
            for _dim, tag, lo, hi in ent:
                box = " ".join(repr(float(v)) for v in (*lo, *hi))
                lines.append(f"{tag} {box} 1 {tag} 0")
            self.w("\n".join(lines) + "\n")
        self.w("$EndEntities\n")
        # $Nodes: one block on the first volume entity (or first surface)
        n = m.n_nodes
        hdim, htag = (3, vol[0][1]) if vol else ((2, surf[0][1]) if surf else (3, 1))
        ids = np.arange(1, n + 1)
        self.w("$Nodes\n")
        if self.binary:
            self.w(
                struct.pack("<4Q", 1, n, 1 if n else 0, n)
                + struct.pack("<iiiQ", hdim, htag, 0, n)
            )
            self.w(ids.astype("<u8"))
            self.w(m.nodes.astype("<f8", copy=False))
            self.w(b"\n")
        else:
            self.w(f"1 {n} {1 if n else 0} {n}\n{hdim} {htag} 0 {n}\n")
            self.w("\n".join(map(str, ids.tolist())) + ("\n" if n else ""))
            if n:
                self.w((("%r %r %r\n" * n) % tuple(m.nodes.ravel().tolist())).encode("ascii"))
        self.w("$EndNodes\n")
        total = len(m.tris) + m.n_tets
        self.w("$Elements\n")
        if self.binary:
            self.w(struct.pack("<4Q", len(groups), total, 1 if total else 0, total))
            for dim, tag, etype, eids, conn in groups:
                self.w(struct.pack("<iiiQ", dim, tag, etype, len(eids)))
                for s in range(0, len(eids), _ROWS_PER_WRITE):  # bounded temporaries
                    body = np.empty((len(eids[s:s + _ROWS_PER_WRITE]), 1 + conn.shape[1]), "<u8")
                    body[:, 0] = eids[s:s + _ROWS_PER_WRITE]
                    np.add(conn[s:s + _ROWS_PER_WRITE], 1, out=body[:, 1:], casting="unsafe")
                    self.w(body)
            self.w(b"\n")
        else:
            self.w(f"{len(groups)} {total} {1 if total else 0} {total}\n")
            for dim, tag, etype, eids, conn in groups:
                self.w(f"{dim} {tag} {etype} {len(eids)}\n")
                self.w(_fmt_rows(eids, conn.astype(np.int64) + 1, True))
        self.w("$EndElements\n")

    # -- data --------------------------------------------------------------------------------
    def data(self, section: str, name: str, parts):
        """One data section from ``[(ids, values), ...]`` parts written back to back."""
        n = sum(len(ids) for ids, _ in parts)
        k = parts[0][1].shape[1]
        self.w(f'${section}\n1\n"{name}"\n1\n0.0\n3\n0\n{k}\n{n}\n')
        for ids, vals in parts:
            if self.binary:
                for s in range(0, len(ids), _ROWS_PER_WRITE):  # bounded temporaries
                    rec = np.empty(len(ids[s:s + _ROWS_PER_WRITE]), [("id", "<i4"), ("v", "<f8", (k,))])
                    rec["id"], rec["v"] = ids[s:s + _ROWS_PER_WRITE], vals[s:s + _ROWS_PER_WRITE]
                    self.w(rec)
            else:
                self.w(_fmt_rows(ids, vals, False))
        if self.binary:
            self.w(b"\n")
        self.w(f"$End{section}\n")


def write_msh(path, mesh: Mesh, node_data=None, element_data=None, *, version="2.2", binary=True) -> Path:
    """Write a Gmsh MSH file (2.2 by default, or 4.1; binary by default, or ASCII).

    Triangles come first, then tetrahedra, with 1-based contiguous element ids; each
    element's physical and elementary (entity) tags both equal its stimsim tag.

    Parameters
    ----------
    path : str or Path
        Target file; a name ending in ``.gz`` is gzip-compressed (level 1, fast).  The file is
        written to a temporary file in the same folder and moved into place atomically.
    mesh : Mesh
    node_data : dict, optional
        ``{name: (n,) or (n, k) array}`` written as ``$NodeData`` (3 columns = Gmsh vector).
    element_data : dict, optional
        ``{name: (m,) or (m, k) array}`` with one row per tetrahedron, written as
        ``$ElementData`` over all elements; a triangle gets the value of an adjacent
        tetrahedron (0 where it has none).
    version : "2.2" or "4.1"
    binary : bool

    Returns the path written.
    """
    path = Path(path)
    v = str(version).strip()
    if v in ("2.2", "2", "22"):
        ver = 2
    elif v in ("4.1", "4", "41"):
        ver = 4
    else:
        raise MeshError(f"unsupported MSH version {version!r}; use '2.2' or '4.1'")
    if not isinstance(mesh, Mesh):
        raise MeshError(f"write_msh needs a stimsim Mesh, got {type(mesh).__name__}")
    nd = checked_fields(node_data, mesh.n_nodes, "node_data")
    ed = checked_fields(element_data, mesh.n_tets, "element_data")

    k = len(mesh.tris)
    owner = mesh.triangle_owner_tets() if (ed and k) else np.zeros(0, np.int64)

    def emit(fh):
        w = _Writer(mesh, bool(binary), ver, fh)
        w.header()
        if ver == 2:
            w.mesh2()
        else:
            w.mesh4()
        if nd:
            ids = np.arange(1, mesh.n_nodes + 1)
            for name, vals in nd.items():
                w.data("NodeData", name, [(ids, vals)])
        if ed:
            tri_ids = np.arange(1, k + 1)
            tet_ids = np.arange(k + 1, k + mesh.n_tets + 1)
            for name, vals in ed.items():
                tri_vals = np.where((owner >= 0)[:, None], vals[np.maximum(owner, 0)], 0.0) if k else vals[:0]
                w.data("ElementData", name, [(tri_ids, tri_vals), (tet_ids, vals)])

    gz = path.name.endswith(".gz")
    with atomic_file(path) as tmp:
        with open(tmp, "xb") as raw:
            if gz:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as f:
                    emit(f)
            else:
                emit(raw)
    logger.debug("wrote %s (MSH %s %s)", path, "2.2" if ver == 2 else "4.1", "binary" if binary else "ASCII")
    return path
