"""Label volume -> tetrahedral head mesh: :func:`make_head_mesh` (``stimsim mesh``).

Two meshers share the input checks (integer 3-D labels, label map, an affine without shear, lesion
on the same grid, tissues that nest), the label cleaning, the cache (keyed by tags, affine, method, mesher version
and options, element size and lesion) and the world transform:

* ``method="surface"`` (:mod:`stimsim.head.meshers.surface`; needs ``tetgen`` and
  ``scikit-image``): nested smoothed signed-distance surfaces + TetGen.  Colin27 at the default
  8 mm: every tissue within 1.8 % of its voxel volume, one piece (size, time and memory:
  docs/meshing.md).
* ``method="lattice"`` (this module; pip wheels only: numpy, scipy, nibabel): described below.
  Thin layers cost volume accuracy: Colin27 at 3.2 mm has CSF +29 %, GM -10 %.
* ``method="auto"`` (default): surface when it can, else lattice with a logged warning.

The lattice method's steps (BCC lattice, centroid tags, closed layers, snapping) and the
measurements behind the choice of the two meshers: docs/meshing.md.

Units: mm.  The mesh is in the world frame of the NIfTI affine (rotated, oblique voxel axes are
meshed as they are; left-handed affines are fine: the tetrahedra are re-oriented; sheared ones are
refused).

Checks (both methods, docs/mesh_checks.md): :func:`check_meshable` refuses label volumes too
small for the element size before meshing, :func:`check_one_head` two heads in one volume,
:func:`check_layers_nest` labels whose tissues do not nest as the label map reads them; after it, :func:`quality_summary` and
:func:`assess_quality` refuse a mesh that lost a tissue, misses a tissue's voxel volume by more
than 50 % or has flat / inverted tetrahedra (nothing is cached then), and log warnings with the
numbers for volumes off by more than 5 %, dihedral angles below 5 deg and radius ratios below 0.1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..._hugepages import hugepage_advice_off
from ..._logging import logger
from ...cache import cache_dir
from ...errors import MeshError
from ...mesh.model import Mesh
from ...tissues import LAYER_FILL_TAG, layer_lut
from ..labels import apply_label_map, label_map, value_counts
from .lattice import DEFAULT_ELEMENT_SIZE_MM, MESHER_VERSION, lattice_tets
from .topology import (ISLAND_FRACTION, ISLAND_KEPT_MM3, ISLAND_WARN_MM3, compact_nodes, distance_to_background,
                       face_components, fill_holes, label_pieces, largest_piece, on_threads, orient_tets,
                       signed_volumes, tet_neighbors)

__all__ = ["make_head_mesh", "load_label_volume", "tissue_connectivity", "quality_summary", "resolve_method",
           "check_layers_nest", "check_one_head", "check_meshable", "volume_check", "assess_quality", "expected_tags", "print_summary",
           "default_element_size", "cache_dir", "METHODS", "DEFAULT_ELEMENT_SIZE_MM",
           "MESHER_VERSION", "make_surface_head_mesh", "air_cavities"]



# ----------------------------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------------------------
def _nib():
    try:
        import nibabel
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise MeshError(f"reading NIfTI label volumes needs the 'nibabel' package ({exc}); "
                        "pip install 'stimsim[head]'") from None
    return nibabel


def _check_affine(affine: np.ndarray, what: str) -> np.ndarray:
    affine = np.asarray(affine, float)
    if affine.shape != (4, 4):
        raise MeshError(f"{what}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if not np.isfinite(affine).all():
        raise MeshError(f"{what}: affine has {int(np.count_nonzero(~np.isfinite(affine)))} NaN or infinite "
                        "entries; fix the image header (its sform / qform)")
    a = affine[:3, :3]
    zooms = np.linalg.norm(a, axis=0)
    if (zooms <= 0).any():
        raise MeshError(f"{what}: affine has a zero voxel size ({zooms.tolist()})")
    # rotated voxel axes (an oblique scan) are meshed as they are: the mesher works in voxel index x
    # voxel size, which a rotation (or reflection) maps to the world without changing a length or a
    # volume.  A shear does change them: its voxels are not boxes
    unit = a / zooms
    gram = unit.T @ unit
    if not np.allclose(gram, np.eye(3), atol=1e-4):
        angles = np.degrees(np.arccos(np.clip(gram[np.triu_indices(3, 1)], -1, 1)))
        raise MeshError(f"{what}: the affine shears the voxel grid (its axes meet at "
                        f"{', '.join(f'{x:.2f}' for x in angles)} deg, not 90); reslice the labels to a grid "
                        "with square axes first (nearest neighbour), e.g. with nibabel.processing or FSL")
    return affine


def load_label_volume(labels, affine=None, what: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """A 3-D integer label array and its affine from a NIfTI path or ``(array, affine)``."""
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise MeshError(f"{what}: file not found: {path}")
        try:
            img = _nib().load(str(path))
            data = np.asanyarray(img.dataobj)
        except MeshError:
            raise
        except Exception as exc:
            raise MeshError(f"{what}: cannot read {path.name} as NIfTI ({exc})") from None
        affine = img.affine if affine is None else affine
    else:
        data = np.asanyarray(labels)
        if affine is None:
            affine = np.eye(4)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MeshError(f"{what}: need a 3-D volume, got shape {data.shape}"
                        + (" (a 4-D image: give one volume)" if data.ndim == 4 else ""))
    if data.size == 0:
        raise MeshError(f"{what}: the volume is empty (shape {data.shape})")
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        if not np.isfinite(data).all() or not np.all(data == np.round(data)):
            if what == "lesion":
                raise MeshError(f"lesion: values are not 0 / 1 (dtype {data.dtype}, "
                                f"{'NaN or infinite values' if not np.isfinite(data).all() else 'fractions'}); "
                                "a lesion mask marks voxels: threshold a probability map first (e.g. > 0.5) "
                                "and save it as integers")
            raise MeshError(f"{what}: values are not integers (dtype {data.dtype}); a label volume "
                            "holds integer tissue labels, not probabilities or intensities")
        data = np.round(data)
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.view(np.uint8)
    elif not np.issubdtype(data.dtype, np.integer):  # whole numbers stored as floats
        small = data.size == 0 or (float(data.min()) >= -2**31 and float(data.max()) < 2**31)
        data = data.astype(np.int32 if small else np.int64)
    return data, _check_affine(affine, what)


# ----------------------------------------------------------------------------------------------
# caching
# ----------------------------------------------------------------------------------------------
def _cache_key(tags: np.ndarray, affine: np.ndarray, h: float, extra: str) -> str:
    """Hash of the tag volume, affine, element size and ``extra`` (method, mesher version,
    lesion, options)."""
    d = hashlib.sha256()
    d.update(str(tags.shape).encode())
    d.update(np.ascontiguousarray(tags, np.uint8).tobytes())
    d.update(np.round(affine, 6).tobytes())
    d.update(f"{h:.6g}|{extra}".encode())
    return d.hexdigest()[:24]


def _cache_read(cfile: Path | None) -> Mesh | None:
    """The cached mesh, or None (missing, or unreadable: it is rebuilt then)."""
    if cfile is None or not cfile.is_file():
        return None
    from ...mesh import read_mesh

    try:
        mesh, _ = read_mesh(cfile)
    except Exception:  # a corrupt cache entry is rebuilt
        logger.warning("ignoring unreadable cache file %s", cfile)
        return None
    logger.info("head mesh from cache %s", cfile)
    return mesh


def _report_path(cfile: Path) -> Path:
    """The mesher's report kept next to the cached mesh ``cfile``."""
    return cfile.with_name(cfile.stem + ".mesher.json")


def _int_keys(d: dict) -> dict:
    # (JSON keys are strings: the report's tags, layers and tissue tags are ints again)
    return {int(k) if re.fullmatch(r"-?[0-9]+", k) else k: v for k, v in d.items()}


def _cached_report(cfile: Path) -> dict:
    """The mesher's report (``HeadMeshInfo.mesher``) of the mesh cached in ``cfile``, its warnings said
    again; {} where there is none (written by an older stimsim, or unreadable)."""
    import json

    try:
        report = json.loads(_report_path(cfile).read_text(encoding="utf-8"), object_hook=_int_keys)
    except (OSError, ValueError):
        return {}
    if not isinstance(report, dict):
        return {}
    for message in report.get("warnings", ()):
        logger.warning("%s (the cached mesh %s)", message, cfile.name)
    return report


def _cache_report(cfile: Path, report: dict | None) -> None:
    """Keep the mesher's report next to the mesh about to be cached in ``cfile`` (before it: a reader that
    finds the mesh finds its report).  A report JSON cannot hold, or None, is left out (the mesh is still
    cached, with no report)."""
    import json

    from ...outputs import atomic_file

    def plain(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    try:
        text = None if report is None else json.dumps(report, default=plain)
    except (TypeError, ValueError) as exc:
        logger.info("the mesher's report is not cached with the mesh (%s)", exc)
        text = None
    if text is None:  # (none: not an older one beside the new mesh)
        _report_path(cfile).unlink(missing_ok=True)
        return
    with atomic_file(_report_path(cfile)) as tmp:
        tmp.write_text(text, encoding="utf-8")


class _KeptWarnings(logging.Handler):
    """The warnings stimsim's logger gives while a mesh is built (a piece of a tissue the mesh lost, a
    layer one voxel thick...), kept in the mesher's report, so that a later call that reads the mesh
    from the cache says them again."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.thread = threading.get_ident()
        #: whether the logger gives warnings at all (not under ``--quiet``): else none are kept
        self.complete = logger.isEnabledFor(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:  # (not another mesh's, made at the same time)
            self.messages.append(record.getMessage())

    def __enter__(self):
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger.removeHandler(self)


# ----------------------------------------------------------------------------------------------
# voxel preparation
# ----------------------------------------------------------------------------------------------
def _clean_islands(tags: np.ndarray, zooms, keep: np.ndarray | None = None,
                   connectivity: int = 6, kept_mm3: float = 0.0) -> tuple[np.ndarray, dict, list]:
    """Reassign small islands of each tissue (pieces joined across voxel faces, or with
    ``connectivity=26`` also edges and corners) to the nearest other tissue (voxels under ``keep``,
    the lesion, never count as islands).  Pieces of at least ``kept_mm3`` are kept where the surfaces
    keep them (:data:`ISLAND_KEPT_MM3`, :func:`_kept_by_the_surfaces`; 0: none kept).

    The surface mesher uses 26: a skull one voxel thick is joined only through edges and corners
    where it runs obliquely, and with faces alone those stretches were islands, replaced by scalp
    and grey matter: holes in the skull (which it then kept open as defects).

    Returns ``(tags, moved, kept)``: ``kept``, the pieces apart from their tissue's main piece that
    stay for the surfaces (``(tag, voxel index tuple)``; checked in the mesh by :func:`_pieces_in_mesh`)."""
    tags = tags.copy()
    unknown = np.zeros(tags.shape, bool)
    moved = {}
    voxel_mm3 = float(np.prod(np.asarray(zooms, float)))
    kept_vox = int(np.ceil(kept_mm3 / voxel_mm3)) if kept_mm3 > 0 else 0
    warn_vox = int(np.ceil(ISLAND_WARN_MM3 / voxel_mm3)) if kept_mm3 > 0 else 0
    # each tissue's islands on their own (two threads: the labelling runs outside the GIL)
    islands = on_threads({int(t): (_islands, tags, int(t), connectivity, kept_vox, warn_vox)
                          for t in np.unique(tags) if t != 0}, tags.size)
    main = {}  # the main piece of each nesting layer's mask, as the surfaces take it (computed when needed)
    kept = []
    for t, found in islands.items():
        if found is None:
            continue
        where, large, sizable = found
        if large:
            lost = _kept_by_the_surfaces(tags, t, large, main)
            kept += [(t, piece) for piece in large if not any(piece is gone for gone in lost)]
            where = tuple(np.concatenate([w, *(piece[j] for piece in lost)]) for j, w in enumerate(where))
            sizable = [*sizable, *((len(piece[0]), tuple(int(i[0]) for i in piece)) for piece in lost)]
        # (not the pieces under the lesion or the folds' stand-ins: kept)
        sizable = sorted((n for n, at in sizable if keep is None or not keep[at]), reverse=True)
        if sizable:  # no tissue of this size goes in silence (a 0.9 mL bone flap, bone fragments in the scalp)
            logger.warning("labels: %d piece%s of %s apart from its main piece (%s) meshed as the tissue around "
                           "%s: the surfaces keep such a piece from %s up, inside the layer that nests the tissue",
                           len(sizable), "s" if len(sizable) > 1 else "", _name(t),
                           ", ".join(_fmt_mm3(n * voxel_mm3) for n in sizable[:4]) + (" ..." if len(sizable) > 4 else ""),
                           "them" if len(sizable) > 1 else "it", _fmt_mm3(kept_mm3))
        if keep is not None:
            where = tuple(i[~keep[where]] for i in where)
        moved[t] = int(len(where[0]))
        unknown[where] = True
    del islands
    if unknown.any():
        _take_nearest_known(tags, unknown, zooms)
    # keep the main piece of the head only
    lab, n = label_pieces(tags > 0)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        keep = lab == int(np.argmax(sizes))
        moved["dropped_pieces"] = int((tags > 0).sum() - keep.sum())
        tags[~keep] = 0
    return tags, moved, kept


def _pieces_in_mesh(mesh: Mesh, pieces: list, affine: np.ndarray, voxel_mm3: float, tag_of: dict) -> list[dict]:
    """How much of each labels' piece ``(tag, voxel index tuple)`` on the grid of ``affine`` the mesh
    gives its tissue (``tag_of``: a stand-in's tag in the mesh): the share of its voxel centres inside
    tetrahedra of that tag, on the piece's box only.  Each piece: ``{"tag", "mm3", "at_mm", "share"}``."""
    from types import SimpleNamespace

    from ...mesh.voxelize import tet_values_on_grid

    if not pieces:
        return []
    ijk = (np.asarray(mesh.nodes, float) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    tet_lo = np.empty((mesh.n_tets, 3))
    tet_hi = np.empty((mesh.n_tets, 3))
    for a in range(3):  # (axis by axis: the corners of all tetrahedra at once took 96 bytes each)
        corner = ijk[:, a][mesh.tets]
        tet_lo[:, a], tet_hi[:, a] = corner.min(axis=1), corner.max(axis=1)
    del corner
    out = []
    for t, piece in pieces:
        vox = np.column_stack(piece)
        lo, hi = vox.min(axis=0), vox.max(axis=0)
        near = np.flatnonzero(((tet_hi >= lo - 0.5) & (tet_lo <= hi + 0.5)).all(axis=1))
        tag = int(tag_of.get(int(t), t))
        box = SimpleNamespace(nodes=ijk - lo, tets=mesh.tets[near], n_tets=len(near))
        on_box = tet_values_on_grid(box, mesh.tet_tags[near], hi - lo + 1, np.eye(4))
        at = affine[:3, :3] @ vox.mean(axis=0) + affine[:3, 3]
        out.append({"tag": tag, "mm3": round(len(vox) * voxel_mm3, 1), "at_mm": [round(float(x), 1) for x in at],
                    "share": round(float(np.mean(on_box[tuple((vox - lo).T)] == tag)), 3)})
    return out


def _islands(tags: np.ndarray, t: int, connectivity: int, kept_vox: int = 0, warn_vox: int = 0) -> tuple | None:
    """``(voxels, large, sizable)`` of tissue ``t``: the voxels (index arrays, as ``np.nonzero``) in pieces
    smaller than :data:`ISLAND_FRACTION` of its largest and than ``kept_vox`` voxels (0: any size), the
    voxels of each such piece of ``kept_vox`` or more, one index tuple each, and ``(size, a voxel's index)``
    of those in ``voxels`` of ``warn_vox`` voxels or more (0: none) (None: one piece).  Indices, not a mask: every
    tissue's are held at once (a volume-sized mask each doubled the step's peak memory)."""
    lab, n = label_pieces(tags == t, connectivity)
    if n <= 1:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    small = sizes < ISLAND_FRACTION * sizes.max()
    small[0] = False
    large = []
    if kept_vox and (small & (sizes >= kept_vox)).any():
        for p in np.flatnonzero(small & (sizes >= kept_vox)):
            large.append(np.nonzero(lab == p))
        small &= sizes < kept_vox
    sizable = []  # (voxels, one voxel's index)
    if warn_vox and (small & (sizes >= warn_vox)).any():
        for p in np.flatnonzero(small & (sizes >= warn_vox)):
            sizable.append((int(sizes[p]), tuple(int(i[0]) for i in np.nonzero(lab == p))))
    return np.nonzero(small[lab]), large, sizable


def _kept_by_the_surfaces(tags: np.ndarray, t: int, pieces: list, main: dict) -> list:
    """Those of ``pieces`` (index tuples of tissue ``t``'s voxels) that the surfaces would not keep, as
    :func:`.surface.nested_fields` takes the layers' masks (the scalp's, the bone's and the CSF's filled,
    their largest piece; the brain's cut to the CSF's, their holes of over 50 voxels kept): outside the
    main mask of ``t``'s nesting layer (of the CSF's, for the brain's), or, for the scalp and the bone,
    inside the next layer's (a piece of bone inside the brain: the CSF's mask fills it).  ``main``:
    {layer: mask}, filled in as needed."""

    def mask(k):
        if k not in main:
            lut = layer_lut(max(256, int(tags.max()) + 1))
            lab, n = label_pieces(fill_holes(lut[tags] >= k))
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            main[k] = lab == int(np.argmax(sizes))
        return main[k]

    layer = int(layer_lut(max(256, int(t) + 1))[t])
    lost = []
    for piece in pieces:
        out = np.mean(mask(min(max(layer, 1), 3))[piece]) < 0.5
        if not out and layer <= 2:
            out = np.mean(mask(layer + 1)[piece]) >= 0.5
        if out:
            lost.append(piece)
    return lost


def _take_nearest_known(tags: np.ndarray, unknown: np.ndarray, zooms, margin: int = 4) -> None:
    """Give every ``unknown`` voxel the tag of its nearest known voxel, in place.

    One feature transform per island of unknown voxels, on its bounding box plus ``margin`` voxels
    (doubled until the nearest known voxel is closer than the box's edge, so the answer is the one
    the whole volume gives): Colin27 has ~4,900 small islands, and one transform of the whole
    volume cost twice as long."""
    zooms = tuple(float(z) for z in zooms)
    lab, _ = label_pieces(unknown, 26)
    src = tags.copy()
    for k, sl in enumerate(ndi.find_objects(lab), 1):
        m = margin
        while True:
            box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, n in zip(sl, tags.shape))
            dist, ind = ndi.distance_transform_edt(unknown[box], sampling=zooms, return_indices=True)
            own = lab[box] == k
            whole = all(b.start == 0 and b.stop == n for b, n in zip(box, tags.shape))
            if whole or dist[own].max() < m * min(zooms):
                break
            m *= 2
        tags[box][own] = src[box][tuple(i[own] for i in ind)]


def air_cavities(tags: np.ndarray) -> np.ndarray:
    """Background voxels enclosed by the head (not connected to the volume border)."""
    bg = np.pad(tags == 0, 1, constant_values=True)
    lab, _ = label_pieces(bg)
    return (bg & (lab != lab[0, 0, 0]))[1:-1, 1:-1, 1:-1]


def tissue_connectivity(mesh: Mesh, neighbors: np.ndarray | None = None) -> dict[int, dict]:
    """Per tag: number of face-connected pieces and the largest piece's share of the volume.
    ``neighbors``: :func:`.topology.tet_neighbors` of ``mesh.tets``, where known."""
    neighbors = tet_neighbors(mesh.tets) if neighbors is None else neighbors
    vol = mesh.volumes_mm3
    out = {}
    for t in mesh.tissue_tags:
        idx, n, lab = face_components(mesh.tet_tags == t, neighbors, mesh.tet_tags)
        v = np.bincount(lab, weights=vol[idx])
        out[int(t)] = {"pieces": int(n), "largest_fraction": float(v.max() / v.sum())}
    return out


def quality_summary(mesh: Mesh, voxel_volume_mm3: dict[int, float] | None = None,
                    neighbors: np.ndarray | None = None) -> dict:
    """:func:`stimsim.mesh.mesh_quality` (with its ``elements`` report: slivers, worst element and
    where it is) plus per-tissue volume error, the :func:`volume_check` against
    ``voxel_volume_mm3`` and per-tissue connectivity (``neighbors``: see :func:`tissue_connectivity`).
    JSON-serialisable."""
    from ...mesh import mesh_quality

    q = mesh_quality(mesh, elements=True)
    q["n_inverted"] = int(q["elements"]["degenerate"]["count"])
    if voxel_volume_mm3:
        q["volume_error_per_tag"] = {
            t: (q["volume_mm3_per_tag"].get(t, 0.0) / v - 1.0) for t, v in voxel_volume_mm3.items() if v > 0}
        q["volume_check"] = volume_check(q["volume_mm3_per_tag"], voxel_volume_mm3)
    q["connectivity"] = tissue_connectivity(mesh, neighbors)
    return q


# ----------------------------------------------------------------------------------------------
# checks before and after meshing (docs/mesh_checks.md)
# ----------------------------------------------------------------------------------------------
#: the head (voxels with a tissue) must span at least this many element sizes along each axis ...
MIN_HEAD_EXTENT_ELEMENTS = 3
#: ... and this many voxels
MIN_HEAD_EXTENT_VOXELS = 4
#: every tissue the mesh must contain needs this many voxels and the volume of one element (h^3 / 12)
MIN_TISSUE_VOXELS = 8
#: |mesh volume / voxel volume - 1| of a tissue: a logged warning above the first, an error above the second
VOLUME_ERROR_WARN = 0.05
VOLUME_ERROR_FAIL = 0.50
#: a piece of a tissue apart from its main piece, kept for the surfaces (1 mL or more), of which the mesh
#: gives the tissue less than this share of the voxel centres is warned about (:func:`_pieces_in_mesh`)
PIECE_KEPT_SHARE = 0.5


def _element_volume_mm3(h: float) -> float:
    """Volume of one element of size ``h``: a BCC lattice tetrahedron of spacing ``h`` (h^3 / 12;
    a regular tetrahedron of edge ``h``, the surface mesher's largest, is 0.118 h^3)."""
    return h ** 3 / 12.0


def _name(t: int) -> str:
    from ...conductivity import tissue_name

    return f"{tissue_name(t)} (tag {int(t)})"


def _fmt_mm3(v: float) -> str:
    return f"{v / 1000:.3g} mL" if v >= 1000 else f"{v:.3g} mm^3"


def expected_tags(tags: np.ndarray, method: str, lesion_mask: np.ndarray | None = None, lesion_tag: int = 3,
                  counts: np.ndarray | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """Voxels per tag that the mesh of ``method`` should hold, and the tags it merges.

    Both meshers keep every tag (the surface mesher's tissues inside a layer: :mod:`.sub_tissues`;
    one too thin for its elements is merged after meshing, :func:`sub_tissue_merges`); the lesion
    (voxels under ``lesion_mask``) keeps ``lesion_tag``.  Returns ``({tag: voxels}, {label tag:
    mesh tag})``, the second only for the tags merged into another one (none before meshing).
    ``counts``: ``value_counts(tags)`` when the caller has it (a pass over the volume less)."""
    counts = value_counts(tags, minlength=256) if counts is None else np.array(counts, np.int64)
    n_lesion = int(np.count_nonzero(lesion_mask)) if lesion_mask is not None else 0
    if n_lesion:
        counts[int(lesion_tag)] -= n_lesion  # _apply_lesion gave the lesion voxels lesion_tag
    merged = {}
    if n_lesion:
        counts[int(lesion_tag)] += n_lesion
    return {int(t): int(counts[t]) for t in np.flatnonzero(counts[1:]) + 1}, merged


def sub_tissue_merges(expected: dict[int, float], mesh_mm3: dict[int, float], lesion_tag: int | None = None,
                      lesion_mm3: float = 0.0, layer_of: dict[int, int] | None = None) -> dict[int, int]:
    """``{tag: into}``: tissues of ``expected`` ({tag: voxel volume}) that the mesh (its volume per
    tag ``mesh_mm3``) does not hold but another tissue of their nesting layer does, the one with the
    most voxels.  The surface mesher merges a tissue inside a layer that its elements cannot resolve
    (:data:`.sub_tissues.MERGE_ABOVE_ERROR`) that way; the rule reads the mesh, so a cached one
    gives the same answer.  ``lesion_tag`` with ``lesion_mm3``: the lesion's tetrahedra hold that
    tag whatever happens to a tissue of the labels with the same tag (blood, a user's tissue), so
    that tissue counts as merged when the tag holds less than the lesion and half the tissue; its
    lesion volume does not count when it is ranked as a mate (the lesion's tag may be the CSF's,
    into which blood is merged).  ``layer_of``: {tag: layer} where a tissue was meshed in
    another layer than its own (CSF only inside the brain: the brain's)."""
    lut = layer_lut(max(256, max(expected, default=0) + 1), layer_of)
    present = {int(t) for t, v in mesh_mm3.items() if v > 0}
    own = {t: v - (lesion_mm3 if t == lesion_tag else 0.0) for t, v in expected.items()}
    merged = {}
    for t in expected:
        if own[t] <= 0:
            continue
        if t == lesion_tag:
            if mesh_mm3.get(t, 0.0) >= lesion_mm3 + 0.5 * own[t]:
                continue
        elif t in present:
            continue
        mates = [u for u in expected if lut[u] == lut[t] and u in present and u != t]
        if mates:
            merged[int(t)] = int(max(mates, key=lambda u: own[u]))
    return merged


def _layer_counts(counts: dict[int, int], lmask=None, lesion_tag: int = 3, inner_csf: bool = False) -> dict[int, int]:
    """``counts`` ({tag: voxels}) summed per nesting layer, under the layer's fill tag (the lesion's
    tag, with a lesion, kept; CSF and blood in the brain's with ``inner_csf``, :func:`_csf_into_brain`).
    The surface mesher's size check before meshing reads these: a tissue inside a layer too small for
    the elements is merged after meshing (:func:`sub_tissue_merges`), not refused."""
    lut = layer_lut(max(256, max(counts, default=0) + 1))
    if inner_csf:
        lut[list(_INSIDE_BRAIN)] = 4
    out: dict[int, int] = {}
    for t, n in counts.items():
        to = int(t) if lmask is not None and t == int(lesion_tag) else LAYER_FILL_TAG[int(lut[t])]
        out[to] = out.get(to, 0) + n
    return out


#: CSF and blood when the CSF lies only inside the brain (:func:`csf_inside_brain_only`): meshed under
#: these stand-in tags, which count as brain (tags above 10), as tissues inside the brain's layer
#: (:mod:`.sub_tissues`), and given their own tags back after meshing
_INSIDE_BRAIN = {3: 251, 9: 252}


def _enclosing_brain_layer(tags: np.ndarray) -> int:
    """5 (white matter) when most of the CSF lies inside the white matter's filled envelope, else 4
    (grey matter): the layer whose main tissue a ventricle too small for the elements becomes."""
    csf = tags == 3
    inside = np.count_nonzero(csf & fill_holes(layer_lut(max(256, int(tags.max()) + 1))[tags] == 5))
    return 5 if inside > 0.5 * np.count_nonzero(csf) else 4


#: a user's tissue (a tag above 10, which counts as brain) whose faces with other tissues touch the
#: white matter for at least this share is meshed inside the white matter, and one that touches grey
#: matter for less than the rest inside the layer it touches most (a tumour in the white matter or
#: on a ventricle, a plate in the skull); counted as brain, its voxels made a hole in that layer,
#: which the surfaces closed where it was small: a 0.9 mL ball in the white matter, and every ball
#: of 0.1-3 mL in the skull or the scalp, came out as none (merged)
ENCLOSED_FACE_SHARE = 0.75
#: ... and one that touches the CSF most stays brain where the grey matter has this share of its faces
BRAIN_CONTACT_SHARE = 0.05


def enclosing_layers(tags: np.ndarray, exclude=()) -> tuple[dict[int, int], dict[int, tuple], tuple | None]:
    """The nesting layers in which the surface mesher meshes a user's tissues (tags above 10, counted
    as brain, layer 4; not those in ``exclude``).  Each face-connected piece of such voxels (all
    those tags together: a tumour's core inside its oedema is one piece) goes by its voxel faces with
    other tissues (not background): the white matter's layer (5) where it has at least
    :data:`ENCLOSED_FACE_SHARE` of them, the grey matter's (4) where that has at least
    ``1 - ENCLOSED_FACE_SHARE``, else the one of scalp, bone, CSF and white matter with the most
    (but the grey matter's where that is the CSF and the grey matter has :data:`BRAIN_CONTACT_SHARE`).

    Returns ``(layer_of, elsewhere, hosts)``: ``{tag: layer}`` for the tags with a piece outside the
    grey matter's layer (the layer of most of their voxels), ``{tag: other layers}`` for those with
    pieces in several, and ``(box, layer per voxel)`` (0: not such a tag) for
    :func:`_into_enclosing_layers` and :func:`_user_stand_ins`, or None.  The surfaces are then built with each piece's layer's tissue in its voxels, and the
    tetrahedra there take the tags from the labels (:mod:`.sub_tissues`)."""
    top = int(tags.max(initial=0))
    if top <= 10:
        return {}, {}, None
    user = np.zeros(max(256, top + 1), bool)
    user[11:] = True
    user[[int(t) for t in exclude if 0 <= int(t) < len(user)]] = False
    um = user[tags]
    idx = [np.flatnonzero(um.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    if any(len(i) == 0 for i in idx):
        return {}, {}, None
    box = tuple(slice(max(int(i[0]) - 1, 0), int(i[-1]) + 2) for i in idx)  # (a voxel beyond: their faces)
    t, um = tags[box], um[box]
    pieces, n = label_pieces(um)
    layer = layer_lut(len(user)).astype(np.int64)
    faces = np.zeros((n + 1, 6), np.int64)  # each piece's faces with each layer's tissues
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        for a, b in ((tuple(lo), tuple(hi)), (tuple(hi), tuple(lo))):
            face = um[a] & ~um[b] & (t[b] > 0)
            faces += np.bincount(pieces[a][face].astype(np.int64) * 6 + layer[t[b][face]],
                                 minlength=faces.size).reshape(faces.shape)
    total = faces.sum(1)
    host = np.full(n + 1, 4, np.int64)  # (a piece touching no tissue: brain, as before)
    # little grey matter around it: the layer it touches most (a grey-matter piece there would be a
    # hole in another layer, which the surfaces close: a tumour on a ventricle's wall came out as none)
    other = (faces[:, 4] < (1.0 - ENCLOSED_FACE_SHARE) * total) & (total > 0)
    host[other] = np.array([1, 2, 3, 5])[np.argmax(faces[other][:, [1, 2, 3, 5]], axis=1)]
    # ... but brain where it touches the CSF most and the grey matter too (a lobe of the user's own
    # tag, whose cut faces are grey and white matter: meshed in the CSF layer, grey matter's Dice 0.99
    # -> 0.93)
    host[(host == 3) & (faces[:, 4] >= BRAIN_CONTACT_SHARE * total)] = 4
    host[(faces[:, 5] >= ENCLOSED_FACE_SHARE * total) & (total > 0)] = 5  # (none around it: brain, above)
    host[0] = 0
    voxel_host = host[pieces].astype(np.int8)
    per_tag = np.bincount(t[um].astype(np.int64) * 6 + voxel_host[um], minlength=len(user) * 6).reshape(-1, 6)
    layer_of, elsewhere = {}, {}
    for tag in np.flatnonzero(per_tag.sum(1)):
        hosts = np.flatnonzero(per_tag[tag])
        if list(hosts) == [4]:
            continue
        layer_of[int(tag)] = main = int(np.argmax(per_tag[tag]))
        if len(hosts) > 1:
            elsewhere[int(tag)] = tuple(int(k) for k in hosts if k != main)
    return layer_of, elsewhere, ((box, voxel_host) if layer_of else None)


def _user_stand_ins(user_grid: np.ndarray, hosts: tuple, layer_of: dict, elsewhere: dict,
                    taken) -> dict[int, tuple[int, int]]:
    """A user's tag with pieces in several layers (:func:`enclosing_layers`' ``elsewhere``): its pieces
    outside its main layer take a stand-in tag in ``user_grid`` (in place; a free value above 10,
    none of ``taken``), meshed in their layer and given the tag back after meshing (the tissues
    inside a layer are calibrated to one volume per tag: a skull plate took the volume of a ball of
    its tag in the white matter, -34 %).  Returns ``{stand-in: (tag, layer)}``, ``layer_of`` updated;
    with no free value left the pieces stay as they are (their tetrahedra go to the main layer's
    pieces), with a warning."""
    box, voxel_host = hosts
    free = [v for v in range(250, 10, -1) if v not in set(int(t) for t in taken)]
    out = {}
    sub = user_grid[box]
    for tag, layers in elsewhere.items():
        for k in layers:
            if not free:
                logger.warning("labels: %s has pieces inside the %s layer too, and no tag value is free to mesh "
                               "them apart: they go to its pieces elsewhere (use fewer tag values above 10)",
                               _name(tag), _name(LAYER_FILL_TAG[k]))
                continue
            v = free.pop(0)
            sub[(sub == tag) & (voxel_host == k)] = v
            out[v] = (int(tag), int(k))
            layer_of[v] = int(k)
    return out


def _bone_apart_stand_ins(tags: np.ndarray, zooms, taken, others=(), kept_mm3: float = ISLAND_KEPT_MM3) -> dict:
    """Pieces of the bone's layer apart from the skull and outside it (a mandible: bone 26-connected pieces
    of ``kept_mm3`` or more, other than the largest, with most of their voxels outside the skull's filled
    layer) -> a stand-in tag per bone tag in them, in ``tags`` and each of ``others`` (in place; free
    values above 10, none of ``taken``), so that they are meshed as a tissue inside the layer around them
    (:func:`enclosing_layers`, the scalp's) and given their tag back after meshing.  The surfaces mesh
    each layer as one closed shell: as islands of the bone such pieces went to the scalp (a SAMSEG
    head's mandible, 3.7 and 3.5 mL, with a warning).  Returns ``{stand-in: tag}``.  (Vertebrae joined
    to the skull's layer through the spinal canal's CSF are inside it, and stay as they were.)"""
    lut = layer_lut(max(256, int(tags.max(initial=0)) + 1)).astype(np.uint8)
    # (on the box of the bone and what it encloses: a 0.5 mm scan's field of view is twice the head's)
    inner = lut[tags] >= 2
    span = [np.flatnonzero(inner.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    if any(len(a) == 0 for a in span):
        return {}
    box = tuple(slice(int(a[0]), int(a[-1]) + 1) for a in span)
    inner = inner[box]
    layer = lut[tags[box]]
    pieces, n = label_pieces(layer == 2, 26)
    if n < 2:
        return {}
    size = np.bincount(pieces.ravel())
    size[0] = 0
    big = np.flatnonzero(size * float(np.prod(np.asarray(zooms, float))) >= float(kept_mm3))
    big = big[big != int(np.argmax(size))]
    if not len(big):
        return {}
    inside = np.bincount(pieces[largest_piece(fill_holes(inner))], minlength=n + 1)
    del inner
    apart = [int(b) for b in big if inside[b] < 0.5 * size[b]]
    if not apart:
        return {}
    free = [v for v in range(250, 10, -1) if v not in set(int(t) for t in taken)]
    where = np.isin(pieces, apart)
    del pieces
    out = {}
    sub = tags[box]
    for t in np.unique(sub[where]):
        if not free:
            break
        v = free.pop(0)
        m = where & (sub == t)
        for a in (tags, *others):
            a_box = a[box]
            a_box[m & (a_box == t)] = v  # (not a lesion's voxels in the lesioned tags)
        out[v] = int(t)
    return out


def _into_enclosing_layers(tags: np.ndarray, hosts: tuple, keep: np.ndarray | None = None) -> None:
    """A user's tissues in an outer or the white matter's layer (:func:`enclosing_layers`'s ``hosts``)
    -> that layer's fill tag, in place (not under ``keep``, a lesion)."""
    box, voxel_host = hosts
    fill = np.zeros(6, tags.dtype)
    for k, t in LAYER_FILL_TAG.items():
        fill[k] = t
    m = (voxel_host > 0) & (voxel_host != 4)
    if keep is not None:
        m &= ~keep[box]
    sub = tags[box]
    sub[m] = fill[voxel_host[m]]


def _csf_into_brain(tags: np.ndarray, lmask) -> None:
    """CSF and blood -> their :data:`_INSIDE_BRAIN` stand-ins, in place (not under the lesion, whose
    voxels hold the lesion's tag).  Kept as the CSF layer, ventricles without CSF around the brain
    got a CSF shell of the layer's minimum thickness around the brain (a 5 mm ventricle: CSF +839 %,
    refused by the volume check); as a tissue of the brain's layer they get none."""
    for tag, stand_in in _INSIDE_BRAIN.items():
        m = tags == tag
        if lmask is not None:
            m &= ~lmask
        tags[m] = stand_in


#: the closing radius that finds sulcal CSF, as a fraction of the surfaces' sampling (half: a fold
#: narrower than two samples is one the surfaces cannot enter)
SULCAL_RADIUS_OF_SPACING = 0.5
#: sulcal CSF below this share of the CSF (or 64 voxels) stays in the CSF layer: a voxelised sphere's
#: staircase holds a few such voxels, and a stand-in too small for the elements would be merged
SULCAL_MIN_FRACTION = 0.01
#: pieces of the brain smaller than this share of the largest have no folds of their own (specks)
SULCAL_MIN_PIECE = 0.01


def sulcal_csf(tags: np.ndarray, zooms, radius_mm: float, exclude: np.ndarray | None = None) -> np.ndarray:
    """CSF (and blood) voxels, tags 3 and 9, in the brain's folds: inside the morphological closing
    of a piece of the brain (the grey- and white-matter layers, tags above 10 included) with a ball
    of ``radius_mm``, not under ``exclude`` (a lesion).  Sulci narrower than twice the radius are
    such CSF; the CSF around the brain, in wide fissures and between two pieces of brain (two
    hemispheres the labels keep apart) is not.

    - Each piece (26-connected, at least :data:`SULCAL_MIN_PIECE` of the largest) is closed on its
      own: closing them together would fill the gap between two pieces, whose CSF the surfaces keep.
    - A smooth brain has no such CSF on its voxels (nested ellipsoids at 1 and 0.5 mm); thick
      slices split in two would show their staircase as folds (5 % of a convex brain's CSF), so
      call this on the voxels as they are.
    - Exact Euclidean balls (two distance transforms, ``zooms`` anisotropic) on each piece's box
      at the voxels' own resolution: in 2-voxel blocks a 0.5 mm head lost up to half its folds,
      depending on where the blocks fell (a sulcus one block wide lies in a block mostly brain)."""
    zooms = np.asarray(zooms, float)
    fold = np.zeros(tags.shape, bool)
    if radius_mm <= 0:
        return fold
    brain = layer_lut(max(256, int(tags.max()) + 1)).astype(np.int8)[tags] >= 4
    pad = np.ceil(radius_mm / zooms).astype(int) + 2
    # on the brain's box (each piece's box below lies inside it, cut only where the volume cuts it):
    # a scan's field of view holds 5x the brain's voxels (0.5 mm, 394 x 466 x 620: peak 1.6 GB here)
    hits = [np.flatnonzero(brain.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    if any(len(h) == 0 for h in hits):
        return fold
    outer = tuple(slice(max(int(h[0]) - p, 0), min(int(h[-1]) + 1 + p, n))
                  for h, p, n in zip(hits, pad, tags.shape))
    fold_all, fold = fold, fold[outer]
    tags, brain = tags[outer], brain[outer]
    exclude = None if exclude is None else np.asarray(exclude, bool)[outer]
    lab, n_pieces = label_pieces(brain, 26)
    sizes = np.bincount(lab.ravel())[1:]
    for piece, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None or sizes[piece - 1] < SULCAL_MIN_PIECE * sizes.max():
            continue
        box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(box, pad))
        dilated = distance_to_background(lab[box] != piece, zooms) <= radius_mm
        # one ring of "not dilated" around the box: where the box is cut by the volume's edge the
        # closing then treats the outside as such, which can only shrink it
        closed = distance_to_background(np.pad(dilated, 1), zooms)[1:-1, 1:-1, 1:-1] > radius_mm
        del dilated
        fold[box] |= closed & ~brain[box] & ((tags[box] == 3) | (tags[box] == 9))
    if exclude is not None:
        fold &= ~exclude
    return fold_all


def _mark_blocks(ctags: np.ndarray, fine: np.ndarray, factors, stand_ins) -> None:
    """Give each block of ``ctags`` (one voxel per block of ``factors`` voxels of ``fine``) in the
    brain's layers the first of ``stand_ins`` any of its voxels holds, in place."""
    f = np.asarray(factors, int)
    brain = layer_lut(max(256, int(ctags.max()) + 1)).astype(np.int8)[ctags] >= 4
    for stand_in in stand_ins:
        m = fine == stand_in
        if not m.any():
            continue
        m = np.pad(m, [(0, int(n * b - s)) for n, b, s in zip(ctags.shape, f, m.shape)])
        n = ctags.shape
        hit = m.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).any(axis=(1, 3, 5))
        ctags[hit & brain & ~np.isin(ctags, list(stand_ins))] = stand_in


def _merge_expected(expected: dict, merged: dict, lesion_tag: int | None = None, lesion_mm3: float = 0.0) -> dict:
    """``expected`` with each merged tissue's volume moved to the tissue it was merged into (for the
    lesion's tag, the part outside the lesion)."""
    out = dict(expected)
    for t, to in merged.items():
        keep = lesion_mm3 if t == lesion_tag else 0.0
        out[to] = out.get(to, 0.0) + out[t] - keep
        if keep:
            out[t] = keep
        else:
            del out[t]
    return out


def check_meshable(tags: np.ndarray, zooms, h: float, counts: dict[int, int] | None = None,
                   small_ok: tuple = ()) -> None:
    """Refuse label volumes too small to mesh at element size ``h`` (mm), before meshing.

    Rule (docs/mesh_checks.md): the head's bounding box (voxels with a tissue) spans at least
    :data:`MIN_HEAD_EXTENT_ELEMENTS` element sizes and :data:`MIN_HEAD_EXTENT_VOXELS` voxels
    along each axis, and every tissue of ``counts`` ({tag: voxels}, default: the tags of ``tags``)
    has at least :data:`MIN_TISSUE_VOXELS` voxels and the volume of one element, ``h^3 / 12``
    (tags in ``small_ok``, the surface mesher's refined lesion: the voxel minimum only).

    Raises
    ------
    MeshError naming the tissue / extent, what the rule needs and the fix.
    """
    zooms = np.asarray(zooms, float)
    head = tags > 0
    ext_vox = []
    for ax in range(3):
        idx = np.flatnonzero(head.any(axis=tuple(k for k in range(3) if k != ax)))
        ext_vox.append(int(idx[-1] - idx[0] + 1) if len(idx) else 0)
    ext_vox = np.array(ext_vox)
    ext_mm = ext_vox * zooms
    dims = " x ".join(str(v) for v in ext_vox)
    if (ext_vox < MIN_HEAD_EXTENT_VOXELS).any():
        raise MeshError(f"labels: the head (voxels with a tissue) spans only {dims} voxels; meshing needs at least "
                        f"{MIN_HEAD_EXTENT_VOXELS} voxels and {MIN_HEAD_EXTENT_ELEMENTS} element sizes along each "
                        "axis: give a larger label volume (or one with more, finer voxels)")
    need = MIN_HEAD_EXTENT_ELEMENTS * h
    if (ext_mm < need).any():
        raise MeshError(f"labels: the head spans {' x '.join(f'{v:.3g}' for v in ext_mm)} mm, less than "
                        f"{MIN_HEAD_EXTENT_ELEMENTS} element sizes ({MIN_HEAD_EXTENT_ELEMENTS} x {h:g} mm = "
                        f"{need:.3g} mm) along each axis; use a smaller element size (--element-size at most "
                        f"{np.floor(100 * ext_mm.min() / MIN_HEAD_EXTENT_ELEMENTS) / 100:g} mm) or a larger "
                        "label volume")
    if counts is None:
        counts = {int(t): int(c) for t, c in enumerate(value_counts(tags)) if t and c}
    voxel = float(np.prod(zooms))
    need_vox = max(MIN_TISSUE_VOXELS, int(np.ceil(_element_volume_mm3(h) / voxel - 1e-9)))
    small = {t: n for t, n in sorted(counts.items())
             if n < (MIN_TISSUE_VOXELS if t in small_ok else need_vox)}
    if small:
        listed = ", ".join(f"{_name(t)}: {n} voxel{'s' if n != 1 else ''}" for t, n in small.items())
        fix = "map them to a neighbouring tissue or to 0 in a label TSV"
        n_min = min(small.values())
        if n_min >= MIN_TISSUE_VOXELS:
            h_max = np.floor(100 * (12.0 * n_min * voxel) ** (1 / 3)) / 100
            fix = f"use a smaller element size (--element-size at most {h_max:g} mm), or " + fix
        elif need_vox > MIN_TISSUE_VOXELS:
            fix = "use finer labels, or " + fix
        raise MeshError(f"labels: too few voxels to mesh {listed}; at element size {h:g} mm every tissue needs at "
                        f"least {need_vox} voxels ({MIN_TISSUE_VOXELS} voxels and one element, h^3/12 = "
                        f"{_fmt_mm3(_element_volume_mm3(h))}): {fix}")


#: the outermost tissue layer (of those holding at least :data:`NESTING_MIN_LAYER_SHARE` of the head)
#: must cover at least this share of the head's outer surface, unless the surface is mostly the next
#: layer in (brain-only labels with CSF in the ventricles alone): else the label map reads the labels
#: in the wrong order (Colin27's labels read as SimNIBS's put the white matter outside: 2 % scalp)
NESTING_OUTER_SHARE = 0.2
NESTING_MIN_LAYER_SHARE = 0.02
_LAYER_NAMES = {1: "scalp", 2: "bone", 3: "CSF", 4: "grey matter", 5: "white matter"}


def _nesting_step(zooms) -> int:
    """Every how many voxels :func:`check_layers_nest` reads (about 1 mm)."""
    return max(1, int(np.floor(1.0 / float(np.min(zooms)) + 1e-6)))


def _outer_surface_layers(tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels per nesting layer (index 1-5) of the head and of its outer surface: head voxels with a
    face on the background that reaches the volume's border.  The volume's own faces are not that
    surface: where the field of view cuts the head, the tissue there is not its outside."""
    lut = layer_lut(max(256, int(tags.max()) + 1)).astype(np.uint8)
    layers = lut[tags]
    outside = (layers == 0) & ~air_cavities(layers)
    surface = ndi.binary_dilation(outside) & (layers > 0)  # (faces; nothing beyond the volume's own)
    return np.bincount(layers.ravel(), minlength=6)[:6], np.bincount(layers[surface], minlength=6)[:6]


#: the grey matter lies inside the white matter when under this share of its faces with other layers
#: touch a layer outside it (CSF, bone, scalp, outside the head; Colin27 and the SAMSEG head: about half)
#: while over :data:`WM_OUTER_CONTACT_SHARE` of the white matter's do
GM_OUTER_CONTACT_SHARE = 0.05
WM_OUTER_CONTACT_SHARE = 0.2


def _check_brain_nests(tags: np.ndarray, spec) -> None:
    """Refuse grey matter enclosed by white matter (a label map with the two swapped: the outer-surface
    test of :func:`check_layers_nest` does not see inside the head, and the mesher then gave the grey
    matter two pieces and the white matter -8 %)."""
    # 1 white matter, 2 grey matter (tags 1 and 2 only: a lesion, a tumour or a lead tagged above 10
    # counts as brain for the layers, not as grey matter), 3 outside them (CSF, bone, scalp, eyes ...,
    # the background); 0 the rest, left out
    cls = np.where(layer_lut(max(256, int(tags.max()) + 1))[tags] <= 3, 3, 0).astype(np.int8)
    cls[tags == 1] = 1
    cls[tags == 2] = 2
    touch = np.zeros((4, 4), np.int64)  # faces between class i and class j (i != j)
    for ax in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        a, b = cls[tuple(lo)].ravel(), cls[tuple(hi)].ravel()
        diff = (a != b) & (a > 0) & (b > 0)
        pair = np.bincount(a[diff].astype(np.int64) * 4 + b[diff], minlength=16).reshape(4, 4)
        touch += pair + pair.T
    gm, wm = touch[2], touch[1]
    if not gm.sum() or not wm.sum() or not touch[1, 2]:
        return
    gm_out, wm_out = gm[3] / gm.sum(), wm[3] / wm.sum()
    if gm_out < GM_OUTER_CONTACT_SHARE and wm_out > WM_OUTER_CONTACT_SHARE:
        which = f"--labels {spec}" if isinstance(spec, (str, os.PathLike)) else "the label map"
        raise MeshError(f"labels: the grey matter lies inside the white matter as {which} reads them "
                        f"({100 * (1 - gm_out):.0f} % of the grey matter's surface touches white matter, "
                        f"{100 * wm_out:.0f} % of the white matter's touches CSF, bone, scalp or the outside): "
                        "the white- and grey-matter labels look swapped; check the label map "
                        "(label -> tag: 1 WM, 2 GM, 3 CSF, 4 bone, 5 scalp)")


def check_layers_nest(tags: np.ndarray, zooms, raw_sub: np.ndarray | None = None, spec=None) -> None:
    """Refuse labels whose tissues, as the label map reads them, do not nest: the outermost layer
    present (scalp, else bone, ...) covers under :data:`NESTING_OUTER_SHARE` of the head's outer
    surface while a layer two or more further in covers most of it.  Read on every
    :func:`_nesting_step`-th voxel; ``raw_sub``: the labels before the map on those voxels
    (``labels[::k, ::k, ::k]``), for the error's hint: the built-in maps under which they nest."""
    step = _nesting_step(zooms)
    _check_brain_nests(tags[::step, ::step, ::step], spec)
    head, surface = _outer_surface_layers(tags[::step, ::step, ::step])
    if not surface.sum():
        return
    present = np.flatnonzero(head[1:] >= NESTING_MIN_LAYER_SHARE * head[1:].sum()) + 1
    if not len(present):
        return
    outer = int(present.min())
    share = surface[outer] / surface.sum()
    main = int(np.argmax(surface[1:])) + 1
    if share >= NESTING_OUTER_SHARE or main < outer + 2:
        return
    fits = []
    if raw_sub is not None:
        from ..labels import LABEL_MAPS

        present_labels = set(np.unique(raw_sub).tolist())
        for name in ("simnibs", "roast", "colin27"):
            mapping = LABEL_MAPS[name]
            if name == str(spec).lower() or not present_labels <= set(mapping):
                continue
            h2, s2 = _outer_surface_layers(apply_label_map(raw_sub, mapping))
            p2 = np.flatnonzero(h2[1:] >= NESTING_MIN_LAYER_SHARE * h2[1:].sum()) + 1
            if s2.sum() and len(p2) and s2[int(p2.min())] / s2.sum() >= 0.5:
                fits.append(name)
    which = f"--labels {spec}" if isinstance(spec, (str, os.PathLike)) else "the label map"
    hint = (f"; they nest as --labels {' or '.join(fits)} reads them" if fits else
            "; check the label map (label -> tag: 1 WM, 2 GM, 3 CSF, 4 bone, 5 scalp)")
    raise MeshError(f"labels: the tissues do not nest as {which} reads them: {100 * surface[main] / surface.sum():.0f} % "
                    f"of the head's outer surface is {_LAYER_NAMES[main]}, and {_LAYER_NAMES[outer]}, the outermost "
                    f"tissue, covers {100 * share:.0f} %{hint}")


#: a second piece of the head at least this share of the largest: two heads (or objects) in one volume
SEPARATE_HEAD_SHARE = 0.1


def check_one_head(tags: np.ndarray, zooms) -> None:
    """Refuse labels holding two or more separate heads (or objects): pieces of the head (voxels
    with a tissue, 26-connected, on every :func:`_nesting_step`-th voxel) of at least
    :data:`SEPARATE_HEAD_SHARE` of the largest.  The mesher meshes one connected head: the surfaces
    keep each layer's largest piece, and the volume check then refused two side by side with -50 %
    and advice about the element size.  Smaller pieces (a marker capsule, a speck) are cleaned away
    as before."""
    step = _nesting_step(zooms)
    lab, n = label_pieces(tags[::step, ::step, ::step] > 0, 26)
    if n < 2:
        return
    sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
    big = sizes[sizes >= SEPARATE_HEAD_SHARE * sizes[0]]
    if len(big) < 2:
        return
    mm3 = float(np.prod(np.asarray(zooms, float) * step))
    listed = ", ".join(_fmt_mm3(v * mm3) for v in big[:4]) + (" ..." if len(big) > 4 else "")
    raise MeshError(f"labels: the volume holds {len(big)} separate heads or objects ({listed}); the mesher meshes "
                    "one connected head: crop the volume to one of them (or join them in the labels)")


def volume_check(mesh_volume_mm3: dict[int, float], voxel_volume_mm3: dict[int, float], *,
                 warn: float = VOLUME_ERROR_WARN, fail: float = VOLUME_ERROR_FAIL) -> dict:
    """Compare the tissue volumes of a mesh with the voxel volumes it was made from.

    Returns ``{"warn", "fail", "missing": [tags], "failed": {tag: error}, "warned": {tag: error},
    "extra": {tag: mm^3}}``: tissues of the labels absent from the mesh, relative volume errors
    above ``fail`` and above ``warn`` (only those not above ``fail``), and tissues in the mesh that
    the labels do not have (e.g. a closing layer the lattice mesher added)."""
    out = {"warn": float(warn), "fail": float(fail), "missing": [], "failed": {}, "warned": {}, "extra": {}}
    for t, v in sorted(voxel_volume_mm3.items()):
        if v <= 0:
            continue
        got = float(mesh_volume_mm3.get(t, 0.0))
        err = got / v - 1.0
        if got <= 0:
            out["missing"].append(int(t))
        elif abs(err) > fail:
            out["failed"][int(t)] = float(err)
        elif abs(err) > warn:
            out["warned"][int(t)] = float(err)
    for t, v in sorted(mesh_volume_mm3.items()):
        if v > 0 and voxel_volume_mm3.get(t, 0) <= 0:
            out["extra"][int(t)] = float(v)
    return out


def _at(e: dict) -> str:
    x, y, z = e["worst_at_mm"]
    return f"({x:.1f}, {y:.1f}, {z:.1f}) mm, {_name(e['worst_tag'])}"


def assess_quality(q: dict, voxel_volume_mm3: dict[int, float] | None = None, h: float | None = None,
                   method: str | None = None) -> tuple[list[str], list[str]]:
    """Errors and warnings (one line each) of a :func:`quality_summary`: a tissue of the labels
    missing from the mesh, a tissue volume off by more than :data:`VOLUME_ERROR_FAIL`, or flat /
    inverted tetrahedra are errors; a volume off by more than :data:`VOLUME_ERROR_WARN`, tissues the
    labels do not have, and tetrahedra with a dihedral angle below 5 deg or a radius ratio below
    0.1 (:data:`stimsim.mesh.checks.SLIVER_DIHEDRAL_DEG`, ``SLIVER_RADIUS_RATIO``) are warnings."""
    errors, warnings = [], []
    fix = ("; the tissue is too small or thin for this element size" + (f" ({h:g} mm)" if h else "")
           + ": use a smaller --element-size" + (" (or --method surface)" if method == "lattice" else "")
           + " or check the labels")
    vc = q.get("volume_check")
    if vc is None and voxel_volume_mm3:
        vc = volume_check(q["volume_mm3_per_tag"], voxel_volume_mm3)
    if vc:
        vox = voxel_volume_mm3 or {}
        parts = [f"{_name(t)} is in the labels ({_fmt_mm3(vox[t])}) but not in the mesh" if t in vox else
                 f"{_name(t)} is in the labels but not in the mesh" for t in vc["missing"]]
        parts += [f"{_name(t)} volume {100 * e:+.0f} % off its voxel volume" for t, e in vc["failed"].items()]
        if parts:
            errors.append("mesh check failed: " + "; ".join(parts) + f" (limit: every tissue present, volume within "
                          f"{100 * vc['fail']:.0f} %)" + fix)
        if vc["warned"]:
            warnings.append("mesh check: tissue volume off the voxel volume by more than "
                            f"{100 * vc['warn']:.0f} %: " + ", ".join(f"{_name(t)} {100 * e:+.1f} %"
                                                                     for t, e in vc["warned"].items()) + fix)
        if vc["extra"]:
            warnings.append("mesh check: tissues in the mesh that the labels do not have (a closing layer the mesher "
                            "added): " + ", ".join(f"{_name(t)} {_fmt_mm3(v)}" for t, v in vc["extra"].items()))
    el = q.get("elements")
    if el:
        m = el["n_tets"]
        dg = el["degenerate"]
        if dg["count"]:
            errors.append(f"mesh check failed: {dg['count']:,} of {m:,} tetrahedra are flat or inverted (first near "
                          f"{_at(dg)}); try another element size or --method")
        d, r = el["dihedral"], el["radius_ratio"]
        if d["count"]:
            warnings.append(f"mesh quality: {d['count']:,} of {m:,} tetrahedra ({100 * d['fraction']:.2g} %) have a "
                            f"dihedral angle below {d['threshold']:g} deg; worst {d['worst']:.3g} deg at {_at(d)}")
        if r["count"]:
            warnings.append(f"mesh quality: {r['count']:,} of {m:,} tetrahedra ({100 * r['fraction']:.2g} %) have a "
                            f"radius ratio below {r['threshold']:g}; worst {r['worst']:.2g} at {_at(r)}")
    return errors, warnings


def print_summary(q: dict, voxel_volume_mm3: dict[int, float] | None = None, console=None) -> None:
    """Print a :func:`quality_summary`: element counts and shape, the per-tissue volume table with
    the check verdicts, and the sliver counts with the worst elements."""
    from rich.console import Console
    from rich.table import Table

    from ...conductivity import tissue_name

    console = console or Console(stderr=True)
    console.print(f"{q['n_nodes']:,} nodes, {q['n_tets']:,} tetrahedra; min dihedral "
                  f"{q['min_dihedral_deg']:.3g} deg, radius ratio min {q['radius_ratio']['min']:.2g} "
                  f"median {q['radius_ratio']['median']:.3f}; inverted: {q['n_inverted']}",
                  markup=False, highlight=False, soft_wrap=True)
    vc = q.get("volume_check") or {}
    table = Table("tag", "tissue", "mesh mL", "voxel mL", "error", "check", "pieces", "largest")
    tags = sorted(set(q["volume_mm3_per_tag"]) | set(voxel_volume_mm3 or {}))
    for t in tags:
        v = q["volume_mm3_per_tag"].get(t, 0.0)
        vv = (voxel_volume_mm3 or {}).get(t)
        err = q.get("volume_error_per_tag", {}).get(t)
        verdict = ("FAIL" if t in vc.get("missing", ()) or t in vc.get("failed", {}) else
                   "WARN" if t in vc.get("warned", {}) or t in vc.get("extra", {}) else "ok") if vc else "-"
        c = q["connectivity"].get(t, {})
        table.add_row(str(t), tissue_name(t), f"{v / 1000:.1f}", "-" if vv is None else f"{vv / 1000:.1f}",
                      "-" if err is None else f"{100 * err:+.1f} %", verdict, str(c.get("pieces", "-")),
                      f"{100 * c.get('largest_fraction', 0):.1f} %")
    console.print(table)
    if vc:
        console.print(f"volume check: WARN above {100 * vc['warn']:.0f} %, FAIL above {100 * vc['fail']:.0f} % or a "
                      "tissue missing", markup=False, highlight=False, soft_wrap=True)
    el = q.get("elements")
    if el:
        d, r, dg = el["dihedral"], el["radius_ratio"], el["degenerate"]
        for what, e, unit in (("dihedral angle", d, " deg"), ("radius ratio", r, "")):
            line = (f"elements with {what} < {e['threshold']:g}{unit}: {e['count']:,} ({100 * e['fraction']:.2g} %)")
            if e["count"]:
                line += f", worst {e['worst']:.3g}{unit} at {_at(e)}"
            console.print(line + (" [WARN]" if e["count"] else ""), markup=False, highlight=False, soft_wrap=True)
        for e in el.get("poor", [])[:5]:
            console.print(f"  tet {e['tet']} ({tissue_name(e['tag'])}) at {e['at_mm']} mm: min dihedral "
                          f"{e['min_dihedral_deg']:.3g} deg, radius ratio {e['radius_ratio']:.3g}",
                          markup=False, highlight=False, soft_wrap=True)
        if el.get("poor_count", 0) > 5:
            console.print(f"  ... {el['poor_count'] - 5:,} more (the worst {len(el['poor'])} are listed in "
                          "the quality summary)", markup=False, highlight=False, soft_wrap=True)
        console.print(f"flat or inverted elements: {dg['count']}" + (" [FAIL]" if dg["count"] else ""),
                      markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# main entry
# ----------------------------------------------------------------------------------------------
@dataclass
class HeadMeshInfo:
    """What :func:`make_head_mesh` measured."""

    voxel_volume_mm3: dict
    cleaned_voxel_volume_mm3: dict
    islands_reassigned_voxels: dict
    closure_tets: int
    timings_s: dict
    cache_file: str | None = None
    method: str = "lattice"
    mesher: dict = field(default_factory=dict)  # the mesher's own report (surface: TetGen switches ...)
    from_cache: bool = False
    #: voxel volume per tag the mesh should hold (a tissue the surface mesher merged, ``merged_tags``,
    #: counted with the tissue it became)
    expected_volume_mm3: dict = field(default_factory=dict)
    #: :func:`quality_summary` of the mesh against ``expected_volume_mm3`` (with the element report)
    quality: dict = field(default_factory=dict)
    #: {label tag: mesh tag} of the tissues meshed as another (surface mesher: too thin for the elements)
    merged_tags: dict = field(default_factory=dict)
    #: {face: tissue tags}: faces of the volume that bone, CSF or brain touch (:func:`cut_faces`)
    cut_faces: dict = field(default_factory=dict)


#: ``method`` values of :func:`make_head_mesh` / ``stimsim mesh --method``
METHODS = ("auto", "surface", "lattice")
_LATTICE_WARNING = ("the lattice mesher closes thin tissue layers one element thick: on real heads CSF volume "
                    "can be off by ~+30 % and grey matter by ~-10 % (Colin27 at 3.2 mm); pip install tetgen "
                    "scikit-image for the surface mesher (volumes within ~2 %)")


def resolve_method(method: str = "auto") -> str:
    """``"auto"`` -> ``"surface"`` when ``tetgen`` and ``scikit-image`` import, else ``"lattice"``
    (with a logged warning naming the accuracy trade-off); ``"surface"`` without them is an error."""
    from .surface import available

    m = str(method).strip().lower()
    if m not in METHODS:
        raise MeshError(f"method {method!r}: use one of {', '.join(METHODS)}")
    if m == "auto":
        if available():
            return "surface"
        logger.warning("mesh method auto: tetgen / scikit-image not importable, using the lattice mesher; %s",
                       _LATTICE_WARNING)
        return "lattice"
    if m == "surface" and not available():
        raise MeshError("method surface needs the optional packages tetgen and scikit-image "
                        "(pip install tetgen scikit-image), or use method lattice")
    return m


def default_element_size(method: str) -> float:
    """Default ``element_size_mm`` of a (resolved) method: 3.2 mm lattice spacing, 8 mm surface."""
    if method == "surface":
        from .surface import DEFAULT_SURFACE_ELEMENT_SIZE_MM

        return DEFAULT_SURFACE_ELEMENT_SIZE_MM
    return DEFAULT_ELEMENT_SIZE_MM


_STEPS = {
    "lattice": {"clean labels": 1, "distance field": 1, "points + Delaunay": 5, "tags + closure": 3,
                "snap interfaces": 4, "finish": 1},
    "surface": {"clean labels": 1, "signed distances": 5, "surfaces": 1, "tetgen": 4, "tags": 2, "slivers": 1,
                "finish": 1},
}


class _Steps:
    """A rich progress bar (on stderr) over named, weighted steps; a no-op when disabled."""

    def __init__(self, enabled: bool, steps: dict):
        self.steps, self.prog, self.task = steps, None, None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.prog = Progress(TextColumn("[bold]mesh[/] {task.description:<28}"), BarColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=False)

    def __enter__(self):
        if self.prog:
            self.prog.start()
            self.task = self.prog.add_task(next(iter(self.steps)), total=sum(self.steps.values()))
        return self

    def __exit__(self, *exc):
        if self.prog:
            self.prog.stop()

    def start(self, name: str) -> None:
        """Step ``name`` begins: the bar shows every earlier step as done."""
        if self.prog and name in self.steps:
            names = list(self.steps)
            done = sum(self.steps[k] for k in names[:names.index(name)])
            self.prog.update(self.task, completed=done, description=name)

    def tick(self, amount: float) -> None:
        if self.prog:
            self.prog.advance(self.task, amount)


def _apply_lesion(tags: np.ndarray, affine: np.ndarray, lesion, lesion_tag: int) -> np.ndarray:
    """Give head voxels under the lesion mask ``lesion_tag`` (in place); return that mask."""
    lmask, laff = load_label_volume(lesion, None if isinstance(lesion, (str, os.PathLike)) else affine,
                                    what="lesion")
    if lmask.shape != tags.shape:
        raise MeshError(f"lesion: grid {lmask.shape} differs from the labels grid {tags.shape}; "
                        "resample the mask onto the label volume (nearest neighbour)")
    if not np.allclose(laff, affine, atol=1e-3):
        raise MeshError("lesion: its affine differs from the labels' affine (not the same space); "
                        "resample the mask onto the label volume")
    if not 0 < int(lesion_tag) < 250:
        raise MeshError(f"lesion_tag must be a tissue tag 1..249, got {lesion_tag}")
    under = (lmask > 0) & (tags > 0)
    if not under.any():
        raise MeshError("lesion: the mask does not overlap the head (no non-zero voxel inside a tissue)")
    tags[under] = int(lesion_tag)
    return under


def _voxel_volumes(counts: np.ndarray, voxel_mm3: float) -> dict:
    """mm^3 per tag from ``value_counts`` of a tag volume."""
    return {int(t): float(c) * voxel_mm3 for t, c in enumerate(counts) if t > 0 and c}


def _head_span(tags: np.ndarray, zooms) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Per axis, the first and last index holding a tissue (empty axes: (0, -1)), and the margin
    (voxels) the surface mesher's fields need around the head: wider than its signed-distance band
    and smoothing."""
    from .surface import SDF_BAND_MM

    zooms = np.asarray(zooms, float)
    margin = np.ceil(SDF_BAND_MM / zooms).astype(int) + 8
    head = tags > 0
    span = []
    for ax in range(3):
        hit = np.flatnonzero(head.any(axis=tuple(j for j in range(3) if j != ax)))
        span.append((int(hit[0]), int(hit[-1])) if len(hit) else (0, -1))
    return span, margin


def _head_box(tags: np.ndarray, zooms, align) -> tuple[slice, ...] | None:
    """The head's bounding box with the fields' margin (:func:`_head_span`; so the fields, and the mesh,
    are those of the whole volume), its low corner on a multiple of ``align`` voxels per axis (the
    surfaces' sub-grid keeps its place); None when that is the whole volume."""
    span, margin = _head_span(tags, zooms)
    box = []
    for ax, (first, last) in enumerate(span):
        lo = max(first - int(margin[ax]), 0) // int(align[ax]) * int(align[ax])
        hi = min(last + int(margin[ax]) + 1, tags.shape[ax])
        box.append(slice(lo, hi))
    if all(b.start == 0 and b.stop == n for b, n in zip(box, tags.shape)):
        return None
    return tuple(box)


def _head_box_voxels(tags: np.ndarray, zooms) -> int:
    """Voxels in the head's box with the fields' margin on every side, however little of it the volume
    holds (the grid the fields of a scan padded as usual are built on: the same head cropped tight or
    padded wide is meshed alike)."""
    span, margin = _head_span(tags, zooms)
    return int(np.prod([last - first + 1 + 2 * int(m) for (first, last), m in zip(span, margin)]))


_FACE_NAMES = {(0, 1): "right", (0, -1): "left", (1, 1): "anterior", (1, -1): "posterior", (2, 1): "superior",
               (2, -1): "inferior"}


def cut_faces(tags: np.ndarray, affine: np.ndarray) -> dict[str, list[int]]:
    """The faces of the volume that bone, CSF or brain (SimNIBS tags, by their layers) touch, named by
    the world direction they face (RAS: superior is +z): {face: sorted tags there}.  The inferior
    face is left out: most scans end in the neck, where bone and CSF run on (the mesh closes them
    with the neck's tissue).  Anywhere else the field of view cut the head: the mesh closes every
    layer across the cut, and fields near it are not those of the head."""
    from ...tissues import layer_lut

    lut = layer_lut(max(256, int(tags.max()) + 1))
    out = {}
    for ax in range(3):
        col = np.asarray(affine, float)[:3, ax]
        for end, sign in ((0, -1.0), (-1, 1.0)):
            normal = sign * col
            world = int(np.argmax(np.abs(normal)))
            name = _FACE_NAMES[(world, 1 if normal[world] > 0 else -1)]
            if name == "inferior":
                continue
            face = np.take(tags, end, axis=ax)
            inner = np.unique(face[lut[face] >= 2])
            if len(inner):
                out.setdefault(name, set()).update(int(t) for t in inner)
    return {k: sorted(v) for k, v in out.items()}


#: a layer is one voxel thick nearly everywhere when at least this share of its voxels have a face
#: neighbour in a layer outside it and one in a layer inside it (real heads: at most 12 %, Colin27's
#: CSF; 2 % on a 0.5 mm whole head)
ONE_VOXEL_LAYER_SHARE = 0.5
#: ... and then the surfaces are sampled at most this many voxels apart (a 0.5 mm layer came out +20 %
#: under the default 4 mm surface cells, within 0.01 % under 2 mm ones; 1 mm layers keep their volume
#: under 4 mm cells: surf-6.14, surf-6.18)
ONE_VOXEL_LAYER_CELL_VOXELS = 4
#: ... on heads of at most this many labelled voxels (half a 0.5 mm whole head: a whole one, 31 M, took
#: 165 s and 4.2 GB with 2 mm surfaces, against 34 s and 1.1 GB); larger ones are warned instead
ONE_VOXEL_LAYER_MAX_VOXELS = 16_000_000


def one_voxel_layers(tags: np.ndarray, every: int = 8) -> list[int]:
    """The layers (1 scalp ... 4 grey matter, :data:`stimsim.tissues.LAYER_OF_TAG`) that the labels
    make one voxel thick nearly everywhere (:data:`ONE_VOXEL_LAYER_SHARE`), counted on every
    ``every``-th slice along the last axis (a share; on the 0.5 mm whole head 0.7 s, all slices 8.7 s)."""
    lut = layer_lut(max(256, int(tags.max()) + 1)).astype(np.int8)
    nz = tags.shape[2]
    if nz < 3:
        return []
    zs = np.arange(1, nz - 1, max(1, min(int(every), (nz - 2) // 8 or 1)))
    here = lut[tags[:, :, zs]]
    outer = np.zeros(here.shape, bool)  # a face neighbour in a layer further out (or outside the head)
    inner = np.zeros(here.shape, bool)  # ... and one further in
    for dz in (-1, 1):  # across the slices
        nb = lut[tags[:, :, zs + dz]]
        outer |= nb < here
        inner |= nb > here
    for ax in range(2):  # within them
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        a, b = here[lo], here[hi]
        outer[lo] |= b < a
        inner[lo] |= b > a
        outer[hi] |= a < b
        inner[hi] |= a > b
    both = np.bincount(here[outer & inner], minlength=6)
    total = np.bincount(here.ravel(), minlength=6)
    return [k for k in (1, 2, 3, 4) if total[k] >= 64 and both[k] >= ONE_VOXEL_LAYER_SHARE * total[k]]


def csf_inside_brain_only(tags: np.ndarray, outside_fraction: float = 0.05) -> bool:
    """Does (nearly) all of the CSF (tag 3) lie inside the brain's filled envelope: the ventricles
    labelled, the CSF around the brain not (at most ``outside_fraction`` of the CSF voxels outside the
    envelope)?  Blood is not counted: venous sinuses lie outside the brain whatever the CSF does.
    The surface mesher then meshes the CSF inside the brain's layers (:func:`_csf_into_brain`)."""
    layer = layer_lut(max(256, int(tags.max()) + 1)).astype(np.int8)[tags]
    csf = tags == 3
    n = int(np.count_nonzero(csf))
    if not n or not (layer >= 4).any():
        return False
    for ax in range(3):  # CSF against bone or scalp over a whole slab: a layer around the brain (fast)
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        ca, cb = csf[tuple(lo)], csf[tuple(hi)]
        a, b = layer[tuple(lo)], layer[tuple(hi)]
        if np.count_nonzero((ca & (b < 3) & (b > 0)) | (cb & (a < 3) & (a > 0))) > outside_fraction * n:
            return False
    return np.count_nonzero(csf & ~fill_holes(layer >= 4)) <= outside_fraction * n


def slice_split(zooms, surface_step: int) -> np.ndarray:
    """Per axis, into how many voxels the surface mesher splits each voxel of a grid of ``zooms`` (mm)
    whose surfaces are sampled every ``surface_step`` voxels of its finest axis: an axis at least twice
    as coarse as the fields need (the finest axis, or a quarter of the sampling where that is coarser,
    as :func:`~stimsim.head.meshers.surface.label_grid_factors` coarsens to) is split into as many whole
    voxels of at least that size as fit."""
    zooms = np.asarray(zooms, float)
    need = max(float(zooms.min()), int(surface_step) * float(zooms.min()) / 4.0)
    # whole voxels no finer than that: finer ones would lower the finest axis, and with it the
    # sampling step (1 x 1 x 1.5 mm split in two: surfaces every 3 mm, 47 % more tetrahedra)
    return np.maximum(1, np.floor(zooms / need + 1e-6)).astype(int)


def _split_voxels(a: np.ndarray, up) -> np.ndarray:
    for ax, u in enumerate(up):
        if u > 1:
            a = a.repeat(int(u), axis=ax)
    return a


def _split_affine(up) -> np.ndarray:
    """voxel -> voxel map of a grid whose voxels are split ``up`` times: the new voxel centres lie
    inside the old voxels, evenly (each old voxel's centre is the mean of its new ones)."""
    up = np.asarray(up, float)
    m = np.diag(list(1.0 / up) + [1.0])
    m[:3, 3] = (1.0 / up - 1.0) / 2.0
    return m


#: when TetGen refuses the head surfaces, they are built again with the minimum layer thicknesses
#: scaled by these factors in turn (surfaces held further apart; docs/meshing.md, top section)
TETGEN_RETRY_THICKNESS_FACTORS = (1.5, 2.25)


def _surface_mesh_retrying(tags, cavity, zooms, h, retry_factors=TETGEN_RETRY_THICKNESS_FACTORS, **opts):
    """:func:`~.surface.surface_mesh_from_tags`; where TetGen refuses the head surfaces (two of them touching
    where the labels put a thin layer between tissues that fold into each other), again without the
    lower minimums of the bone and the CSF where they are thin in places when there were any
    (``surface._local_floors``), then with the minimum layer thicknesses scaled by each of
    ``retry_factors`` in turn, without those lower minimums: a mesh with that layer a little thick there
    instead of no mesh.  The retries are logged and listed in the info (``"tetgen_retries"``,
    ``"thickness_scale"``, the one that passed, and ``"local_floors"``: whether the mesh has the lower
    minimums).  Only TetGen's refusals are retried."""
    from . import surface

    base = float(opts.get("thickness_scale", 1.0))
    thin = float(opts.get("thin_layer_scale", 0.0))  # (thin layers' floors: raised with the rest)
    # the lower minimums in thin places only as asked (their gate reads the thicknesses of the try:
    # scaled ones would give them to 1 mm labels, in the places the scaling is for)
    attempts = [(1.0, bool(opts.get("local_floors", True)))] + [(float(f), False) for f in retry_factors]
    tried = []
    i = 0
    while i < len(attempts):
        factor, local = attempts[i]
        try:
            out = surface.surface_mesh_from_tags(tags, cavity, zooms, h, **{**opts, "thickness_scale": base * factor,
                                                                               "thin_layer_scale": thin * factor,
                                                                               "local_floors": local})
        except surface.TetGenFailed as exc:
            tried.append({"thickness_scale": base * factor, "factor": factor, "error": exc.reason,
                          "local_floors": local})
            if local and exc.thin_in_places and retry_factors:
                # those lower minimums let two surfaces meet (a 0.8 mm Colin27 did): the same thicknesses
                # without them next (the surfaces of surf-6.24), then the thicker ones
                attempts.insert(i + 1, (factor, False))
            i += 1
            if i < len(attempts):
                nf, _ = attempts[i]
                logger.warning("TetGen refused the head surfaces (%s); building them again %s", exc.reason,
                               f"with the minimum layer thicknesses x{nf:g}" if nf != factor else
                               "without lower minimums in thin places")
            continue
        if tried:
            out[3]["tetgen_retries"] = tried
            out[3]["thickness_scale"] = base * factor
        out[3]["local_floors"] = local
        return out
    factors = list(dict.fromkeys(t["factor"] for t in tried))  # (the same factor without lower minimums once)
    raise surface.TetGenFailed(tried[0]["error"], factors)


@hugepage_advice_off
def make_head_mesh(labels, affine=None, label_map_spec="simnibs", *, method: str = "auto",
                   element_size_mm: float | None = None, lesion=None, lesion_tag: int = 3, progress: bool = True,
                   cache: bool = True, return_info: bool = False, surface_options: dict | None = None,
                   check: bool = True, surface_size_mm: float | None = None):
    """Build a tetrahedral head mesh (SimNIBS tags, mm, world frame) from a label volume.

    Parameters
    ----------
    labels : NIfTI path or integer 3-D array (then ``affine`` gives its voxel->mm map)
    affine : 4x4 voxel->world (mm) matrix; read from the file when None
    label_map_spec : ``"simnibs"``, ``"roast"``, ``"colin27"``, a TSV path or a dict label->tag
    method : ``"surface"`` (nested smoothed surfaces + TetGen, :mod:`stimsim.head.meshers.surface`;
        needs ``tetgen`` and ``scikit-image``), ``"lattice"`` (BCC lattice, this module; pip wheels
        only, but thin layers cost volume accuracy) or ``"auto"`` (surface when it can, see
        :func:`resolve_method`)
    element_size_mm : lattice: BCC spacing (mean edge ~0.9x this, default 3.2); surface: edge of
        the largest (regular) tet, the surfaces are sampled at ``surface_size_mm`` (default 8)
    surface_size_mm : surface mesher only: the spacing at which the tissue surfaces are sampled, about
        their triangles' edge (default half of ``element_size_mm``: sizes graded from the surfaces
        to ``element_size_mm`` inside; equal to it: about uniform sizes, as a gmsh sphere has)
    lesion : NIfTI path or bool array on the same grid; head voxels under it get ``lesion_tag``
        before meshing, and the lesion stays that tag in the mesh
    lesion_tag : SimNIBS tag for the lesion (default 3 = CSF, i.e. CSF conductivity); a new tag
        such as 11 works if the protocol gives it a conductivity
    progress : show a rich progress bar (stderr)
    cache : reuse / store the result under :func:`cache_dir` keyed by the input hash (tags, affine,
        method and its version and options, element size, lesion mask and tag)
    return_info : also return a :class:`HeadMeshInfo`
    surface_options : keyword arguments for
        :func:`stimsim.head.meshers.surface.surface_mesh_from_tags` over
        :func:`~stimsim.head.meshers.surface.surface_defaults`
    check : refuse label volumes too small to mesh (:func:`check_meshable`) and meshes that lose a
        tissue, miss a tissue's voxel volume by more than 50 % or hold flat / inverted tetrahedra
        (:func:`assess_quality`); either way the quality report goes to ``info.quality`` and its
        warnings (volume off by > 5 %, dihedral angles < 5 deg, radius ratios < 0.1) to the log.
        See docs/mesh_checks.md.

    Raises
    ------
    MeshError (one line naming the problem) for bad input or a mesh that fails the checks; nothing
    is written (nor cached) then.
    """
    t_start = time.perf_counter()
    method = resolve_method(method)
    h = float(default_element_size(method) if element_size_mm is None else element_size_mm)
    if not np.isfinite(h) or h <= 0:
        raise MeshError(f"element_size_mm must be a positive number, got {element_size_mm!r}")
    data, affine = load_label_volume(labels, affine)
    tags = apply_label_map(data, label_map(label_map_spec))
    if not (tags > 0).any():
        raise MeshError("labels: no voxel maps to a tissue (the volume is empty or all background)")
    # to 1e-6 mm: a rotated affine stored as float32 (NIfTI) has column norms 1 +- 3e-8, which moved
    # ties in the surfaces' fields (Colin27 rotated 15 deg: 381,585 tetrahedra instead of its 381,041)
    zooms = np.linalg.norm(affine[:3, :3], axis=0).round(6)
    k = _nesting_step(zooms)
    raw_sub = (data if k == 1 else data[::k, ::k, ::k].copy()) if check else None  # (the nesting check's hint)
    del data
    if h < 0.5 * zooms.min():
        raise MeshError(f"element_size_mm={h} is below half the voxel size {zooms.min():.3g} mm")
    if surface_size_mm is not None:
        if method != "surface":
            raise MeshError(f"surface_size_mm is an option of method='surface', not {method!r}; leave it out")
        if not np.isfinite(float(surface_size_mm)) or not 0.5 * zooms.min() <= float(surface_size_mm) <= 2 * h:
            # coarser surfaces than that lose thin layers (twice the element size on a folded head: GM +66 %)
            raise MeshError(f"surface_size_mm must lie between half the voxel size ({0.5 * zooms.min():.3g} mm) "
                            f"and twice the element size ({2 * h:.3g} mm), got {surface_size_mm!r}")
    lmask = orig = user_grid = None
    user_stand_ins, user_mm3 = {}, {}  # a user's tag's pieces in its other layers (_user_stand_ins)
    sulcal_mm3 = sulcal_s = 0.0  # CSF meshed as a tissue of the brain's layers (surface mesher, sulcal_csf)
    fold_mm3 = {}  # the same per tag (CSF, blood)
    if lesion is not None:
        if method == "surface":  # it builds its surfaces from the tissue under the lesion
            orig = tags.copy()
        lmask = _apply_lesion(tags, affine, lesion, lesion_tag)
    # (the surface mesher builds its layers from the tissue under a lesion: a CSF lesion is no CSF here)
    own_stand_ins = bool(np.isin(tags, list(_INSIDE_BRAIN.values())).any())  # (a user's own tags 251, 252)
    voxel_mm3 = float(np.prod(zooms))
    tag_counts = value_counts(tags, minlength=256)  # (the labels as they are: the volumes the mesh should hold)
    user_layers = {}
    if method == "surface":
        # a user's tissue inside another layer than the grey matter's (a tumour in the white matter, a
        # plate in the skull): meshed inside that layer; the checks and rules below read it as that
        # layer's tissue (a dura-like sheet of a user's tag outside the CSF read as brain: "the CSF lies
        # only inside the brain")
        # ... as pieces of bone apart from the skull and outside it (a mandible): a tissue inside the scalp
        taken = [*np.flatnonzero(tag_counts), *_INSIDE_BRAIN.values(), int(lesion_tag),
                 *(() if orig is None else np.flatnonzero(value_counts(orig, minlength=256)))]
        # (found on the tissues under a lesion: a lesion across a mandible left less than 1 mL of it as bone)
        bone_apart = (_bone_apart_stand_ins(tags, zooms, taken) if orig is None
                      else _bone_apart_stand_ins(orig, zooms, taken, others=(tags,)))
        user_layers, elsewhere, hosts = enclosing_layers(tags if orig is None else orig,
                                                         exclude=() if own_stand_ins else _INSIDE_BRAIN.values())
        # (such a piece's voxels outside its layer, a corner-joined speck in the air, or a piece placed in no
        # layer: bone as before)
        back = {v: t for v, t in bone_apart.items() if user_layers.get(v) is None or v in elsewhere}
        if back:
            box, voxel_host = hosts
            for v, t in back.items():
                for a in (tags,) if orig is None else (tags, orig):
                    sub = a[box]
                    sub[(sub == v) & (voxel_host != user_layers.get(v, -1))] = t
                if not np.any((tags if orig is None else orig)[box] == v):
                    del bone_apart[v]
            user_layers, elsewhere, hosts = enclosing_layers(tags if orig is None else orig,
                                                             exclude=() if own_stand_ins else _INSIDE_BRAIN.values())
        if user_layers:
            logger.info("labels: %s meshed inside the layer that encloses them (%s)",
                        ", ".join(_name(bone_apart.get(t, t)) for t in user_layers),
                        ", ".join("/".join(_name(LAYER_FILL_TAG[k]) for k in (user_layers[t], *elsewhere.get(t, ())))
                                  for t in user_layers))
            # the surfaces see the enclosing layer's tissue in their voxels, the tissues inside the
            # layers (and the vertices on their walls) the user's tags (kept apart here)
            src = tags if orig is None else orig
            user_grid = np.where(np.isin(src, list(user_layers)), src, np.zeros((), src.dtype))
            del src
            user_stand_ins = _user_stand_ins(user_grid, hosts, user_layers, elsewhere, [*taken, *bone_apart])
            user_stand_ins.update({v: (t, user_layers[v]) for v, t in bone_apart.items() if v in user_layers})
            for v, (tag, _) in user_stand_ins.items():  # (what each holds, outside the lesion)
                n = np.count_nonzero(user_grid == v) if lmask is None else np.count_nonzero((user_grid == v) & ~lmask)
                user_mm3[v] = n * voxel_mm3
            _into_enclosing_layers(tags, hosts, keep=lmask)
            if orig is not None:
                _into_enclosing_layers(orig, hosts)
        del hosts
    inner_csf = method == "surface" and not own_stand_ins and csf_inside_brain_only(tags if orig is None else orig)
    cut = cut_faces(tags, affine)
    raw_vol = _voxel_volumes(tag_counts, voxel_mm3)
    counts, merged = expected_tags(tags, method, lmask, lesion_tag, counts=tag_counts)
    del tag_counts
    expected = {t: n * voxel_mm3 for t, n in counts.items()}
    lesion_mm3 = float(np.count_nonzero(lmask)) * voxel_mm3 if lmask is not None else None
    if check:
        check_meshable(tags, zooms, h, _layer_counts(counts, lmask, lesion_tag, inner_csf) if method == "surface"
                       else counts,
                       small_ok=(int(lesion_tag),) if lmask is not None and method == "surface" else ())
        check_one_head(tags, zooms)
        check_layers_nest(tags if orig is None else orig, zooms, raw_sub, label_map_spec)
    del raw_sub
    # (said after the checks: labels read with the wrong map got three warnings of white matter at the
    # volume's faces before the error that names the map)
    if inner_csf:
        logger.warning("labels: the CSF lies only inside the brain (the ventricles; no CSF labelled around it): "
                       "meshed as a tissue inside the brain's layer, with no CSF layer around the brain")
    for face, t in cut.items():
        logger.warning("labels: %s touch the volume's %s face: the field of view cuts the head there; the mesh "
                       "closes it with thin layers, and fields near that face are not the head's",
                       ", ".join(_name(x) for x in t), face)

    if inner_csf:  # after the volumes and checks above, which read the tags as the labels have them
        inner_csf = _enclosing_brain_layer(tags if orig is None else orig)
        _csf_into_brain(tags, lmask)
        if orig is not None:
            _csf_into_brain(orig, None)
    thin_surface_for = []
    if method == "surface" and surface_size_mm is None and not (surface_options or {}).get("surface_step"):
        # a layer one voxel thick everywhere on voxels finer than a millimetre is thinner than the
        # default surface cells hold: sample the surfaces finer (only then: the test is a pass over the grid)
        thin_cell = ONE_VOXEL_LAYER_CELL_VOXELS * float(np.min(zooms))
        if thin_cell < 0.5 * h - 1e-9:
            thin_surface_for = one_voxel_layers(tags if orig is None else orig)
            names = ", ".join(_name(LAYER_FILL_TAG[k]) for k in thin_surface_for)
            if thin_surface_for and np.count_nonzero(tags) <= ONE_VOXEL_LAYER_MAX_VOXELS:
                surface_size_mm = thin_cell
                logger.info("labels: %s one voxel (%.3g mm) thick nearly everywhere: surfaces sampled every "
                            "%.3g mm instead of %.3g", names, float(np.min(zooms)), thin_cell, 0.5 * h)
            elif thin_surface_for:
                logger.warning("labels: %s one voxel (%.3g mm) thick nearly everywhere: the default surfaces "
                               "(every %.3g mm) make such a layer up to ~20 %% too thick; --surface-size %.3g keeps "
                               "its volume (on a head this size: minutes and several GB)", names,
                               float(np.min(zooms)), 0.5 * h, thin_cell)
                thin_surface_for = []
    if method == "surface":
        from .surface import (SURFACE_MESHER_VERSION, budget_may_coarsen, csf_min_thickness_mm, label_grid_factors,
                              surface_defaults)

        opts = {**surface_defaults(h, zooms, surface_size_mm), **(surface_options or {})}
        if "thickness_scale" in (surface_options or {}):
            if "thin_layer_scale" not in surface_options:
                opts["thin_layer_scale"] = 0.0  # thicknesses the caller chose are kept, thin layers' too
            if "min_thickness_mm" not in surface_options:  # the CSF's for the caller's scale
                opts["min_thickness_mm"] = csf_min_thickness_mm(opts["thickness_scale"])
        opts["surface_step"] = int(opts.get("surface_step") or 2)  # None: the mesher's own default
        sulcal_r = opts.pop("sulcal_csf_radius_mm", None)  # None: half the surfaces' sampling
        if sulcal_r is None:
            sulcal_r = SULCAL_RADIUS_OF_SPACING * opts["surface_step"] * float(np.min(zooms))
        sulcal_r = float(sulcal_r)
        if sulcal_r > 0 and own_stand_ins:
            logger.info("labels hold tags %s, which the surface mesher uses for CSF inside the brain: the CSF in "
                        "the folds is meshed in the CSF layer", sorted(_INSIDE_BRAIN.values()))
        if sulcal_r > 0 and not inner_csf and not own_stand_ins:
            # CSF in folds narrower than the surfaces can enter: meshed as a tissue of the brain's layers
            # (the stand-in roams over them, as ventricles-only CSF does), so that the grey-matter surface
            # encloses it and the CSF layer holds only the CSF around the brain (docs/meshing.md, surf-6.9)
            # (on the voxels as they are: thick slices split first would show their staircase as folds)
            t = time.perf_counter()
            src = tags if orig is None else orig
            fold = sulcal_csf(src, zooms, sulcal_r, lmask)
            n_fold = int(np.count_nonzero(fold & (src == 3)))
            if n_fold >= max(64, SULCAL_MIN_FRACTION * counts.get(3, 0)):
                # blood there too (a sinus in the fissure): enclosed by the grey-matter surface, only the
                # CSF layer's tetrahedra could take it (charm-like head at 12 mm: blood -31 %)
                for tag, stand_in in _INSIDE_BRAIN.items():
                    m = fold & (src == tag)
                    fold_mm3[tag] = float(np.count_nonzero(m)) * voxel_mm3
                    tags[m] = stand_in
                    if orig is not None:
                        orig[m] = stand_in
                sulcal_mm3 = fold_mm3[3]
            del fold, src
            sulcal_s = time.perf_counter() - t
        up = slice_split(zooms, opts["surface_step"])
        if (up > 1).any():
            # thick slices (a 1 x 1 x 2 mm scan): the surfaces are sampled every few voxels of the finest
            # axis, so along the thick one every 8 mm (1 x 1 x 2 mm Colin27: 408 tetrahedra below the
            # bounds, the white matter in two pieces); split them so that the voxels are about cubes
            tags, lmask, orig, user_grid = (None if a is None else _split_voxels(a, up)
                                            for a in (tags, lmask, orig, user_grid))
            affine = affine @ _split_affine(up)
            zooms = zooms / up
            voxel_mm3 = float(np.prod(zooms))
            logger.info("voxels of %s mm split %s times: surfaces sampled alike along every axis",
                        " x ".join(f"{z * u:.3g}" for z, u in zip(zooms, up)), "x".join(map(str, up)))
        # (a surface step the caller sets counts voxels of the labels' grid: no copy beyond what it allows)
        own_step = bool((surface_options or {}).get("surface_step"))
        count = not own_step and budget_may_coarsen(opts["surface_step"], zooms)
        factors = label_grid_factors(opts["surface_step"], zooms, _head_box_voxels(tags, zooms) if count else 0)
        spacing_mm = opts["surface_step"] * float(np.min(zooms))  # the surfaces' sampling, kept on a coarse copy
        # on a copy, every whole number of blocks no wider than that sampling (0.6 mm labels sample every
        # 7 voxels, 4.2 mm: on 1.2 mm blocks every 3, 3.6 mm, not 4.8 mm)
        coarse_step = max(1, int(np.floor(spacing_mm / float(np.min(zooms * factors)) + 1e-6)))
        coarse_opts = {}
        if (factors > 1).any():
            # ... with the minimum thicknesses of that sampling (they keep its surfaces from crossing)
            fit = surface_defaults(h, zooms * factors, coarse_step * float(np.min(zooms * factors)))
            coarse_opts = {key: fit[key] for key in ("thickness_scale", "min_thickness_mm")
                           if key not in (surface_options or {})
                           and not (key == "min_thickness_mm" and "thickness_scale" in (surface_options or {}))}
            coarse_opts["surface_step"] = coarse_step
        extra = (f"surface|{SURFACE_MESHER_VERSION}|{sorted(opts.items())}|{sorted(coarse_opts.items())}"
                 f"|sulcal{sulcal_r:.6g}")
        if (factors > 1).any():
            extra += f"|grid{factors.tolist()}"
    else:
        opts, extra = {}, f"lattice|{MESHER_VERSION}"
    if user_grid is not None:  # (the tags hold the layers' tissues there)
        extra += f"|user:{hashlib.sha256(np.ascontiguousarray(user_grid).tobytes()).hexdigest()[:16]}"
    if lmask is not None:
        extra += f"|lesion{int(lesion_tag)}:{hashlib.sha256(np.packbits(lmask).tobytes()).hexdigest()[:16]}"
        if orig is not None:  # the tissue under the lesion, from which the surface mesher builds its surfaces
            under = np.ascontiguousarray(orig[lmask], np.uint8).tobytes()
            extra += f"|under:{hashlib.sha256(under).hexdigest()[:16]}"
    cfile = cache_dir() / "heads" / f"{_cache_key(tags, affine, h, extra)}.msh" if cache else None
    mesh = _cache_read(cfile)
    if mesh is not None:
        merged, expected = _sub_tissues_merged(mesh, expected, method, lesion_mm3, lesion_tag, inner_csf,
                                               user_layers)
        info = HeadMeshInfo(raw_vol, raw_vol, {}, 0, {}, str(cfile), method, _cached_report(cfile),
                            from_cache=True, expected_volume_mm3=expected, merged_tags=merged, cut_faces=cut)
        info.quality = _check_result(mesh, expected, h, method, check, info.timings_s)
        info.timings_s["total_s"] = time.perf_counter() - t_start
        return (mesh, info) if return_info else mesh

    coarse_s, coarse = 0.0, None
    if method == "surface":
        # a scan's field of view is often twice the head's box (a 0.5 mm volume of 394 x 466 x 620
        # voxels): every field below is computed over the whole grid, so mesh the head's box
        t = time.perf_counter()
        # the corner on whole blocks and whole sub-grid cells of the (coarse) grid
        box = _head_box(tags, zooms, factors * coarse_step if (factors > 1).any() else [opts["surface_step"]] * 3)
        if box is not None:
            tags = tags[box]
            lmask = None if lmask is None else lmask[box]
            orig = None if orig is None else orig[box]
            user_grid = None if user_grid is None else user_grid[box]
            shift = np.eye(4)
            shift[:3, 3] = [b.start for b in box]
            affine = affine @ shift
        coarse_s = time.perf_counter() - t
    if method == "surface" and (factors > 1).any():
        # surfaces sampled every 4 mm do not need 0.5 mm fields: mesh a coarser copy of the layers
        # (label_grid_factors), calibrated to the volumes of this grid's voxels
        from .surface import downsample_layers

        t = time.perf_counter() - coarse_s
        base = tags if lmask is None else np.where(lmask & (tags > 0), orig, tags)
        ctags, clmask, bone_voxels, csf_voxels, to_fine, layer_voxels, pieces = downsample_layers(
            base, factors, lmask, min_piece_voxels=int(500 / voxel_mm3))
        if inner_csf or sulcal_mm3:
            # blocks of the brain holding CSF meshed inside it keep its stand-in tag (the same layer):
            # the CSF sheet rule counts them as CSF (charm-like 0.5 mm head: 42 % of the re-tagged
            # sheet lay next to the folds, bone -1.3 %)
            _mark_blocks(ctags, base, factors, _INSIDE_BRAIN.values())
        # tissues inside a layer (eyes, muscle, compact / spongy bone) are read off these labels
        if user_grid is not None:  # (the user's tissues, read off the labels as they are)
            base = np.where(user_grid > 0, user_grid, base)
        sub_labels = ((base, zooms, (factors - 1) / 2.0 * zooms, lmask)
                      if inner_csf or sulcal_mm3 or user_stand_ins or _layer_counts(counts) != counts else None)
        layer_mm3 = layer_voxels * voxel_mm3
        del base
        if clmask is None or clmask.any():  # a lesion smaller than half a block keeps the voxel grid
            opts = {**opts, **coarse_opts, "layer_volume_mm3": layer_mm3, "bone_voxels": bone_voxels,
                    "csf_voxels": csf_voxels, "pieces": pieces, "sub_tissue_labels": sub_labels}
            if lmask is not None:  # tetrahedra are lesion by the mask as drawn (coarse: +8 % on a 6 mm ball)
                opts["lesion_voxels"] = (lmask, zooms, (factors - 1) / 2.0 * zooms)
            if clmask is not None:
                orig = ctags.copy()
                ctags[clmask] = int(lesion_tag)
            tags, lmask, affine = ctags, clmask, affine @ to_fine
            coarse = [int(v) for v in factors]
            zooms = zooms * factors
            logger.info("labels finer than surfaces every %.3g mm need: meshed on a copy in %s-voxel blocks "
                        "(%s mm)", spacing_mm, "x".join(map(str, coarse)), " x ".join(f"{z:.3g}" for z in zooms))
            voxel_mm3 = float(np.prod(zooms))
        del ctags, clmask, bone_voxels, csf_voxels, pieces, sub_labels
        coarse_s = time.perf_counter() - t

    with _Steps(progress, _STEPS[method]) as steps, _KeptWarnings() as kept:
        t = time.perf_counter()
        keep = lmask
        if inner_csf or sulcal_mm3:
            # CSF meshed inside the brain comes in many small pieces (each sulcus, each ventricle horn),
            # which the tissue pass calibrates to their voxel volume: moved here, they counted twice
            # (charm-like head: 17.7 of 81.4 mL moved, CSF +2.0 %)
            keep = np.isin(tags, list(_INSIDE_BRAIN.values())) if lmask is None else lmask | np.isin(
                tags, list(_INSIDE_BRAIN.values()))
        tags, moved, kept_pieces = _clean_islands(tags, zooms, keep=keep, connectivity=6 if method == "lattice" else 26,
                                                  kept_mm3=0.0 if method == "lattice" else ISLAND_KEPT_MM3)
        del keep
        clean_vol = _voxel_volumes(value_counts(tags), voxel_mm3)
        if inner_csf or sulcal_mm3:  # reported under the labels' own tags
            for tag, stand_in in _INSIDE_BRAIN.items():
                if stand_in in clean_vol:
                    clean_vol[tag] = clean_vol.get(tag, 0.0) + clean_vol.pop(stand_in)
                if stand_in in moved:
                    moved[tag] = moved.get(tag, 0) + moved.pop(stand_in)
        cav = air_cavities(tags)
        timings = {"clean_s": time.perf_counter() - t}
        if coarse_s:
            timings["label_grid_s"] = coarse_s  # cropping to the head, coarsening
        if sulcal_s:
            timings["sulcal_csf_s"] = sulcal_s
        if method == "lattice":
            nodes, tets, ttags, minfo = lattice_tets(tags, cav, zooms, h, lmask, steps)
        else:
            stags = tags if lmask is None else np.where(lmask & (tags > 0), orig, tags)
            del orig
            if user_grid is not None and coarse is None:  # (on a coarse copy: its sub-tissue labels have them)
                opts = {**opts, "sub_tissue_labels": (np.where(user_grid > 0, user_grid, stags), zooms, 0.0, lmask)}
            user_grid = None
            roaming = {t: (4, 5) for t in _INSIDE_BRAIN.values()} if inner_csf or sulcal_mm3 else None
            # what each tissue should hold: the labels' volumes (the check's), not those of the cleaned
            # copy meshed here (islands moved to their neighbours), outside the lesion
            want = {t: v - (lesion_mm3 if lesion_mm3 and t == int(lesion_tag) else 0.0) for t, v in expected.items()}
            if inner_csf:
                want = {_INSIDE_BRAIN.get(t, t): v for t, v in want.items()}
            elif sulcal_mm3:
                for tag, v in fold_mm3.items():
                    if v > 0:
                        want[tag], want[_INSIDE_BRAIN[tag]] = want[tag] - v, v
            for v, (tag, _) in user_stand_ins.items():
                want[tag], want[v] = want[tag] - user_mm3[v], user_mm3[v]
            # thicknesses the caller chose are kept: no retry with others (the shipped mesh's recipe)
            retry = () if "thickness_scale" in (surface_options or {}) else TETGEN_RETRY_THICKNESS_FACTORS
            nodes, tets, ttags, minfo = _surface_mesh_retrying(
                stags, cav, zooms, h, retry_factors=retry, lesion=lmask, lesion_tag=lesion_tag, progress_cb=steps.start,
                sub_tissue_roaming=roaming,
                sub_tissue_never_merged=tuple(_INSIDE_BRAIN.values()) if sulcal_mm3 else (),
                sub_tissue_part_of={_INSIDE_BRAIN[3]: 3} if sulcal_mm3 else None,
                sub_tissue_joined={_INSIDE_BRAIN[9]: 9} if sulcal_mm3 else None,
                sub_tissue_volumes_mm3=want, sub_tissue_layer_of=user_layers or None, **opts)
        timings.update(minfo.pop("timings_s", {}))
        neighbors = minfo.pop("tet_neighbors", None)  # (the surface mesher's; the lattice's info has none)
        if sulcal_mm3:
            fold_tets = tets[ttags == _INSIDE_BRAIN[3]]
            minfo["sulcal_csf"] = {"radius_mm": sulcal_r, "voxel_mm3": sulcal_mm3,
                                   "blood_voxel_mm3": fold_mm3.get(9, 0.0),
                                   "mesh_mm3": float(np.abs(signed_volumes(nodes, fold_tets)).sum())}
            del fold_tets
        if user_layers:
            sub = minfo.get("sub_tissues") or {}
            for v, (tag, k) in user_stand_ins.items():
                ttags[ttags == v] = tag
                if v in sub.get("merged", {}):
                    logger.warning("the surface mesher meshes the piece(s) of %s inside the %s layer as %s: too "
                                   "small for the elements (a smaller --element-size keeps them)", _name(tag),
                                   _name(LAYER_FILL_TAG[k]), _name(sub["merged"][v]))
            sub["layers"] = {k: sorted({user_stand_ins.get(t, (t,))[0] for t in v})
                             for k, v in sub.get("layers", {}).items()}
            lost = [list(user_stand_ins[t]) for t in sub.get("merged", {}) if t in user_stand_ins]
            sub["merged"] = {t: u for t, u in sub.get("merged", {}).items() if t not in user_stand_ins}
            minfo["user_tissues"] = {"layers": {int(t): int(k) for t, k in user_layers.items() if t not in user_stand_ins},
                                     "pieces_elsewhere": sorted(list(tk) for tk in user_stand_ins.values()),
                                     "pieces_merged": lost}
        if inner_csf or sulcal_mm3:
            for tag, stand_in in _INSIDE_BRAIN.items():
                ttags[ttags == stand_in] = tag
            sub = minfo.get("sub_tissues") or {}
            back = {v: k for k, v in _INSIDE_BRAIN.items()}
            sub["layers"] = {k: [back.get(t, t) for t in v] for k, v in sub.get("layers", {}).items()}
            sub["merged"] = {back.get(t, t): back.get(u, u) for t, u in sub.get("merged", {}).items()}
        minfo["element_size_mm"] = h
        if method == "surface":  # as sampled: on a coarse copy, its step times its (block) voxel size
            minfo["surface_size_mm"] = int(opts["surface_step"]) * float(np.min(zooms))
            if thin_surface_for:  # (one_voxel_layers: the surfaces sampled finer for them)
                minfo["one_voxel_layers"] = thin_surface_for
        if coarse:
            minfo["label_grid_factors"] = coarse
        steps.start("finish")
        if not len(tets):
            raise MeshError(f"the {method} mesher made no tetrahedra of these labels (tissues {sorted(counts)}); "
                            "use a smaller --element-size or check the labels")
        mesh, neighbors = _world_mesh(nodes, tets, ttags, zooms, affine, method, neighbors)
        if kept_pieces:
            from ...conductivity import tissue_name

            # the pieces of 1 mL or more the surfaces keep apart from their tissue's main piece: said where
            # the mesh lost one (a 5 mL piece of white matter went to grey matter in silence, surf-6.23)
            tag_of = {**{v: k for k, v in _INSIDE_BRAIN.items()}, **{v: tk[0] for v, tk in user_stand_ins.items()}}
            minfo["pieces_apart"] = _pieces_in_mesh(mesh, kept_pieces, affine, voxel_mm3, tag_of)
            for p in minfo["pieces_apart"]:
                if p["share"] < PIECE_KEPT_SHARE:
                    logger.warning("labels: a %s piece of %s apart from its main piece, at (%s) mm, is only %.0f %% "
                                   "%s in the mesh (a smaller --element-size may keep more)", _fmt_mm3(p["mm3"]),
                                   _name(p["tag"]), ", ".join(f"{x:.0f}" for x in p["at_mm"]), 100 * p["share"],
                                   tissue_name(p["tag"]))
        del kept_pieces
    if kept.messages:  # (what the labels and the meshing lost; the checks below are made again on a cached mesh)
        minfo["warnings"] = kept.messages
    report_complete = kept.complete
    merged, expected = _sub_tissues_merged(mesh, expected, method, lesion_mm3, lesion_tag, inner_csf, user_layers)
    info = HeadMeshInfo(raw_vol, clean_vol, moved, int(minfo.pop("closure_tets", 0)), timings, None, method, minfo,
                        expected_volume_mm3=expected, merged_tags=merged, cut_faces=cut)
    info.quality = _check_result(mesh, expected, h, method, check, timings, neighbors)
    timings["total_s"] = time.perf_counter() - t_start
    if (info.mesher.get("slivers") or {}).get("skipped") or info.mesher.get("tetgen_retries"):
        # not what its key promises other processes: a mesh without the sliver pass, or one built with
        # thicker layers after TetGen refused the surfaces (a later call tries, and reports, again)
        cfile = None
    if cfile is not None:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            from ...mesh import write_mesh

            # (no report where the warnings were not given, under --quiet: a later call would not say them)
            _cache_report(cfile, info.mesher if report_complete else None)
            write_mesh(cfile, mesh)  # atomic
            info.cache_file = str(cfile)
        except OSError as exc:  # a read-only cache is not an error
            logger.warning("could not cache the head mesh in %s (%s)", cfile.parent, exc)
            try:
                if not cfile.is_file():  # (no report without its mesh)
                    _report_path(cfile).unlink(missing_ok=True)
            except OSError:
                pass
    return (mesh, info) if return_info else mesh


def _sub_tissues_merged(mesh: Mesh, expected: dict, method: str, lesion_mm3: float | None,
                        lesion_tag: int, inner_csf: int = 0, user_layers: dict | None = None) -> tuple[dict, dict]:
    """The surface mesher's merged tissues (:func:`sub_tissue_merges`), said once, and the expected
    volumes merged alike.  ``lesion_mm3``: the lesion's volume (None: no lesion); ``inner_csf``: the
    brain layer (4 or 5) that encloses the CSF meshed inside the brain (:func:`_csf_into_brain`), or 0;
    ``user_layers``: the layers a user's tissues were meshed in (:func:`enclosing_layers`)."""
    if method != "surface":
        return {}, expected
    lesion = bool(lesion_mm3)
    volumes = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3)
    layer_of = {**({t: int(inner_csf) for t in _INSIDE_BRAIN} if inner_csf else {}), **(user_layers or {})}
    merged = sub_tissue_merges(expected, {int(t): float(v) for t, v in enumerate(volumes) if v > 0},
                               int(lesion_tag) if lesion else None, lesion_mm3 if lesion else 0.0,
                               layer_of=layer_of or None)
    if merged:
        logger.warning("the surface mesher meshes %s: too thin or small for the elements to follow (volume off by "
                       "more than half); a smaller --element-size, or --method lattice, keeps them",
                       ", ".join(f"{_name(t)} as {_name(to)}" for t, to in merged.items()))
    return merged, _merge_expected(expected, merged, int(lesion_tag) if lesion else None, lesion_mm3 or 0.0)


def _check_result(mesh: Mesh, expected: dict, h: float, method: str, check: bool, timings: dict,
                  neighbors: np.ndarray | None = None) -> dict:
    """:func:`quality_summary` of a new (or cached) mesh; raise its errors (``check``), log its warnings."""
    t = time.perf_counter()
    q = quality_summary(mesh, expected, neighbors)
    errors, warnings = assess_quality(q, expected, h, method)
    timings["quality_s"] = time.perf_counter() - t
    if errors and check:
        raise MeshError(" ".join(errors))
    for w in errors + warnings:
        logger.warning("%s", w)
    return q


def _world_mesh(nodes: np.ndarray, tets: np.ndarray, ttags: np.ndarray, zooms, affine: np.ndarray,
                method: str, neighbors: np.ndarray | None = None) -> tuple[Mesh, np.ndarray]:
    """Local-frame (voxel index * zoom) mesh -> world-frame :class:`Mesh` with only the used nodes,
    positively oriented tets and the outer / interface triangles; and its tets' face neighbours
    (:func:`.topology.tet_neighbors`, which the quality summary uses again; ``neighbors``: those of
    ``tets``, where known, reordered here as the orientation reorders the tets' nodes)."""
    nodes, tets = compact_nodes(nodes, tets)
    world = nodes / zooms @ affine[:3, :3].T + affine[:3, 3]
    nb = None if neighbors is None else np.array(neighbors, np.int64)
    tets = orient_tets(world, tets, nb)  # flips all of them for a left-handed affine
    if nb is None:
        nb = tet_neighbors(tets)
    tris, tri_tags = _surface_triangles(tets, ttags, nb)
    mesh = Mesh(world, tets, ttags, tris, tri_tags)
    bad = mesh.signed_volumes_mm3 <= 0
    if bad.any():  # pragma: no cover - the lattice snapping guard and TetGen's quality bound prevent this
        raise MeshError(f"internal error: {int(bad.sum())} flat tetrahedra in the {method} mesh; "
                        "try another element size")
    return mesh, nb


def _surface_triangles(tets: np.ndarray, tags: np.ndarray,
                       nb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Outer surface (tag 1000 + outer tissue) and interfaces (1000 + inner tissue, by layer; between
    two tissues of one layer, 1000 + the smaller tag).  ``nb``: ``tet_neighbors(tets)``, where known."""
    from ...mesh.model import TET_FACES

    nb = tet_neighbors(tets) if nb is None else nb
    lut = layer_lut()
    lut[11:] = 9  # extra tags (a lesion) tag their own surfaces, innermost
    tris, ttag = [], []
    for k in range(4):
        face = tets[:, TET_FACES[k]]
        other = nb[:, k]
        outer = other < 0
        tris.append(face[outer])
        ttag.append(1000 + tags[outer])
        o = np.maximum(other, 0)
        inter = (~outer) & (tags != tags[o]) & (np.arange(len(tets)) < o)
        ti, to = tags[inter], tags[o[inter]]
        # two tissues of one layer (compact | spongy bone, scalp | muscle): the smaller tag, not the
        # side the face happened to be read from
        inner = np.where(lut[ti] > lut[to], ti, np.where(lut[ti] < lut[to], to, np.minimum(ti, to)))
        tris.append(face[inter])
        ttag.append(1000 + inner)
    return np.concatenate(tris), np.concatenate(ttag)


def make_surface_head_mesh(labels, label_map_spec="colin27", *, element_size_mm=None,
                           surface_step=4, thickness_scale=2.0, minratio=2.5, mindihedral=5.0, extra_switches="Y",
                           lesion=None, lesion_tag=3, progress=False, cache=False):
    """Label volume (NIfTI path) -> world-frame :class:`~stimsim.mesh.model.Mesh` with this mesher:
    :func:`stimsim.head.meshers.make_head_mesh` with ``method="surface"`` and these options.

    ``element_size_mm=None``: the surface mesher's default.  Returns
    ``(mesh, voxel_volume_mm3_per_tag, info)``.  The defaults are the recipe of the embedded Colin27
    head (``surf-2`` options: unrelaxed marching-cubes surfaces, ``-pq2.5/5a60.34Y``, the CSF's 1 mm
    minimum; see the module docstring) for ``meshes/build_colin27.py``.  The options it does not name
    come from :func:`~stimsim.head.meshers.surface.surface_defaults` (the sliver pass since surf-4, the
    local calibration since surf-6.4), so it no longer rebuilds the shipped file byte for byte;
    ``stimsim mesh`` uses those defaults throughout (relaxed surfaces, TetGen optimisation)."""
    opts = {"surface_step": surface_step, "thickness_scale": thickness_scale, "minratio": minratio,
            "mindihedral": mindihedral, "extra_switches": extra_switches, "relax_iterations": 0,
            "sulcal_csf_radius_mm": 0.0, "thin_layer_scale": 0.0, "min_thickness_mm": 0.5}
    mesh, info = make_head_mesh(labels, None, label_map_spec, method="surface", element_size_mm=element_size_mm,
                                lesion=lesion, lesion_tag=lesion_tag, progress=progress, cache=cache,
                                return_info=True, surface_options=opts)
    return mesh, info.voxel_volume_mm3, {**info.mesher, "timings_s": info.timings_s}
