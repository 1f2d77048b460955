"""Label maps: segmentation label values -> SimNIBS tissue tags.

A *label map* is a ``dict[int, int]`` from a label value in the segmentation volume to a
SimNIBS volume tag (1 WM, 2 GM, 3 CSF, 4 bone, 5 scalp, 6 eye balls, 7 compact bone,
8 spongy bone, 9 blood, 10 muscle, see :mod:`stimsim.conductivity`).  Tag ``0`` means
*not meshed* (background).

Built-in maps
-------------
``simnibs``  SimNIBS ``charm`` ``final_tissues.nii.gz``: its labels already are the tags
             (1..10), 0 is background.
``roast``    ROAST / SPM segmentation (``*_masks.nii``): 1 WM, 2 GM, 3 CSF, 4 bone,
             5 skin, 6 air.
``colin27``  the Colin27 segmentation shipped with MCX (``../shared/data/heads/colin27``):
             1 scalp, 2 skull, 3 CSF, 4 GM, 5 WM, 6 air cavities.

Air cavities
------------
Air (ROAST 6, Colin27 6) maps to tag 0: it is left out of the volume mesh and becomes a
hole (an insulating inner boundary, which is what its ~0 S/m conductivity means).  This
is what SimNIBS does (charm has no air tissue; air pockets are outside the mesh).  The
mesher keeps the head one connected piece (:mod:`stimsim.head.meshers`).

Custom maps (TSV)
-----------------
One line per label, tab or whitespace separated, ``#`` starts a comment, an optional
header line is skipped::

    # label  tag-or-name
    0   background
    1   scalp
    2   5
    17  gray_matter

The second column is a tag number or a tissue name understood by
:func:`stimsim.conductivity.resolve_tag` (``wm``, ``gm``, ``csf``, ``skull``, ``scalp``,
``eyes``...), or ``background`` / ``air`` / ``0`` / ``ignore`` for tag 0.
"""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np

from ..errors import MeshError, StimsimError
from ..tissues import LAYER_OF_TAG  # noqa: F401  (re-exported)

__all__ = ["LABEL_MAPS", "label_map", "read_label_map", "apply_label_map", "LAYER_OF_TAG"]

LABEL_MAPS: dict[str, dict[int, int]] = {
    "simnibs": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10},
    "roast": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 0},
    "colin27": {0: 0, 1: 5, 2: 4, 3: 3, 4: 2, 5: 1, 6: 0},
}
LABEL_MAPS["charm"] = LABEL_MAPS["simnibs"]
LABEL_MAPS["mcx"] = LABEL_MAPS["colin27"]

_BACKGROUND_WORDS = {"background", "bg", "air", "ignore", "none", "background_air", "air_cavities", "outside"}


class LabelMapError(MeshError):
    """A label map is unknown, unreadable or does not cover the labels of a volume."""


def read_label_map(path) -> dict[int, int]:
    """Read a ``label<TAB>tag`` or ``label<TAB>name`` TSV file (see module docstring)."""
    from ..conductivity import resolve_tag

    path = Path(path)
    if not path.is_file():
        raise LabelMapError(f"label map file not found: {path}")
    out: dict[int, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise LabelMapError(f"{path.name}:{lineno}: expected 'label<TAB>tag-or-name', got {raw!r}")
        try:
            label = int(parts[0])
        except ValueError:
            if not out:  # a header line
                continue
            raise LabelMapError(f"{path.name}:{lineno}: label {parts[0]!r} is not an integer") from None
        word = "_".join(parts[1:]).lower()
        if word in _BACKGROUND_WORDS:
            tag = 0
        else:
            try:
                tag = int(word) if re.fullmatch(r"-?[0-9]+", word) else resolve_tag(word, field="label map")
            except StimsimError as exc:
                raise LabelMapError(f"{path.name}:{lineno}: {exc}") from None
        if tag < 0:
            raise LabelMapError(f"{path.name}:{lineno}: tag must be >= 0, got {tag}")
        if label in out and out[label] != tag:
            raise LabelMapError(f"{path.name}:{lineno}: label {label} is mapped twice")
        out[label] = tag
    if not any(t > 0 for t in out.values()):
        raise LabelMapError(f"{path.name}: no label maps to a tissue (all background or empty file)")
    return out


def label_map(spec) -> dict[int, int]:
    """A label map from a built-in name (``simnibs``, ``roast``, ``colin27``), a TSV path or a dict."""
    if isinstance(spec, dict):
        return {int(k): int(v) for k, v in spec.items()}
    text = str(spec)
    if text.lower() in LABEL_MAPS:
        return dict(LABEL_MAPS[text.lower()])
    path = Path(text).expanduser()
    if path.suffix.lower() in (".tsv", ".txt", ".csv") or path.exists():
        return read_label_map(path)
    raise LabelMapError(
        f"--labels {text!r} is neither a built-in label map ({', '.join(sorted(LABEL_MAPS))}) nor a TSV file"
    )


def value_counts(values: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount`` of a non-negative integer array of any size, in slices: bincount casts its input
    to 64-bit integers, which for a 0.5 mm head of 114 M voxels is a 0.9 GB copy (and np.unique a
    5 s sort)."""
    flat = values.reshape(-1)
    out = np.zeros(max(int(minlength), 1), np.int64)
    step = 1 << 23
    for s in range(0, flat.size, step):
        part = flat[s:s + step]
        if part.dtype == np.uint64:  # numpy 1.x bincount refuses it (no safe cast to int64)
            part = part.astype(np.int64)
        c = np.bincount(part)
        if len(c) > len(out):
            out = np.concatenate([out, np.zeros(len(c) - len(out), np.int64)])
        out[:len(c)] += c
    return out


def apply_label_map(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Label volume -> tag volume (uint8); every label present must be in ``mapping``."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):  # bool, or whole numbers stored as floats
        labels = labels.astype(np.int64)
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0 or hi > 65535:
        present = np.unique(labels)
    else:
        present = np.flatnonzero(value_counts(labels)) if labels.size else np.zeros(1, np.int64)
    missing = [int(v) for v in present if int(v) not in mapping]
    if missing:
        shown = ", ".join(str(v) for v in missing[:12]) + (" ..." if len(missing) > 12 else "")
        raise LabelMapError(
            f"labels {shown} occur in the volume but not in the label map (map covers "
            f"{sorted(mapping)}); add them to a label TSV (tag 0 = leave out)"
        )
    if int(present.min()) < 0 or int(present.max()) > 65535:
        raise LabelMapError(f"label values must be in 0..65535, got {int(present.min())}..{int(present.max())}")
    lut = np.zeros(int(present.max()) + 1, np.uint8)
    for k, v in mapping.items():
        if 0 <= k < len(lut):
            if v > 255:
                raise LabelMapError(f"tag {v} for label {k} is too large (max 255)")
            lut[k] = v
    return lut[labels]
