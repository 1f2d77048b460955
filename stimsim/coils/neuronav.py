"""Coil positions from and to neuronavigation systems: Localite, Brainsight and ANT Visor 2.

Every reader returns :class:`NavPlacement` objects whose ``matrix`` is in stimsim's coil
convention (SimNIBS ``matsimnibs``: column 0 = x, column 1 = y = handle, column 2 = z = into
the head, column 3 = coil centre; mm) and in the head's frame; every writer takes such
matrices.  The conventions of the three systems (sources and a table: docs/neuronavigation.md):

* **Localite TMS Navigator** (XML: ``InstrumentMarkerList`` of ``InstrumentMarker/Marker/Matrix4D``,
  or ``TriggerMarkerList`` of ``TriggerMarker/Matrix4D``).  Coil axes: Localite x = stimsim z
  (into the head), Localite y = -stimsim y, Localite z = stimsim x, so
  ``M_stimsim = M_localite @ LOCALITE_AXES`` (the matrix is its own inverse).  Coordinates: the
  world frame of the loaded image, in RAS or LPS as the root's ``coordinateSpace`` says
  (LPS: x and y negated).  An untracked trigger (coil not seen by the camera) is stored as the
  identity matrix; it is read with ``tracked=False``.
* **Brainsight** (tab-separated text export: ``# Target Name`` and ``# Sample Name`` sections,
  columns ``Loc. X/Y/Z`` and ``m<i>n<j>`` = component j of axis i).  Coil axes: Brainsight x =
  -stimsim x, y = y, z = -stimsim z (out of the head): ``M_stimsim = M_bs @ BRAINSIGHT_AXES``.
  Coordinates: the header's ``# Coordinate system:``; ``NIfTI:Aligned`` and ``NIfTI:Scanner``
  (the T1's world frame) are read, the others (``Brainsight``, ``World``, ``NIfTI:MNI-152``, ...)
  refused with the fix (export again as NIfTI:Aligned).  Brainsight writes 3 decimals, so its
  rotations are re-orthonormalised (nearest rotation) when within 0.01 of one.
* **ANT Visor 2** (``.mrk``, JSON: ``TargetMarkers[].CoilTarget`` with ``CoilPose.
  RigidTransformMatrix4x4``).  The file states its conventions; stimsim reads
  ``CoilAxesConvention: simnibs`` (the same axes), ``PositionalUnit: mm`` and
  ``CoordinateSystem: ASSOCIATED_IMAGE``: the qform world of the image whose NIfTI quaternion,
  offset and pixdim are in ``Configuration.AssociatedImageInfo``.

The head meshes stimsim builds (``stimsim head``) are in the T1's world frame (its nibabel
``affine``: the sform when set, else the qform).  A navigator that loaded the same T1 therefore
needs no transform.  Give ``t1`` (the T1 the navigator loaded, a NIfTI path or nibabel image)
to check that, and to map files that use the T1's *other* xform (ANT: always the qform;
Brainsight: the xform whose code matches the exported name) into the head frame.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ProtocolError, check_option, shown

SYSTEMS = ("localite", "brainsight", "ant")
SUFFIXES = {"localite": ".xml", "brainsight": ".txt", "ant": ".mrk"}

#: right-multiplied: M_stimsim = M_localite @ LOCALITE_AXES (and back: it is its own inverse)
LOCALITE_AXES = np.array([[0.0, 0, 1, 0], [0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
#: right-multiplied: M_stimsim = M_brainsight @ BRAINSIGHT_AXES (its own inverse)
BRAINSIGHT_AXES = np.diag([-1.0, 1.0, -1.0, 1.0])
#: left-multiplied: RAS = LPS_TO_RAS @ LPS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: NIfTI xform codes (nifti1.h) and the names Brainsight gives the frames they define
_NIFTI_CODES = {"nifti:scanner": 1, "nifti:aligned": 2, "nifti:talairach": 3, "nifti:mni-152": 4}
_BRAINSIGHT_NAME = {1: "NIfTI:Scanner", 2: "NIfTI:Aligned", 3: "NIfTI:Talairach", 4: "NIfTI:MNI-152"}

#: navigator files are a few kB to a few MB (thousands of trigger markers); more is not one
MAX_FILE_BYTES = 64 * 1024 * 1024
#: rotations read with fewer decimals (Brainsight: 3) are snapped to the nearest rotation when
#: this close to one (max |R^T R - I|); farther is a corrupt file
ROTATION_TOLERANCE = 1e-2


@dataclass(frozen=True, eq=False)
class NavPlacement:
    """One coil position read from (or for) a navigator file.

    Attributes
    ----------
    name : the marker's name (Localite description, Brainsight target/sample name, ANT Name)
    matrix : (4, 4) coil-to-head matrix, stimsim/SimNIBS axes, mm, head frame
    kind : "instrument", "trigger", "target" or "sample"
    tracked : False for a Localite trigger recorded while the coil was not tracked
    didt_A_per_us, percent_mso : realised dI/dt and stimulator output of a Localite trigger, if stored
    """

    name: str
    matrix: np.ndarray
    kind: str = "target"
    tracked: bool = True
    didt_A_per_us: float | None = None
    percent_mso: float | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------- helpers


def _field_error(field_name: str, text: str) -> ProtocolError:
    return ProtocolError(f"{field_name}: {text}")


def _read_text(path: Path, field_name: str) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _field_error(field_name, f"file not found: {shown(str(path))}; check the path (relative paths "
                                       "are taken from the protocol's folder)") from None
    except OSError as err:
        raise _field_error(field_name, f"cannot read {shown(str(path))}: {err.strerror}") from None
    if not path.is_file():
        raise _field_error(field_name, f"{shown(str(path))} is not a file; give the navigator's exported file")
    if size > MAX_FILE_BYTES:
        raise _field_error(field_name, f"{shown(str(path))} has {size} bytes, more than any navigator file "
                                       f"({MAX_FILE_BYTES >> 20} MiB); give the exported marker file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _field_error(field_name, f"{shown(str(path))} is not UTF-8 text; give the navigator's exported "
                                       "XML, .txt or .mrk file") from None
    except OSError as err:
        raise _field_error(field_name, f"cannot read {shown(str(path))}: {err.strerror}") from None


def _detect_text(text: str) -> str | None:
    head = text.lstrip()[:4096]
    if head.startswith("<"):
        if re.search(r"<\s*(InstrumentMarkerList|TriggerMarkerList)\b", head):
            return "localite"
        return None
    if head.startswith("{"):
        return "ant" if '"TargetMarkers"' in text or '"CoilTarget"' in text else None
    if head.startswith("#") and re.search(r"^# (Target|Sample) Name\t", text, re.M):
        return "brainsight"
    return None


def detect_system(path, field_name: str = "file") -> str:
    """"localite", "brainsight" or "ant", from the file's content (not its name)."""
    path = Path(path)
    system = _detect_text(_read_text(path, field_name))
    if system is None:
        raise _field_error(field_name, f"{shown(str(path))} is not a Localite InstrumentMarker/TriggerMarker XML, "
                                       "a Brainsight .txt export or an ANT Visor 2 .mrk file")
    return system


def _as_rotation(m: np.ndarray, where: str) -> np.ndarray:
    """``m`` with its 3x3 block snapped to the nearest rotation (if within ROTATION_TOLERANCE)."""
    m = np.array(m, float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ProtocolError(f"{where}: the coil matrix is not a finite 4x4 matrix")
    r = m[:3, :3]
    dev = np.abs(r.T @ r - np.eye(3)).max()
    if dev > ROTATION_TOLERANCE or np.linalg.det(r) <= 0:
        raise ProtocolError(f"{where}: the coil axes are not orthonormal and right-handed (a corrupt or "
                            "hand-edited file?); export the marker again")
    if dev > 1e-12:
        u, _, vt = np.linalg.svd(r)
        m[:3, :3] = u @ vt
    m[3] = (0.0, 0.0, 0.0, 1.0)
    return m


# ----------------------------------------------------------------------------- T1 and frames


def load_t1(t1, field_name: str):
    """A nibabel image from a path or image (None stays None)."""
    if t1 is None:
        return None
    import nibabel as nib

    if hasattr(t1, "header") and hasattr(t1, "affine"):
        return t1
    path = Path(t1)
    if not path.is_file():
        raise _field_error(field_name, f"T1 not found: {shown(str(path))}; give the NIfTI the navigator loaded")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for a bad file
        raise _field_error(field_name, f"{shown(str(path))} is not a readable NIfTI ({type(err).__name__}); "
                                       "give the T1 the navigator loaded") from None


def _xforms(img) -> dict[str, tuple[np.ndarray, int]]:
    """The image's qform and sform with their codes, and its nibabel affine (the head frame)."""
    hdr = img.header
    q, qc = hdr.get_qform(coded=True)
    s, sc = hdr.get_sform(coded=True)
    return {"qform": (None if q is None else np.asarray(q, float), int(qc)),
            "sform": (None if s is None else np.asarray(s, float), int(sc)),
            "affine": (np.asarray(img.affine, float), 0)}


def _same(a, b, tol: float = 1e-3) -> bool:
    return a is not None and b is not None and np.allclose(a, b, atol=tol)


def _qform_from_info(info: dict, field_name: str) -> np.ndarray | None:
    """The qform an ANT ``AssociatedImageInfo`` describes (None if absent or all zero)."""
    import nibabel as nib

    try:
        quat = [float(v) for v in info["NIfTI_quatern"]]
        off = [float(v) for v in info["NIfTI_qoffset"]]
        pix = [float(v) for v in info["NIfTI_pixdim"]]
    except (KeyError, TypeError, ValueError):
        return None
    if len(quat) != 3 or len(off) != 3 or len(pix) != 4 or not all(map(math.isfinite, quat + off + pix)):
        raise _field_error(field_name, "AssociatedImageInfo has malformed NIfTI_quatern/qoffset/pixdim; "
                                       "export the markers again")
    if not any(pix[1:]):
        return None  # a template without image information
    hdr = nib.Nifti1Header()
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = quat
    hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"] = off
    pixdim = hdr["pixdim"]
    pixdim[:4] = pix
    hdr["pixdim"] = pixdim
    hdr["qform_code"] = 1
    return np.asarray(hdr.get_qform(), float)


def _ant_image_info(affine: np.ndarray) -> dict:
    """ANT ``AssociatedImageInfo`` (qform quaternion, offset, pixdim) of an affine."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_qform(np.asarray(affine, float), code=1)
    return {"NIfTI_quatern": [float(hdr["quatern_b"]), float(hdr["quatern_c"]), float(hdr["quatern_d"])],
            "NIfTI_qoffset": [float(hdr["qoffset_x"]), float(hdr["qoffset_y"]), float(hdr["qoffset_z"])],
            "NIfTI_pixdim": [float(v) for v in hdr["pixdim"][:4]]}


def _nav_to_head(system: str, frame: str, t1_img, field_name: str, ant_qform=None) -> np.ndarray:
    """4x4 map from the navigator file's world frame to the head frame (identity without a T1)."""
    if t1_img is None:
        return np.eye(4)
    xf = _xforms(t1_img)
    head = xf["affine"][0]
    if system == "ant":
        q = xf["qform"][0] if xf["qform"][1] > 0 else head
        if ant_qform is not None and not _same(ant_qform, q):
            raise _field_error(field_name, "the .mrk file's AssociatedImageInfo is not the given T1's qform: the "
                                           "markers were placed on another image; give that image as t1")
        return head @ np.linalg.inv(q)
    if system == "brainsight":
        code = _NIFTI_CODES[frame]
        for name in ("sform", "qform"):
            m, c = xf[name]
            if c == code and m is not None:
                return head @ np.linalg.inv(m)
        raise _field_error(field_name, f"the file is in {_BRAINSIGHT_NAME[code]} coordinates but the T1 has no "
                                       f"qform or sform with that code ({code}); export from Brainsight in the "
                                       "coordinate system of the T1's sform")
    # localite: the loaded image's world frame; which xform TMS Navigator reads when they differ
    # is not documented, so refuse to guess
    (q, qc), (s, sc) = xf["qform"], xf["sform"]
    if qc > 0 and sc > 0 and not _same(q, s):
        raise _field_error(field_name, "the T1's qform and sform differ, and which one Localite used is not "
                                       "known; make them equal (e.g. nibabel set_qform(img.get_sform())) and "
                                       "load that T1 in the navigator")
    return np.eye(4)


# ------------------------------------------------------------------------------------- readers


def _parse_xml(text: str, field_name: str):
    import xml.etree.ElementTree as ET

    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text[:65536], re.I):
        raise _field_error(field_name, "the XML declares a DOCTYPE or entities, which navigator files never do; "
                                       "give the exported InstrumentMarker/TriggerMarker file")
    try:
        return ET.fromstring(text)
    except ET.ParseError as err:
        raise _field_error(field_name, f"not well-formed XML ({err}); the file is truncated or corrupt, "
                                       "export it again") from None


def _matrix4d(elem, where: str) -> np.ndarray:
    if elem is None:
        raise ProtocolError(f"{where}: no Matrix4D element; export the markers again")
    try:
        return np.array([[float(elem.attrib[f"data{i}{j}"]) for j in range(4)] for i in range(4)])
    except KeyError as err:
        raise ProtocolError(f"{where}: Matrix4D lacks {err.args[0]}; the file is truncated, export it again") from None
    except ValueError:
        raise ProtocolError(f"{where}: Matrix4D holds a value that is not a number; export the file again") from None


def _float_or_none(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_localite(text: str, field_name: str, t1_img) -> list[NavPlacement]:
    root = _parse_xml(text, field_name)
    if root.tag not in ("InstrumentMarkerList", "TriggerMarkerList"):
        raise _field_error(field_name, f"root element <{shown(root.tag, 60)}> is not InstrumentMarkerList or "
                                       "TriggerMarkerList; give a Localite InstrumentMarker or TriggerMarkers file")
    space = (root.get("coordinateSpace") or "").upper()
    if space not in ("RAS", "LPS"):
        raise _field_error(field_name, f"coordinateSpace {shown(root.get('coordinateSpace'))} is not RAS or LPS "
                                       "(files from TMS Navigator before 3.0 lack it); export the markers again "
                                       "from a current TMS Navigator")
    to_head = _nav_to_head("localite", space, t1_img, field_name)
    flip = LPS_TO_RAS if space == "LPS" else np.eye(4)
    out = []
    trigger = root.tag == "TriggerMarkerList"
    for k, elem in enumerate(root.iter("TriggerMarker" if trigger else "InstrumentMarker")):
        where = f"{field_name}: marker {k}"
        if trigger:
            name, mat = elem.get("description") or "", elem.find("Matrix4D")
            values = {v.get("key"): v.get("response") for v in elem.iter("Value")}
            didt, mso = _float_or_none(values.get("valueA")), _float_or_none(values.get("amplitudeA"))
            extra = {"recording_time_ms": elem.get("recordingTime")}
        else:
            marker = elem.find("Marker")
            if marker is None:
                raise ProtocolError(f"{where}: InstrumentMarker without a Marker element; export the file again")
            name, mat = marker.get("description") or "", marker.find("Matrix4D")
            didt = mso = None
            extra = {"index": elem.get("index")}
        raw = _matrix4d(mat, where)
        tracked = not np.array_equal(raw, np.eye(4))
        m = to_head @ flip @ raw @ LOCALITE_AXES if tracked else raw @ LOCALITE_AXES
        out.append(NavPlacement(name, _as_rotation(m, where) if tracked else m,
                                "trigger" if trigger else "instrument", tracked,
                                didt if didt else None, mso, extra))
    return out


_BS_COLUMNS = ("Loc. X", "Loc. Y", "Loc. Z") + tuple(f"m{i}n{j}" for i in range(3) for j in range(3))


def _read_brainsight(text: str, field_name: str, t1_img) -> list[NavPlacement]:
    frame, section, columns, out = None, None, None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if body.lower().startswith("coordinate system:"):
                frame = body.split(":", 1)[1].strip()
            elif body.startswith("Target Name\t") or body.startswith("Sample Name\t"):
                section = "target" if body.startswith("Target") else "sample"
                columns = body.split("\t")
                missing = [c for c in _BS_COLUMNS if c not in columns]
                if missing:
                    raise _field_error(field_name, f"line {lineno}: the {section} header lacks {', '.join(missing)}; "
                                                   "export targets/samples with position and orientation")
            elif "\t" in body:
                section = None  # electrodes, landmarks...: not coil positions
            continue
        if section is None:
            continue
        cells = line.split("\t")
        if len(cells) < len(columns):
            raise _field_error(field_name, f"line {lineno}: {len(cells)} columns, the header has {len(columns)}; "
                                           "the file is truncated, export it again")
        row = dict(zip(columns, cells))
        try:
            v = {c: float(row[c]) for c in _BS_COLUMNS}
        except ValueError:
            raise _field_error(field_name, f"line {lineno}: a position or orientation value is not a number") from None
        m = np.eye(4)
        for i in range(3):
            m[:3, i] = [v[f"m{i}n{j}"] for j in range(3)]
        m[:3, 3] = v["Loc. X"], v["Loc. Y"], v["Loc. Z"]
        out.append(NavPlacement(cells[0], m, section))
    if frame is None:
        raise _field_error(field_name, "no '# Coordinate system:' header line; give Brainsight's exported .txt")
    key = frame.lower()
    if key not in ("nifti:aligned", "nifti:scanner"):
        raise _field_error(field_name, f"coordinate system {shown(frame)} is not supported; export from Brainsight "
                                       "with 'NIfTI:Aligned' (or 'NIfTI:Scanner') coordinates, the T1's world frame")
    to_head = _nav_to_head("brainsight", key, t1_img, field_name)
    return [NavPlacement(p.name, _as_rotation(to_head @ p.matrix @ BRAINSIGHT_AXES, f"{field_name}: {p.name!r}"),
                         p.kind) for p in out]


def _read_ant(text: str, field_name: str, t1_img) -> list[NavPlacement]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise _field_error(field_name, f"not valid JSON ({type(err).__name__}); the .mrk file is truncated or "
                                       "corrupt, export it again") from None
    targets = doc.get("TargetMarkers") if isinstance(doc, dict) else None
    if not isinstance(targets, list):
        raise _field_error(field_name, "no TargetMarkers list; give an ANT Visor 2 .mrk marker file")
    conf = doc.get("Configuration") if isinstance(doc.get("Configuration"), dict) else {}
    info = conf.get("AssociatedImageInfo")
    qform = _qform_from_info(info, field_name) if isinstance(info, dict) else None
    to_head = _nav_to_head("ant", "", t1_img, field_name, ant_qform=qform)
    out = []
    for k, t in enumerate(targets):
        ct = t.get("CoilTarget") if isinstance(t, dict) else None
        if not isinstance(ct, dict):
            continue  # other marker kinds (points, entry/target pairs) hold no coil pose
        where = f"{field_name}: marker {k}"
        for key, want in (("CoordinateSystem", "ASSOCIATED_IMAGE"), ("PositionalUnit", "mm"),
                          ("CoilAxesConvention", "simnibs")):
            if ct.get(key) != want:
                raise ProtocolError(f"{where}: {key} is {shown(ct.get(key))}, stimsim reads {want!r} only; "
                                    "export the markers for SimNIBS from Visor 2")
        try:
            m = np.array(ct["CoilPose"]["RigidTransformMatrix4x4"], float)
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"{where}: no CoilPose.RigidTransformMatrix4x4 of numbers; export the file again") \
                from None
        coil = ct.get("CoilInfo") if isinstance(ct.get("CoilInfo"), dict) else {}
        out.append(NavPlacement(str(ct.get("Name") or ""), _as_rotation(to_head @ m, where), "target",
                                extra={"coil_id": coil.get("Id"), "coil_type": coil.get("Type")}))
    return out


_READERS = {"localite": _read_localite, "brainsight": _read_brainsight, "ant": _read_ant}


def read_placements(path, system: str | None = None, *, t1=None, field_name: str = "file") -> list[NavPlacement]:
    """Coil positions in a navigator file, in file order (Brainsight: targets, then samples).

    ``system``: "localite", "brainsight" or "ant"; None detects it from the content.
    ``t1``: the T1 the navigator loaded (NIfTI path or nibabel image), to check and map frames.
    ``field_name`` prefixes every error (e.g. ``placement.localite``).
    """
    path = Path(path)
    text = _read_text(path, field_name)
    found = _detect_text(text)
    if system is None:
        if found is None:
            raise _field_error(field_name, f"{shown(str(path))} is not a Localite InstrumentMarker/TriggerMarker "
                                           "XML, a Brainsight .txt export or an ANT Visor 2 .mrk file")
        system = found
    check_option(f"{field_name} system", system, SYSTEMS)
    if found is not None and found != system:
        raise _field_error(field_name, f"{shown(str(path))} is a {found} file, not {system}; give it as {found}: "
                                       f"{shown(str(path))}")
    t1_img = load_t1(t1, field_name.rsplit(".", 1)[0] + ".t1" if "." in field_name else "t1")
    marks = _READERS[system](text, field_name, t1_img)
    if not marks:
        raise _field_error(field_name, f"{shown(str(path))} holds no coil positions; set a marker in the navigator "
                                       "and export again")
    return marks


def select_marker(placements: list[NavPlacement], marker, field_name: str = "marker") -> NavPlacement:
    """The marker ``marker`` names: an index (0 = first in the file) or a name; None if only one."""
    n = len(placements)
    names = [p.name for p in placements]
    listing = ", ".join(f"{k}: {shown(nm, 40)}" for k, nm in enumerate(names[:10])) + (" ..." if n > 10 else "")
    if marker is None:
        if n != 1:
            raise _field_error(field_name, f"the file holds {n} markers ({listing}); choose one with marker: "
                                           "<index from 0> or marker: <name>")
        chosen = placements[0]
    elif isinstance(marker, (int, np.integer)) and not isinstance(marker, bool):
        if not 0 <= marker < n:
            raise _field_error(field_name, f"marker {int(marker)} does not exist: the file holds {n} marker"
                                           f"{'s' if n != 1 else ''}, numbered from 0 ({listing})")
        chosen = placements[int(marker)]
    else:
        hits = [p for p in placements if p.name == str(marker)]
        if len(hits) != 1:
            why = "no marker is" if not hits else f"{len(hits)} markers are"
            raise _field_error(field_name, f"{why} named {shown(str(marker))}; give an index from 0 instead "
                                           f"({listing})")
        chosen = hits[0]
    if not chosen.tracked:
        raise _field_error(field_name, f"marker {shown(marker)} was recorded while the coil was not tracked (no "
                                       "position); choose another marker")
    return chosen


# ------------------------------------------------------------------------------------- writers


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same double


def _localite_text(placements, t1_info) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<InstrumentMarkerList coordinateSpace="RAS">',
             "    <!--written by stimsim; coil axes in Localite convention, RAS world coordinates of the T1-->"]
    from xml.sax.saxutils import quoteattr

    for k, (name, m) in enumerate(placements):
        loc = m @ LOCALITE_AXES
        data = " ".join(f'data{i}{j}="{_fmt(loc[i, j])}"' for i in range(4) for j in range(4))
        lines += [f'    <InstrumentMarker alwaysVisible="false" index="{k}" selected="false">',
                  f'        <Marker additionalInformation="" color="#ff0000" description={quoteattr(name)} set="true">',
                  f"            <Matrix4D {data}/>",
                  "        </Marker>", "    </InstrumentMarker>"]
    lines.append("</InstrumentMarkerList>")
    return "\n".join(lines) + "\n"


def _clean_name(name: str) -> str:
    return re.sub(r"[\t\r\n]", " ", name)


def _brainsight_text(placements, frame_name: str) -> str:
    from .. import __version__

    lines = ["# Version: 12", f"# Coordinate system: {frame_name}", f"# Created by: stimsim {__version__}",
             "# Units: millimetres, degrees, milliseconds, and microvolts", "# Encoding: UTF-8",
             "# Notes: Each column is delimited by a tab. Each value within a column is delimited by a semicolon.",
             "# Target Name\t" + "\t".join(_BS_COLUMNS)]
    for name, m in placements:
        bs = m @ BRAINSIGHT_AXES
        vals = list(bs[:3, 3]) + [bs[j, i] for i in range(3) for j in range(3)]
        lines.append("\t".join([_clean_name(name)] + [_fmt(v) for v in vals]))
    return "\n".join(lines) + "\n"


def _ant_text(placements, info) -> str:
    from .. import __version__

    doc = {"Configuration": {"SourceInfo": {"AppName": "stimsim", "AppVersion": __version__},
                             "AssociatedImageInfo": info or {"NIfTI_quatern": [0.0, 0.0, 0.0],
                                                             "NIfTI_qoffset": [0.0, 0.0, 0.0],
                                                             "NIfTI_pixdim": [0.0, 0.0, 0.0, 0.0]}},
           "TargetMarkers": [{"CoilTarget": {"Name": name, "CoordinateSystem": "ASSOCIATED_IMAGE",
                                             "PositionalUnit": "mm", "CoilAxesConvention": "simnibs",
                                             "CoilInfo": {"Type": "", "Id": ""},
                                             "CoilPose": {"RigidTransformMatrix4x4": np.asarray(m).tolist()}}}
                             for name, m in placements]}
    return json.dumps(doc, indent=2) + "\n"


def write_placements(path, placements, system: str, *, t1=None, overwrite: bool = True) -> Path:
    """Write coil positions ((name, 4x4 head-frame matrix) pairs or NavPlacements) for a navigator.

    Written atomically (a temporary file in the same folder, then a rename).  An existing file is
    replaced only if it is already a file of the same system (a previous export) and
    ``overwrite`` is true; anything else there is refused.  ``t1``: the T1 the navigator will
    load (path, nibabel image or a 4x4 affine): ANT files then carry its qform, Brainsight files
    name the frame of its sform code, and the matrices are mapped from the head frame into the
    frame the navigator reads (the inverse of :func:`read_placements`).
    """
    from ..outputs import OutputError, atomic_file

    check_option("system", system, SYSTEMS)
    path = Path(path)
    items = []
    for p in placements:
        name, m = (p.name, p.matrix) if isinstance(p, NavPlacement) else p
        items.append((str(name), _as_rotation(m, f"{system} export: {shown(str(name), 40)}")))
    if not items:
        raise ProtocolError(f"{system} export: no coil positions to write")
    if path.exists() or path.is_symlink():
        from ..outputs import written_by_stimsim

        # stimsim replaces only its own files: never a session file the navigator wrote
        if not written_by_stimsim(path) or not overwrite:
            raise OutputError(f"{path} exists and was not written by stimsim; choose another name (stimsim "
                              "replaces only its own exports)" if overwrite else f"{path} exists; choose another name")
    affine = None
    img = None
    if t1 is not None:
        arr = np.asarray(t1, float) if isinstance(t1, (list, tuple, np.ndarray)) else None
        if arr is not None:
            if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
                raise ProtocolError(f"{system} export: t1_affine must be a finite 4x4 matrix")
            affine = arr
        else:
            img = load_t1(t1, "t1")
    to_nav, frame_name, info = np.eye(4), "NIfTI:Aligned", None
    if img is not None:
        xf = _xforms(img)
        if system == "ant":
            q = xf["qform"][0] if xf["qform"][1] > 0 else xf["affine"][0]
            to_nav, info = np.linalg.inv(_nav_to_head("ant", "", img, "t1")), _ant_image_info(q)
        elif system == "brainsight":
            code = xf["sform"][1] if xf["sform"][1] > 0 else xf["qform"][1]
            frame_name = _BRAINSIGHT_NAME[1] if code == 1 else _BRAINSIGHT_NAME[2]
            to_nav = np.linalg.inv(_nav_to_head("brainsight", frame_name.lower(), img, "t1"))
        else:
            _nav_to_head("localite", "RAS", img, "t1")  # refuses a T1 whose qform and sform differ
    elif affine is not None and system == "ant":
        info = _ant_image_info(affine)
    items = [(n, to_nav @ m) for n, m in items]
    text = {"localite": lambda: _localite_text(items, None), "brainsight": lambda: _brainsight_text(items, frame_name),
            "ant": lambda: _ant_text(items, info)}[system]()
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def export_placement(matrix_mm, path, *, system: str, t1_affine=None, name: str = "stimsim") -> Path:
    """Write one coil position (a 4x4 coil-to-head matrix, mm) as a navigator file.

    ``system``: "localite" (InstrumentMarker XML), "brainsight" (.txt target) or "ant" (.mrk).
    ``t1_affine``: the T1 the navigator loads (NIfTI path or 4x4 affine), optional; see
    :func:`write_placements`.  An existing file is replaced only if stimsim wrote it (a re-export);
    any other existing file is refused (:class:`~stimsim.outputs.OutputError`).
    """
    return write_placements(path, [(name, np.asarray(matrix_mm, float))], system, t1=t1_affine)


def navigator_matrix(path, *, system: str | None = None, marker=None, t1=None, field_name: str = "file") -> np.ndarray:
    """The 4x4 head-frame matrix (stimsim axes, mm) of one marker of a navigator file."""
    return select_marker(read_placements(path, system, t1=t1, field_name=field_name), marker,
                         field_name.rsplit(".", 1)[0] + ".marker" if "." in field_name else "marker").matrix
