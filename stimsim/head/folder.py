"""Head folders (``stimsim head T1.nii.gz --out subj/``): layout, reading, MNI <-> subject.

Layout::

    subj/
      head.msh          tetrahedral head mesh (SimNIBS tags, mm, the T1's world frame)
      labels.nii.gz     tissue tags 1 WM, 2 GM, 3 CSF, 4 bone, 5 scalp, 6 eyes on the working grid
      positions.tsv     10-10 / 10-05 EEG positions and fiducials on this scalp (name x_mm y_mm z_mm ...)
      subject_to_mni.txt  4x4 affine, subject mm -> MNI152 mm (x_mni = A @ [x, y, z, 1])
      qc.png            tissue outlines over the T1 in three planes
      head.json         format "stimsim-head/1": versions, input hashes, volumes, stages, transform
      stimsim-cache/    per-stage results so a rerun resumes (safe to delete when done)

``head.json`` is written last: a folder without it is not (yet) a head folder.
:func:`read_head_folder` gives a :class:`HeadFolder` with the mesh path, the positions and the
transforms (:meth:`HeadFolder.mni_to_subject`, :meth:`HeadFolder.subject_to_mni`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MeshError

__all__ = ["HEAD_FORMAT", "HEAD_ENTRIES", "CACHE_NAME", "HeadFolder", "read_head_folder", "is_head_folder"]

HEAD_FORMAT = "stimsim-head/1"
CACHE_NAME = "stimsim-cache"
#: every entry a head folder may hold (``stimsim head --overwrite`` replaces only such folders)
HEAD_ENTRIES = frozenset({"head.msh", "labels.nii.gz", "positions.tsv", "subject_to_mni.txt", "qc.png",
                          "head.json", CACHE_NAME})


def is_head_folder(path) -> bool:
    """True if ``path`` is a complete head folder written by stimsim (its head.json, known entries only)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        info = json.loads((path / "head.json").read_text(encoding="utf-8"))
        names = {p.name for p in path.iterdir()}
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == HEAD_FORMAT and names <= HEAD_ENTRIES


@dataclass(frozen=True)
class HeadFolder:
    """A head folder read from disk (see the module docstring for its files)."""

    path: Path
    mesh_path: Path
    labels_path: Path
    positions_path: Path
    subject_to_mni_matrix: np.ndarray
    info: dict

    @property
    def positions(self) -> dict[str, np.ndarray]:
        """``{name: (3,) mm}`` EEG positions and fiducials on this head's scalp."""
        from .eeg import read_positions

        return read_positions(self.positions_path)

    def subject_to_mni(self, xyz) -> np.ndarray:
        """Subject points (k, 3) or (3,) mm -> MNI152 mm (affine)."""
        return _apply(self.subject_to_mni_matrix, xyz)

    def mni_to_subject(self, xyz) -> np.ndarray:
        """MNI152 points (k, 3) or (3,) mm -> this subject's mm (affine; not yet projected onto the scalp:
        use :func:`stimsim.head.eeg.project_to_scalp` for electrode positions)."""
        return _apply(np.linalg.inv(self.subject_to_mni_matrix), xyz)


def _apply(m: np.ndarray, xyz) -> np.ndarray:
    p = np.asarray(xyz, float)
    return p @ m[:3, :3].T + m[:3, 3]


def read_head_folder(path) -> HeadFolder:
    """Read a head folder made by ``stimsim head`` (:class:`MeshError` naming what is missing)."""
    path = Path(path)
    if not path.is_dir():
        raise MeshError(f"head folder {path} not found (make one with `stimsim head T1.nii.gz --out {path}`)")
    try:
        info = json.loads((path / "head.json").read_text(encoding="utf-8"))
    except OSError:
        raise MeshError(f"{path} is not a complete head folder: no head.json (did `stimsim head` finish?)") from None
    except ValueError as exc:
        raise MeshError(f"{path / 'head.json'} is not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != HEAD_FORMAT:
        raise MeshError(f"{path / 'head.json'}: format is {info.get('format') if isinstance(info, dict) else None!r}, "
                        f"expected {HEAD_FORMAT!r}")
    for name in ("head.msh", "positions.tsv", "labels.nii.gz"):
        if not (path / name).is_file():
            raise MeshError(f"head folder {path}: {name} is missing; rerun `stimsim head ... --out {path} --overwrite`")
    m = np.asarray(info.get("mni", {}).get("subject_to_mni"), float)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise MeshError(f"{path / 'head.json'}: mni.subject_to_mni is not a 4x4 matrix")
    return HeadFolder(path, path / "head.msh", path / "labels.nii.gz", path / "positions.tsv", m, info)
