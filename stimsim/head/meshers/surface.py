"""Label volume -> tetrahedral head mesh through nested smooth surfaces and TetGen.

Optional dependencies: ``scikit-image`` (marching cubes) and ``tetgen`` (the TetGen wheel).
**TetGen is AGPL-3.0**: it is an *optional* build tool of this GPL-3.0-or-later project
(``pip install tetgen``); the combination is allowed (GPL-3 section 13 / AGPL-3 section 13), a
distributed binary that bundles it is AGPL-3.  The embedded Colin27 mesh is made with it
(``meshes/build_colin27.py``); nothing at run time needs it.  It is ``method="surface"`` of
:func:`stimsim.head.meshers.make_head_mesh` (``stimsim mesh --method surface``, and what
``--method auto``, the default, picks when ``tetgen`` and ``scikit-image`` import), which does the
input checks, label cleaning, caching and world transform for both meshers.

Its steps (nested masks, signed distances, volume calibration, marching cubes, relaxation,
TetGen, region tags, lesion refinement) and what was measured on the way: docs/meshing.md.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi

from ..._logging import logger
from ...errors import MeshError
from ...mesh.model import TET_FACES, face_codes
from ...tissues import LAYER_FILL_TAG, LAYER_OF_TAG, layer_lut
from ..labels import value_counts
from . import tetgen_worker
from .sub_tissues import keep_sub_tissues, layers_with_sub_tissues
from .topology import (ISLAND_KEPT_MM3, distance_to_background, distance_to_other_side, face_components, face_graph,
                       fill_holes, label_pieces, largest_piece, on_threads, sample_volume, tet_neighbors,
                       vertex_incidence)

__all__ = ["available", "surface_mesh_from_tags", "surface_defaults", "label_grid_factors", "downsample_layers",
           "compact_for_shipping", "SURFACE_MESHER_VERSION", "DEFAULT_SURFACE_ELEMENT_SIZE_MM"]

SURFACE_MESHER_VERSION = "surf-6.27"  # 6.1: the head's box of a wide field of view, the untangling retry;
# 6.2: pieces of the brain or white matter closer than the sub-grid kept apart; 6.3: surfaces faired
# within a band of their level sets (the voxels' staircase); 6.4: the volume calibration held local;
# 6.5: short surface edges merged (edge_merge.py); 6.6: a layer the labels do not have shares the next
# one's surface, and thick slices are split first (make_head_mesh; heads with every layer on about
# cubic voxels: the same meshes as 6.5); 6.7: tissues inside a layer (eyes, muscle, compact and spongy
# bone, blood) kept (sub_tissues.py; labels without them: the same meshes as 6.6); 6.9: CSF in folds
# narrower than the surfaces can enter meshed inside the brain's layers (core.sulcal_csf), no CSF sheet
# where the labels have none (6.8: earlier versions of that, whose cached meshes 6.9 does not reuse);
# 6.10: tissues inside a layer kept in the pieces the labels have (sub_tissues._in_pieces_kept; labels
# without such tissues: the same meshes as 6.9); 6.11: blood in the folds kept in the pieces it makes
# with the CSF layer's (labels without blood in folds the surfaces close: the same meshes as 6.10);
# 6.12: free vertices on the interfaces between tissues of one layer (_interface_points; labels
# without tissues inside the scalp, bone or CSF layer: the same meshes as 6.11); 6.13: the minimum
# thickness of a scalp, bone or grey matter thin nearly everywhere lowered (_thin_layer_floors; heads
# whose layers are thin only in places, Colin27 among them: the same meshes as 6.12); 6.14: the sliver
# pass puts back the volume it sweeps through each surface (sliver.restore_interface_volumes: every
# mesh's surface nodes move by hundredths of a mm), a CSF thin nearly everywhere and 1 mm layers
# get lower minimum thicknesses (THIN_LAYER_FLOOR_MM), the CSF's minimum 0.75 mm at the default size
# (CSF_MIN_PER_SCALE_MM; 1 mm before), edge flips inside one tissue after the sliver pass
# (sliver.flip_slivers); 6.15: marching-cubes triangles of two surfaces that cross each other are
# pushed apart before the untangling, not after TetGen refused them twice (heads without such
# crossings, Colin27 among them: the same meshes as 6.14); 6.16: the white matter's pieces that its
# labels join are joined through the grey matter (_white_matter_as_labelled; heads whose white matter
# the surfaces keep in one piece, Colin27 among them: the same meshes as 6.15); 6.17: a skull defect
# is bone tetrahedra centred more than one voxel from the labels' bone, whatever the element size
# (bone_defect_distance_mm; it was 1.25 mm at the default 8 mm), the calibration counting the share
# of each voxel the defect rule re-tags (_defect_share), a lesion's free vertices kept
# LESION_CLEARANCE_OF_CELL of a surface cell from the surfaces (0.6 mm before), and white-matter pieces
# found unreachable tried again after each join; 6.18: the lowest floors of a thin layer's minimum
# thickness scale with the labels' voxel size down to 0.5 mm voxels (thin_layer_floor_scale), and a
# layer one voxel thick nearly everywhere on voxels finer than 1 mm gets surfaces sampled every 4 voxels
# (core.one_voxel_layers; heads on voxels of 1 mm or coarser, and finer ones without a layer thin
# nearly everywhere: the same meshes as 6.17), and specks of a tissue only a lesion touches are lesion
# (LESION_SPECK_VOXELS; heads without a lesion: the same meshes as 6.17); 6.19: free vertices on the
# walls of the folds' CSF the surfaces cannot enter (FOLD_POINT_CELL; heads without such folds, the
# nested ellipsoids among them: the same meshes as 6.18); 6.20: a user's tissue (a tag above 10) inside
# another layer than the grey matter's is meshed in that layer (core.enclosing_layers), with free
# vertices on its walls in the brain, and no interface vertex among a lesion's (heads without tags
# above 10: the same meshes as 6.19, but for interface vertices next to a lesion's); 6.21: the grey
# matter's sheet where the labels have the white matter against the CSF (a ventricle's wall) takes what
# the labels hold there (_open_layer_gaps; Colin27 95 tetrahedra), a piece of 1 mL or more is no island
# where the surfaces keep it (topology.ISLAND_KEPT_MM3: a bone flap), and a user's tissue's free vertices
# kept apart from the folds'; 6.22: the sheets _open_layer_gaps re-tags take their tissues by the shares
# of each tetrahedron's sample points, rounded to keep the volumes (by the centres before), a small
# piece of a surface keeps its own volume through the relaxation (OWN_VOLUME_AREA_SHARE), the relaxed
# surfaces keep the volume the calibration measured (not the marching cubes' with its level kept off
# the sub-grid points), and a piece of the CSF's layer is joined to the largest only where the labels
# join them (_connect_pieces; every head gets other meshes); 6.23: a skull defect's tetrahedra are
# those centred past the face of the labels' bone voxels (bone_defect_distance_mm half a voxel, one
# before) with no bone voxel along the bone's normal taken over a surface cell (_bone_along_normal:
# within 0.75 voxel on the distance field, half a voxel diagonal before; the normal's differences a
# cell apart, half a millimetre before: the surfaces dip into a hole and the normal leant onto its wall),
# and bone the rule cuts from the skull where the labels join it joined back (_connect_pieces); 6.24: a
# piece of 1 mL or more of a tissue inside a layer is no speck there either, and the folds' CSF does not
# join pieces of the CSF's layer the labels keep apart (sub_tissues; heads without either, Colin27 among
# them: the same meshes as 6.23); 6.25: on labels finer than the bone's minimum thickness less 0.5 mm
# (0.5-0.8 mm voxels at the default size, not 0.9), the bone and the CSF keep their thickness where
# the labels make them thinner than their minimum (_local_floors; labels of 1 mm voxels, Colin27 among
# them: the same meshes as 6.24); 6.26: a head box of more than MAX_FIELD_VOXELS fine voxels is meshed
# on a coarser copy (label_grid_factors: about 0.53-0.73 mm voxels in 2 x 2 x 2 blocks at the default
# size), every copy's surfaces sampled every whole number of blocks that fits in the labels' own
# sampling, with that sampling's minimum thicknesses (1 and 0.5 mm voxels at the default size, and heads
# of fewer voxels on their own grid: the same meshes as 6.25; 0.3-0.45 mm voxels, and copies at other
# element sizes, may get another sampling or other thicknesses)
# 6.27: bone apart from the skull and outside it (a mandible) meshed as a tissue inside the scalp's layer;
# a piece of the skull the surfaces cut off where the labels join it joined back (heads without
# either: the same meshes as 6.26)
#: free TetGen vertices on the interfaces between tissues of one layer, one per this many sub-grid cells
#: (3 mm at the default 4 mm surfaces), in these layers (scalp's, bone's, CSF's; :func:`_interface_points`).
#: A 56 mm sphere whose skull is compact | spongy | compact bone 2 | 4 | 2 mm: the brain's E 22 % off
#: the analytic field without them (tetrahedra across the skull took one tissue or the other in
#: columns: the spongy ones shunted current, mean |E| +18 %), 3.7 % with them (a one-tissue skull:
#: 4.4 %; tetrahedra 63k -> 124k; docs/meshing.md, surf-6.12)
INTERFACE_POINT_CELL = 0.75
#: a lesion's free vertices keep at least this many surface sub-grid cells from every surface (1 mm at
#: the default 4 mm cells; the lattice's own 0.4 spacing, 0.6 mm on 1 mm voxels, at 2.4 mm or finer).
#: Colin27 with a 33 mL lesion under a craniectomy: 271 tetrahedra below the bounds with 0.6 mm (most in the lesion,
#: flat against the 4 mm surface triangles), 61-71 with 1 mm, 42 with 1.2 mm (0.3); the lesion's Dice on
#: the label grid 0.984, 0.979, 0.975 (docs/meshing.md, surf-6.17)
LESION_CLEARANCE_OF_CELL = 0.25
INTERFACE_POINT_LAYERS = (1, 2, 3)
#: free TetGen vertices on the walls of the folds' CSF (and blood) that the surfaces cannot enter (their
#: stand-ins in the grey-matter layer, core.sulcal_csf), one per this many sub-grid cells (3 mm at the
#: default 4 mm surfaces) and tissue pair, whichever wall (the fold is narrower than a cell: a vertex on
#: each wall made flat tetrahedra across it, Colin27 600k tetrahedra against 471k, for a small gain).
#: A folded phantom (1.5 mm sulci 12 mm deep, tests/test_sulcal_csf.py) against its labels' own voxel
#: model: the grey matter's E 33 % off without them, 28 % with them (27 % at ``--element-size 4``
#: without them, with 4x the tetrahedra); docs/meshing.md, surf-6.19
FOLD_POINT_CELL = 0.75
#: ... and at least this many of their spacings from every surface (0.4 for the other interfaces): with
#: 0.4 a folded phantom of 1.5 mm sulci (made by a tester: 242k tetrahedra) had 39 tetrahedra below the
#: shape bounds after the sliver and flip passes (2 without the vertices), Colin27 53 (38); with 0.5, 21
#: and 39, while that phantom's fold voxels that are CSF in the mesh went from 72 to 70 % (44 % without
#: the vertices); docs/meshing.md
FOLD_POINT_CLEARANCE = 0.5
#: a piece of a tissue that only a lesion touches, smaller than this many voxels of the grid meshed (on
#: a coarse copy of fine labels: its blocks), is lesion (specks of tetrahedra the lesion's staircase
#: cut off; surf-6.18).  Larger ones stay (a ventricle a lesion splits), and so do pieces the labels
#: have apart from the tissue's main piece (:func:`_own_label_piece`)
LESION_SPECK_VOXELS = 27
#: a CSF tetrahedron whose centre's voxel is farther than this many voxels from the CSF's lies in the
#: sheet the minimum thickness keeps where the labels have none (:func:`_open_layer_gaps`; surf-6.9)
CSF_GAP_VOXELS = 1.5
#: ... and where the CSF layer is at most this many minimum thicknesses thick (a sheet, not a corner of
#: the voxels the smoothed surfaces cut off: two grey-matter boxes in CSF lost 2.3 % at their corners)
CSF_SHEET_OF_MIN = 1.5
#: surface edges shorter than this many sub-grid cells are merged before TetGen (surf-6.5; Colin27:
#: 394 -> 70 tetrahedra below the shape bounds; docs/meshing.md)
MIN_EDGE_CELL = 0.45
#: default ``element_size_mm`` (Colin27 1 mm: 485k tets in 17-19 s; docs/meshing.md)
DEFAULT_SURFACE_ELEMENT_SIZE_MM = 8.0
#: tag of each layer in the output (SimNIBS numbering)


def available() -> bool:
    """True when tetgen and scikit-image import."""
    try:
        import skimage.measure  # noqa: F401
        import tetgen  # noqa: F401
    except Exception:
        return False
    return True


#: the signed distances are exact up to this far (mm) outside a mask; beyond, where nothing the mesher
#: does looks (surfaces, thickness rules and the volume calibration act within a few mm of a surface),
#: they are this value: the distance transforms then cover only the mask's box plus this margin
SDF_BAND_MM = 15.0


def bone_defect_distance_mm(zooms) -> float:
    """A bone tetrahedron whose centre is farther than this from every bone or cavity voxel's centre
    (the distance interpolated between voxel centres) lies in a gap of the voxel skull
    (:func:`_open_bone_defects`): half a voxel, past the face of the bone voxels, as the labels draw
    the gap.  Thin real bone under a sheet the minimum thickness pushed out is kept by
    :func:`_bone_along_normal`.  (Before surf-6.23 one voxel, which with the normal's test kept a rim
    of bone about a voxel wide in every hole and closed holes of three voxels; before surf-6.17 half
    the minimum bone thickness plus half a voxel where that was more, 1.25 mm at the default size;
    docs/meshing.md.)"""
    return 0.5 * float(np.max(zooms))


def _sdf(mask: np.ndarray, zooms, sigma_vox: float) -> np.ndarray:
    """Signed distance (mm, < 0 inside) to the voxel faces of ``mask``, Gaussian-smoothed; outside,
    at most :data:`SDF_BAND_MM` (exact inside, where the nearest outside voxel is always in the box)."""
    zooms = np.asarray(zooms, float)
    half = 0.5 * float(np.mean(zooms))
    hits = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    if any(len(h) == 0 for h in hits):
        box = tuple(slice(0, n) for n in mask.shape)
    else:
        margin = np.ceil(SDF_BAND_MM / zooms).astype(int) + int(np.ceil(4 * sigma_vox)) + 2
        box = tuple(slice(max(int(h[0]) - m, 0), min(int(h[-1]) + m + 1, n))
                    for h, m, n in zip(hits, margin, mask.shape))
    sub = mask[box]
    dist = distance_to_other_side(sub, zooms)
    out_sub = np.where(sub, -(dist - half), np.minimum(dist - half, np.float32(SDF_BAND_MM)))
    del dist
    out = np.full(mask.shape, np.float32(SDF_BAND_MM), dtype=np.float32, order="F" if mask.flags.f_contiguous else "C")
    out[box] = out_sub
    if sigma_vox > 0:
        out = ndi.gaussian_filter(out, sigma=sigma_vox, mode="nearest")
    return out


def _clean_layer_mask(m: np.ndarray, k: int, voxel_mm3: float) -> np.ndarray:
    """Layer ``k``'s mask (the voxels of layers >= k) as the surfaces take it: the scalp, the bone and
    the CSF filled and in one piece, the brain and the white matter without pieces under 500 mm^3 and
    with holes under 50 voxels filled."""
    if k <= 3:
        return largest_piece(fill_holes(m))
    return _fill_small_holes(_drop_small(m, int(500 / voxel_mm3)), 50)


def _drop_small(mask: np.ndarray, min_vox: int) -> np.ndarray:
    lab, n = label_pieces(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= min(min_vox, sizes.max())
    return keep[lab]


def _fill_small_holes(mask: np.ndarray, max_vox: int) -> np.ndarray:
    holes = fill_holes(mask) & ~mask
    lab, n = label_pieces(holes)
    if not n:
        return mask
    sizes = np.bincount(lab.ravel())
    small = sizes < max_vox
    small[0] = False
    return mask | small[lab]


def _mc_volume_area(phi, level, zooms, step):
    """Volume and area enclosed by the marching-cubes surface ``phi = level`` on the sub-grid."""
    from skimage.measure import marching_cubes

    sub = np.pad(phi[::step, ::step, ::step], 1, constant_values=np.float32(1e3))
    if not ((sub < level).any() and (sub > level).any()):
        return 0.0, 1.0
    v, f, _, _ = marching_cubes(sub, level=level, spacing=tuple(float(z) * step for z in zooms))
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    vol = abs(_signed_volume(v, f))
    area = float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()) / 2.0
    return vol, area


def _enforce(phis, tk, sweeps=4):
    """Neighbouring level sets at least ``tk[k]`` apart: ``sweeps`` rounds that split each deficit
    between both surfaces, then the outer one pushed out where one is left."""
    from ...fem.kernels import numba_ready

    # a layer without voxels shares the next one's field (nested_fields): the kernel would hold the
    # shared field twice, once stale, and give another result than the numpy passes, which move it once
    shared = any(phis[j] is phis[k] for k in range(1, 6) for j in range(k + 1, 6))
    if numba_ready() and not shared:  # every voxel on its own: one fused pass instead of ~60 over the grid
        from ._kernels import enforce_layers

        if enforce_layers(phis, tk, sweeps):
            return
    for _ in range(sweeps):
        for k in range(1, 5):
            d = phis[k + 1] - phis[k] - tk[k]
            np.minimum(d, 0, out=d)
            d *= 0.5
            phis[k + 1] -= d
            phis[k] += d
    for k in range(1, 5):
        np.maximum(phis[k + 1], phis[k] + tk[k], out=phis[k + 1])


#: a connected piece of a surface with less than this share of its area keeps its own enclosed volume
#: through the relaxation (:func:`_keep_enclosed_volume`); the larger ones keep theirs together
OWN_VOLUME_AREA_SHARE = 0.1
#: layers whose outer surfaces the local calibration shifts (1 scalp, 2 bone, 3 CSF, 4 brain)
LOCAL_CALIBRATION_LAYERS = (1, 2, 3, 4)
#: the local shifts keep neighbouring surfaces this many minimum thicknesses apart (1.0 let the shifts
#: press surfaces together over wide areas: Colin27 480 poor tetrahedra instead of ~390, untangling 5x longer)
LOCAL_GAP = 1.5


def _upsample_linear(coarse: np.ndarray, step: int, shape, offset: float) -> np.ndarray:
    """Values on a fine grid of ``shape``, linear along each axis between the coarse samples, which sit
    at fine indices ``offset + step * I`` (held constant beyond the first and last)."""
    out = np.asarray(coarse, np.float32)
    for ax, n in enumerate(shape):
        x = (np.arange(n) - offset) / step
        i0 = np.clip(np.floor(x).astype(np.int64), 0, out.shape[ax] - 1)
        i1 = np.minimum(i0 + 1, out.shape[ax] - 1)
        w = np.clip(x - i0, 0.0, 1.0).astype(np.float32)
        sh = [1, 1, 1]
        sh[ax] = n
        w = w.reshape(sh)
        out = np.take(out, i0, axis=ax) * (1 - w) + np.take(out, i1, axis=ax) * w
    return out


def _local_shift(phis, k, tk, mask: np.ndarray, zooms, step: int, radius_mm: float, max_mm: float = 1.0,
                 override=None) -> None:
    """Shift ``phis[k]``'s level set locally (in place) so that, within about ``radius_mm`` of each place,
    the surface marching cubes makes on the sub-grid encloses what ``mask`` holds there (docs/meshing.md,
    surf-6.4).

    The inside of the sub-grid surface is taken as where the linear interpolation of the sub-grid
    samples is negative, and ``override`` (int8 or None) where the mesh will tag otherwise: 1 inside,
    -1 outside, 0 as interpolated; voxels past the last sample are left out (marching cubes closes
    the surface there, so no level encloses them).  Its excess over the mask, summed per sub-grid cell
    and Gaussian-smoothed, divided by the surface area there (smoothed the same way), is the local
    shift (mm, at most ``max_mm`` either way).  It is held where it would bring the surface closer to
    a neighbouring one than ``LOCAL_GAP`` minimum thicknesses ``tk`` (the thickness rules would
    otherwise move both back, and the volumes with them)."""
    from ...fem.kernels import numba_ready

    zooms = np.asarray(zooms, float)
    vox = float(np.prod(zooms))
    edge = float(np.mean(zooms))
    phi = phis[k]
    shape = phi.shape
    n_cells = [(n + step - 1) // step for n in shape]
    inner, gap_inner = (phis[k + 1], LOCAL_GAP * float(tk[k])) if k + 1 in phis else (None, 0.0)
    j = k - 1
    while j in phis and phis[j] is phi:  # a layer without voxels shares this surface: the next one out
        j -= 1
    outer, gap_outer = (phis[j], LOCAL_GAP * float(tk[j])) if j in phis else (None, 0.0)
    fast = numba_ready()
    if fast:
        from ._kernels import local_excess

        excess, band = local_excess(phi, mask, override, step, 0.5 * edge)
    else:
        inside = _upsample_linear(phi[::step, ::step, ::step], step, shape, 0.0) < 0
        if override is not None:
            inside = np.where(override != 0, override > 0, inside)
        diff = inside.astype(np.float32) - mask
        band = (np.abs(phi) < 0.5 * edge).astype(np.float32)
        del inside
        for ax, n in enumerate(shape):  # past the last sample no surface reaches: left out
            idx = [slice(None)] * 3
            idx[ax] = slice(((n - 1) // step) * step + 1, None)
            diff[tuple(idx)] = 0
            band[tuple(idx)] = 0
        sums = []
        for arr in (diff, band):
            padded = np.zeros([c * step for c in n_cells], np.float32)
            padded[:shape[0], :shape[1], :shape[2]] = arr
            sums.append(_block_reduce(padded, (step,) * 3, np.copy, np.add))
            del padded
        excess, band = sums
        del diff
    sigma = [radius_mm / (step * z) for z in zooms]
    excess_mm3 = ndi.gaussian_filter(excess * vox, sigma, mode="constant")
    area_mm2 = ndi.gaussian_filter(band * (vox / edge), sigma, mode="constant")
    if not area_mm2.max() > 0:  # no surface (an empty layer)
        return
    # cells far from any surface get no shift (and no division by ~0)
    floor = 0.05 * float(area_mm2.max())
    shift = np.where(area_mm2 > floor, excess_mm3 / np.maximum(area_mm2, floor), 0.0)
    shift = np.clip(shift, -max_mm, max_mm).astype(np.float32)
    if fast:
        from ._kernels import add_local_shift

        add_local_shift(phi, shift, step, outer, gap_outer, inner, gap_inner)
        return
    fine = _upsample_linear(shift, step, shape, 0.5 * (step - 1))
    if inner is not None:
        np.minimum(fine, np.maximum(inner - np.float32(gap_inner) - phi, 0), out=fine)
    if outer is not None:
        np.maximum(fine, np.minimum(outer + np.float32(gap_outer) - phi, 0), out=fine)
    phi += fine


class _Floor(NamedTuple):
    """A lower bound of one layer's signed distance on a few voxels (indices into the padded grid)."""
    layer: int
    index: tuple
    value: np.ndarray


#: at most this many pieces of a layer are kept apart (the largest; more is not a head)
MAX_SEPARATED_PIECES = 32


def layer_pieces(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Pieces of one layer's mask: voxels touching at a face, an edge or a corner are one piece."""
    return label_pieces(mask, 26)


def separation_floors(pieces: np.ndarray, layer: int, zooms, cell_mm) -> list[_Floor]:
    """Floors that keep the pieces of one layer apart on a surface sub-grid of ``cell_mm`` (per axis).

    ``pieces``: the layer's voxels labelled by piece (0 outside; :func:`layer_pieces`).  Two pieces
    that do not touch but lie closer than about a sub-grid cell can be joined by marching cubes: no
    sample falls in the gap between them (two grey-matter masses one CSF voxel apart, issue 20), or
    one cube has inside samples of both pieces, which marching cubes connects (an oblique 2.5 mm gap
    at the default 4 mm sub-grid).  With ``s1``, ``s2`` the signed distances to the two pieces
    (negative inside), ``m = |s1 - s2| / 2`` is the distance to the gap's mid-surface and ``n`` its
    normal (the gradient of ``s2 - s1``).  Two corners of a cube lie at most ``sum_i c_i |n_i|`` apart
    along ``n`` (``c`` the cell), so the floor ``w - m`` with ``w = 0.55 sum_i c_i |n_i|`` (0.55 of a
    cell across a gap along a grid axis, 0.95 along a cube's diagonal) leaves no cube with inside
    samples of both pieces.  Each piece gets the floor on its own side of the mid-surface; the banks
    lose at most ``w`` each, and the calibration gives that volume back.  Wider gaps already have the
    field above the floor; the two banks of one piece (a sulcus) are not affected.
    """
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    present = np.flatnonzero(sizes)
    if len(present) < 2:
        return []
    zooms = np.asarray(zooms, float)
    cell = np.asarray(cell_mm, float) * np.ones(3)
    widest = 0.55 * float(cell.sum())
    reach = 2 * widest + float(cell.max())  # from a piece across the gap, to the band's far edge
    r = np.ceil(reach / zooms).astype(int) + 1
    chosen = present[np.argsort(sizes[present])[::-1][:MAX_SEPARATED_PIECES]]
    boxes = ndi.find_objects(pieces)
    out = []
    for c in chosen:
        box = tuple(slice(max(0, b.start - ri), min(dim, b.stop + ri))
                    for b, ri, dim in zip(boxes[c - 1], r, pieces.shape))
        sub = pieces[box]
        own = sub == c
        others = (sub > 0) & ~own
        if not others.any():
            continue
        to_other = distance_to_background(~others, zooms)
        if not (to_other[own] <= reach).any():
            continue
        s_own = distance_to_background(~own, zooms) - distance_to_background(own, zooms)
        s_other = to_other - distance_to_background(others, zooms)
        del to_other
        diff = s_other - s_own  # > 0 on this piece's side of the mid-surface
        # distances between voxel centres: each side reads half a voxel more than to the boundary
        band = (diff >= 0) & (diff < 2 * (widest + float(cell.max()) + float(zooms.max())))
        if not band.any():
            continue
        grad = np.gradient(diff, *zooms)
        g = [gi[band] for gi in grad]
        del grad
        norm = np.maximum(np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2), np.float32(1e-6))
        n = [np.abs(gi) / norm for gi in g]
        w = np.float32(0.55) * (n[0] * np.float32(cell[0]) + n[1] * np.float32(cell[1]) + n[2] * np.float32(cell[2]))
        w = np.clip(w, np.float32(0.55 * cell.min()), np.float32(widest))
        half_voxel = (n[0] * np.float32(zooms[0]) + n[1] * np.float32(zooms[1]) + n[2] * np.float32(zooms[2])) / (
            2 * np.maximum(n[0] + n[1] + n[2], np.float32(1e-6)))
        floor = w - np.maximum(np.float32(0.5) * diff[band] - half_voxel, np.float32(0.0))
        keep = floor > -float(cell.max())
        if keep.any():
            index = tuple(li[keep] + b.start for li, b in zip(np.nonzero(band), box))
            out.append(_Floor(layer, index, floor[keep].astype(np.float32)))
    return out


def _raise_to(phi: np.ndarray, floor: _Floor) -> None:
    phi[floor.index] = np.maximum(phi[floor.index], floor.value)


def _apply_floors(phis, floors: list[_Floor], tk) -> None:
    """Raise each layer's field to its floors, then push the layers inside it out (nesting, minimum
    thickness) on those voxels."""
    for f in floors:
        _raise_to(phis[f.layer], f)
        for k in range(f.layer, 5):
            t = tk[k][f.index] if isinstance(tk[k], np.ndarray) else np.float32(tk[k])
            phis[k + 1][f.index] = np.maximum(phis[k + 1][f.index], phis[k][f.index] + t)


#: the CSF's minimum thickness per unit of ``thickness_scale`` in :func:`surface_defaults` (at least 0.5 mm):
#: 0.75 mm at the default 8 mm elements, where 1 mm put the thinnest tenth of Colin27's CSF (per ray,
#: where the labels nest the layers) +0.75 mm off the labels'; 0.75 mm: +0.5, its median and 90th
#: percentile equal to the labels', bone -0.64 -> -0.39 %, 51 -> 78 tetrahedra below the shape
#: bounds (docs/meshing.md, surf-6.14)
CSF_MIN_PER_SCALE_MM = 0.375


def csf_min_thickness_mm(thickness_scale: float) -> float:
    """``min_thickness_mm`` (the CSF's minimum thickness at scale 1) for ``thickness_scale``: the CSF's
    minimum is then ``max(0.5, CSF_MIN_PER_SCALE_MM x scale)`` mm."""
    return max(0.5 / float(thickness_scale), CSF_MIN_PER_SCALE_MM)


#: a layer whose median thickness is under this many times its minimum thickness is "thin": its
#: minimum thickness is lowered to its median / this (:func:`_thin_layer_floors`)
THIN_LAYER_RATIO = 1.25
#: the lowest minimum thickness (mm) :func:`_thin_layer_floors` gives the scalp, bone, CSF and grey matter
#: on 1 mm voxels (the CSF's: its minimum at thickness scale 1), times :func:`thin_layer_floor_scale`
THIN_LAYER_FLOOR_MM = {1: 0.75, 2: 0.75, 3: 0.5, 4: 0.75}


def thin_layer_floor_scale(voxel_mm: float) -> float:
    """The scale of :data:`THIN_LAYER_FLOOR_MM` for labels of voxel size ``voxel_mm`` (their finest
    axis, before any coarsening): the voxel size, between 0.5 and 1.  A layer one voxel thick everywhere on
    0.5 mm voxels is 0.5 mm thick: with the 1 mm voxels' floors a 0.75 mm skull came out +9.7 % at the
    default size, and a 0.5 mm one +65 % at any element size (surf-6.18; docs/meshing.md)."""
    v = float(voxel_mm)
    return float(min(1.0, max(0.5, v))) if np.isfinite(v) else 1.0


def _thin_layer_floors(phis: dict, tk: dict, skip: set, floor_scale: float, zooms, voxel_mm: float = 1.0) -> dict:
    """The minimum layer thicknesses ``tk`` (mm, per layer), lowered for a layer the labels make thin
    nearly everywhere: its median thickness (next to its outer surface, the distance between it and
    the next surface in, where the layer is there) under :data:`THIN_LAYER_RATIO` x its minimum.  Such
    a layer gets its median / that ratio, at least :data:`THIN_LAYER_FLOOR_MM` (times
    :func:`thin_layer_floor_scale` of the labels' voxel size ``voxel_mm``), times ``floor_scale`` (1 at
    first; TetGen's retries raise it with the rest), never more than its minimum was.

    Why: the minimum thicknesses scale with the surfaces' sampling (x2 at the default 8 mm elements:
    2 mm of scalp, 1.5 of bone and grey matter, 0.75 of CSF), which keeps folded surfaces from
    crossing.  Where a whole layer is that thin the floor inflates it: nested spheres with 2 mm shells
    came out with the scalp +9.1 % and the bone -4.6 %, 1.5 mm of scalp +45 %, 1 mm of CSF (with its
    1 mm minimum then) +12.5 %.  Heads whose layers are thin only in places (Colin27, the charm-like
    heads) keep their floors."""
    half = 0.5 * float(np.min(zooms))
    out = dict(tk)
    base_scale = thin_layer_floor_scale(voxel_mm)
    for k, base in sorted(THIN_LAYER_FLOOR_MM.items()):
        base = base * base_scale
        if k in skip or k + 1 > 5 or out.get(k, 0.0) <= 0:
            continue
        # on the voxels next to the outer surface (within a voxel, both sides), the distance between
        # the two surfaces: phis[k + 1] alone read a 2 mm layer with faces on the grid as 1.56 mm
        # (the voxels at +-half a voxel), a 2 mm sphere's as 1.78
        on = np.abs(phis[k]) <= half + 1e-4
        width = (phis[k + 1] - phis[k])[on]
        width = width[phis[k + 1][on] > half]  # where the layer is there (not a defect)
        if width.size < 64:
            continue
        median = float(np.median(width))
        if median < THIN_LAYER_RATIO * out[k]:
            # (TetGen's retries raise floor_scale: the lowered floor grows with the others)
            lowered = min(out[k], max(base, median / THIN_LAYER_RATIO) * floor_scale)
            if lowered < out[k]:
                logger.info("layer %d is thin (median %.2f mm): minimum thickness %.2f -> %.2f mm", k, median,
                            out[k], lowered)
                out[k] = lowered
    return out


#: layers whose minimum thickness may be lowered where they are thin in places (:func:`_local_floors`):
#: the bone and the CSF.  The scalp's and the grey matter's too made Colin27's surfaces cross where TetGen
#: refused them (a retry with every minimum x1.5)
LOCAL_FLOOR_LAYERS = (2, 3)
#: how far (mm) a layer's thickness in the mesh may exceed the labels' where they make it thinner than its
#: minimum: the issue's tolerance for the layers' thickness (issue 20: within 0.5 mm)
THICKNESS_TOLERANCE_MM = 0.5


def _local_floors(phis: dict, tk: dict, skip: set, floor_scale: float, zooms, voxel_mm: float = 1.0,
                  present: dict | None = None, step: int = 2) -> dict:
    """The minimum thickness per voxel of the bone's and the CSF's layers (:data:`LOCAL_FLOOR_LAYERS`)
    where the labels make them thinner than ``tk[k]``, for labels whose voxels (``voxel_mm``, their finest
    axis before any coarsening) are so fine that a layer one voxel thick would otherwise come out more
    than :data:`THICKNESS_TOLERANCE_MM` too thick (``voxel_mm`` + that < ``tk[k]``).

    There: the layer's thickness (the distance between its two surfaces, ``phis[k + 1] - phis[k]``)
    plus half a voxel, at least the floor :func:`_thin_layer_floors` gives a layer thin everywhere;
    elsewhere, and where the layer is not there (a hole: under half a voxel of this grid thick),
    ``tk[k]``; but the lowest where ``present[k]`` (bool, the fields' grid) says the layer is there all
    the same (a coarse copy of finer labels: a sheet thinner than half a block loses the block's vote).
    Each voxel then takes the lowest minimum within ``step`` voxels (the surfaces' sub-grid: they are
    interpolated between samples that far apart).  Returns {layer: float32 array of the fields' shape},
    only for layers with such places.

    Why: the minimum thicknesses keep folded surfaces from crossing on the surfaces' sub-grid, but a
    skull one 0.5 mm voxel thick in places (a temporal squama) came out 1.5-2 mm thick at the default
    size.  On 1 mm voxels a one-voxel layer is at most 0.5 mm off the bone's 1.5 mm minimum, and
    lowering it there doubled Colin27's tetrahedra below the shape bounds (thin bone between 4 mm
    surface triangles) for no gain in its thickness percentiles (docs/meshing.md)."""
    half = np.float32(0.5 * float(np.min(zooms)))
    margin = np.float32(0.5 * float(voxel_mm))  # what the labels cannot tell apart
    base_scale = thin_layer_floor_scale(voxel_mm)
    out = {}
    for k in LOCAL_FLOOR_LAYERS:
        if k in skip or not tk.get(k, 0.0) > 0 or not float(voxel_mm) + THICKNESS_TOLERANCE_MM < tk[k]:
            continue
        lowest = min(float(tk[k]), THIN_LAYER_FLOOR_MM[k] * base_scale * float(floor_scale))
        if lowest >= tk[k]:
            continue
        width = phis[k + 1] - phis[k]
        # (beyond SDF_BAND_MM outside a mask the fields are cut off, and their difference is no width)
        there = (width > half) & (phis[k + 1] < np.float32(SDF_BAND_MM - 4.0 * float(np.max(zooms))))
        if present and k in present:
            there |= present[k]
        thin = there & (width + margin < np.float32(tk[k]))
        del there
        if not thin.any():
            continue
        floor = np.full(width.shape, np.float32(tk[k]))
        floor[thin] = np.clip(width[thin] + margin, np.float32(lowest), np.float32(tk[k]))
        del width, thin
        # the surfaces are sampled every `step` voxels and interpolated between the samples: the
        # lower minimum must hold at the samples on either side of the thin spot, not only in its
        # voxels (a 0.5 mm skull meshed on 1 mm blocks stayed 1.5 mm thick without this)
        out[k] = ndi.minimum_filter(floor, size=2 * int(step) + 1, mode="nearest")
    return out


def nested_fields(tags: np.ndarray, cavity: np.ndarray, zooms, *, min_thickness_mm=0.5, sigma_vox=0.7,
                  pad=3, thickness_scale=1.0, calibrate_step=None, layer_volume_mm3=None, bone_voxels=None,
                  csf_voxels=None,
                  surface_step=None, pieces=None, local_calibration_mm=0.0, fluid_tags=(), thin_layer_scale=0.0,
                  thin_layer_voxel_mm=1.0, local_floors=True, report: dict | None = None):
    """Nested masks -> smoothed signed distances with minimum layer thickness.

    Returns ``(phis, phi_air, bone, far_from_csf, far_from_grey)``: ``phis[k]`` for layers 1..5 (padded by
    ``pad`` voxels), ``phi_air`` or None, ``far_from_csf`` (padded; None without CSF voxels): the voxels
    farther than :func:`csf_gap_mm` from every CSF voxel (of ``fluid_tags`` too), ``far_from_grey`` the
    same for the grey matter's layer (None where the labels have no white matter against the CSF),
    and ``bone`` (None without
    bone voxels): ``excess_mm``, the
    distance (mm, padded grid) to the nearest bone or cavity voxel less ``within_mm``
    (:func:`bone_defect_distance_mm`; > 0 in a skull defect), ``probe_mm``, how far along a
    bone surface's normal :func:`_open_bone_defects` looks for bone, and ``normal_mm``, the step of
    the differences that normal is taken with (a surface cell: ``surface_step`` voxels).  ``layer_volume_mm3`` (6 values,
    per layer 0..5): the tissue volumes the calibration aims at, when ``tags`` is a coarser copy of
    the labels (:func:`downsample_layers`); else this grid's voxel counts.  ``bone_voxels`` (bool, the
    grid of ``tags``): voxels that hold bone on the finer grid, where the coarse copy may have lost a
    thin sheet; they count as bone for the skull-defect rule, and with ``csf_voxels`` (the same for the
    CSF's layer) they say where a layer thinner than a voxel of ``tags`` is (:func:`_local_floors`).
    ``surface_step``: the sub-grid of the surfaces, on which pieces of the brain and of the white matter
    closer than it resolves are kept apart (:func:`separation_floors`); ``pieces`` ({layer: labels} on
    the grid of ``tags``): those pieces as the finer grid has them, where ``tags`` is a coarse copy
    (:func:`downsample_layers`).
    ``fluid_tags``: tags of CSF meshed inside the brain's layers, which count as CSF for the CSF
    sheet :func:`_open_layer_gaps` re-tags (the calibration allows for it, as for a skull defect).
    ``thin_layer_scale``: the scale of the minimum thicknesses below which :func:`_thin_layer_floors`
    may lower those of thin layers (0: off); the layers it lowers go to ``report["thin_layers"]``;
    ``thin_layer_voxel_mm``: the labels' voxel size (their finest axis, before coarsening), which
    scales those floors (:func:`thin_layer_floor_scale`); ``local_floors``: with ``thin_layer_scale``,
    lower minimums where the bone or the CSF is thin in places (:func:`_local_floors`)."""
    lut = np.zeros(256, np.int8)
    for t, layer in LAYER_OF_TAG.items():
        lut[t] = layer
    lut[11:] = 4  # other tags count as brain
    layer = lut[tags]
    counts = np.bincount(layer.ravel(), minlength=6)  # tissue voxels per layer (no cavity)
    # a layer with no voxels (a segmentation without CSF, a brain without skull and scalp) has no
    # surface of its own: its outer surface is the next present layer's, one field shared by both
    # (each step below then moves both, and the surface is meshed once).  Kept a minimum thickness
    # apart, as before, the two made a CSF layer out of grey matter and bone (bone -12 %) or
    # surfaces TetGen refused as crossing (no bone, a brain only).  On a coarse copy the finer grid's
    # volumes decide: a thin layer its blocks lost is still there.
    have = np.asarray(counts if layer_volume_mm3 is None else layer_volume_mm3, float)
    absent = {k for k in range(1, 6) if not have[k] > 0}
    shares = {k: min(j for j in range(k + 1, 6) if j not in absent)
              for k in absent if any(j not in absent for j in range(k + 1, 6))}
    # air cavities are holes in the bone; without bone they are meshed as scalp (as before surf-6.6)
    layer[cavity] = 2 if 2 not in absent else 1
    voxel = float(np.prod(zooms))
    # each layer's mask cleaned on its own (on two threads: the labelling runs outside the GIL;
    # Colin27 1.3 -> 0.8 s), then nested
    grid = int(np.prod(np.array(layer.shape) + 2 * pad))
    masks = on_threads({k: (_clean_layer_mask, np.pad(layer >= k, pad), k, voxel) for k in range(1, 6)}, grid)
    for k in range(2, 6):
        masks[k] &= masks[k - 1]
    for k in sorted(shares, reverse=True):
        masks[k] = masks[shares[k]]
    air = np.pad(cavity, pad) & masks[2] & ~masks[3]
    air = _drop_small(air, max(1, int(20 / voxel))) if air.any() else air
    if air.any():
        lab, n = label_pieces(air)
        sizes = np.bincount(lab.ravel())
        keep = sizes >= 20 / voxel
        keep[0] = False
        air = keep[lab]
    # per-interface minimum thickness (mm): below these, marching cubes on the 2-voxel sub-grid
    # gave intersecting neighbour surfaces on Colin27 (scalp/bone 0.75 failed, 1.0 ok; bone/CSF
    # and GM/WM 0.5 failed, 0.75 ok; CSF/GM 0.5 ok).  A layer thin nearly everywhere goes lower
    # (_thin_layer_floors: its surfaces are near parallel there; TetGen's retries if they cross)
    tk = {1: 1.0, 2: 0.75, 3: float(min_thickness_mm), 4: 0.75}
    tk = {k: 0.0 if k in absent else v * float(thickness_scale) for k, v in tk.items()}
    t = 0.75 * float(thickness_scale)
    # the bone-defect and CSF-gap distances below need the labels only: computed with the layers'
    # signed distances, on two threads (each is a distance transform and a Gaussian filter, which run
    # outside the GIL for the most part: Colin27 2.3 -> 1.9 s)
    bone_ok = np.pad(layer == 2 if bone_voxels is None else (layer == 2) | bone_voxels, pad)
    fluid = layer == 3
    if len(fluid_tags):
        fluid |= np.isin(tags, list(fluid_tags))
    jobs = {k: (_sdf, masks[k], zooms, sigma_vox) for k in range(5, 0, -1) if k not in shares}
    if bone_ok.any():
        jobs["bone"] = (distance_to_background, ~bone_ok, zooms)
    if fluid.any():
        jobs["fluid"] = (distance_to_background, ~fluid, zooms)
    # the grey matter's layer the same way, where the labels have the white matter against the CSF (the
    # ventricles; their walls: _open_layer_gaps)
    grey_gaps = 4 not in absent and 5 not in absent and 3 not in absent and 4 not in shares \
        and _white_meets_csf(layer)
    if grey_gaps:
        jobs["grey"] = (distance_to_background, layer != 4, zooms)
    del bone_ok, fluid
    done = on_threads(jobs, grid)
    del jobs  # (it holds the masks, freed below)
    phis = {}
    for k in range(5, 0, -1):
        phis[k] = phis[shares[k]] if k in shares else done.pop(k)
    phis = {k: phis[k] for k in range(1, 6)}
    if thin_layer_scale:
        lowered = _thin_layer_floors(phis, tk, absent | set(shares), float(thin_layer_scale), zooms,
                                     float(thin_layer_voxel_mm))
        if report is not None and lowered != tk:
            report["thin_layers"] = {int(k): {"min_thickness_mm": round(tk[k], 3), "now_mm": round(v, 3)}
                                     for k, v in lowered.items() if v != tk[k]}
        tk = lowered
    # ... and layers thin in places get a lower minimum there (the thickness rules below hold each
    # layer at least tk_local apart; the other rules read the layer's one value tk)
    tk_local = dict(tk)
    if thin_layer_scale and local_floors:
        present = {k: np.pad(v, pad) for k, v in ((2, bone_voxels), (3, csf_voxels)) if v is not None}
        local = _local_floors(phis, tk, absent | set(shares), float(thin_layer_scale), zooms,
                              float(thin_layer_voxel_mm), present, int(surface_step or 2))
        del present
        tk_local.update(local)
        if report is not None and local:
            report["thin_in_places"] = {int(k): {"voxels": int(np.count_nonzero(f < np.float32(tk[k]))),
                                                 "lowest_mm": round(float(f.min()), 3)} for k, f in local.items()}
    # pieces of the brain (and of the white matter) closer than the surface sub-grid: kept apart
    floors = []
    if surface_step:
        cell = float(surface_step) * np.asarray(zooms, float)
        for k in (4, 5):
            if k in shares:  # the next layer's pieces
                continue
            if pieces is None:
                lab = layer_pieces(masks[k])[0]
            elif k in pieces:  # a coarse copy: the pieces of the finer grid, per block
                lab = np.pad(pieces[k], pad) * masks[k]
            else:  # one piece on the finer grid: a split the block vote made is not kept open
                continue
            floors += separation_floors(lab, k, zooms, cell)
            del lab
    # layers held apart by floors keep one level (the floors are measured with it)
    local_masks = {k: masks[k] for k in LOCAL_CALIBRATION_LAYERS if calibrate_step and local_calibration_mm
                   and k not in shares and not any(f.layer == k for f in floors)}
    del masks
    # distance (mm) to the nearest bone (or cavity) voxel, less bone_defect_distance_mm: where > 0 the
    # bone layer exists only because of its minimum thickness (a skull defect); those tetrahedra
    # are re-tagged after meshing (_open_bone_defects), and the calibration below allows for it
    bone = None
    if "bone" in done:
        within = bone_defect_distance_mm(zooms)
        # probe_mm: how far along a bone surface's normal real bone may lie from a tetrahedron of the
        # mesh's bone layer: the thickness rules push the bone surfaces out by up to the sum of the
        # minimum thicknesses inside it (thin bone under thin CSF and grey matter)
        # the tissue a defect's sheet becomes (_open_bone_defects): CSF inside, or the next layer in
        # where the labels have none; scalp outside, or none (0, dropped from the mesh)
        inside = [k for k in (3, 4, 5) if k not in absent]
        bone = {"excess_mm": done.pop("bone") - np.float32(within), "within_mm": within,
                "probe_mm": tk[2] + tk[3] + tk[4] + float(np.max(zooms)),
                # the bone's surfaces dip into a hole about a surface cell wide: a normal taken
                # over half a millimetre there leans onto the hole's wall, over a cell it does not
                # (a 4 mm hole through a 5 mm skull: 75-84 % of it bone -> 19-60 %)
                "normal_mm": float(surface_step or 2) * float(np.min(zooms)),
                "inside_tag": LAYER_FILL_TAG[inside[0]] if inside else 0,
                "outside_tag": LAYER_FILL_TAG[1] if 1 not in absent else 0}
    # where the CSF layer exists only because of its minimum thickness (the brain against the bone in
    # the labels): the voxels _open_layer_gaps gives the tissue they hold, and the calibration allows for
    # (computed once: the calibration below and _open_layer_gaps after meshing read the same voxels)
    far_from_csf = np.pad(done.pop("fluid") > csf_gap_mm(zooms), pad) if "fluid" in done else None
    # ... and where the grey matter's exists only because of its minimum thickness (the white matter
    # against a ventricle in the labels), which _open_layer_gaps gives the CSF or white matter they hold
    far_from_grey = grey_far = None
    if "grey" in done:
        far_from_grey = np.pad(done.pop("grey") > csf_gap_mm(zooms), pad)
        grey_far = far_from_grey & np.pad(np.isin(layer, (3, 5)), pad)
        grey_far_csf = np.pad(layer == 3, pad)
        if not grey_far.any():
            grey_far = far_from_grey = None
    if report is not None:
        report["layer_min_thickness_mm"] = {int(k): float(v) for k, v in tk.items()}
    csf_far = None
    if far_from_csf is not None and 3 not in absent and 4 not in absent and 3 not in shares:
        csf_far = far_from_csf & np.pad(np.isin(layer, (2, 4, 5)), pad)
        csf_far_brain = np.pad(layer >= 4, pad)
        if not csf_far.any():
            csf_far = None
    # split the deficit between both surfaces (a few sweeps), then enforce exactly
    _enforce(phis, tk_local)
    _apply_floors(phis, floors, tk_local)
    if calibrate_step:
        # volume calibration: shift each level set so that the marching-cubes surface on the
        # sub-grid (what the mesh gets) encloses the voxel volume of its nested mask (smoothing,
        # sub-sampling and the minimum thicknesses otherwise move CSF/GM volume by ~10 %)
        vox = float(np.prod(zooms))
        # the scalp's and the bone's outer surfaces enclose the air cavities too (meshed, then cut out
        # as holes): without them the bone came out short by the sinuses' volume (a SAMSEG head: -3.6 %)
        air_mm3 = float(np.count_nonzero(air)) * vox
        if layer_volume_mm3 is None:
            target = {k: float(counts[k:].sum()) * vox + (air_mm3 if k <= 2 else 0.0) for k in range(1, 6)}
        else:
            layer_mm3 = np.asarray(layer_volume_mm3, float)
            target = {k: float(layer_mm3[k:].sum()) + (air_mm3 if k <= 2 else 0.0) for k in range(1, 6)}
        base = dict(target)
        if bone is not None:
            # the voxels that are not bone (the distance is exact at voxel centres, 0 in bone voxels;
            # at the sub-points of _defect_share it is interpolated, and may pass the half-voxel defect
            # distance in the corners of a bone voxel, which therefore is not counted)
            no_bone = bone["excess_mm"] + np.float32(bone["within_mm"]) > 0
            inner_vox = np.pad(layer >= 3, pad)
        # floors hold part of a surface where the shifts cannot move it: two more rounds to converge
        for _ in range(5 if floors else 3):
            retagged = None
            target = dict(base)
            if bone is not None:
                # the bone sheet of a defect becomes scalp (outside the brain's voxels) or CSF:
                # bone outer surface encloses that much more, the CSF outer surface that much less.
                # Only what _open_bone_defects re-tags: not the sheet over thin bone along the
                # normal (counting that too took ~4 cm^3 too much from CSF on Colin27, -1.3 %)
                # Each voxel counts with the share of it the rule re-tags, on 8 points in it
                # (tetrahedra are re-tagged by their centres, anywhere in a voxel: whole voxels
                # counted by their centres missed the far half of the voxels next to a hole's rim,
                # bone -1.5 % on a skull with 30 holes 7 mm across, surf-6.17).  (The sheet's
                # fields change by at most ~0.45 voxel between a centre and its points.)
                reach = np.float32(0.6 * float(np.max(zooms)))
                sheet = np.argwhere(no_bone & (phis[2] < reach) & (phis[3] >= -reach))
                share = _defect_share(bone["excess_mm"], sheet, zooms, pad, phis[2], phis[3], bone)
                sheet, share = sheet[share > 0], share[share > 0]
                to_csf = inner_vox[tuple(sheet.T)]
                s_in = float(share[to_csf].sum()) * vox
                inner = shares.get(3, 3)  # the CSF's surface, or the next one in where the labels have no CSF
                target[2] += float(share.sum()) * vox - s_in
                target[inner] -= s_in
                # the sheet's scalp part lies outside the bone's outer surface in the mesh, its CSF
                # part inside the CSF's outer surface (as the targets above count them; voxels
                # mostly re-tagged)
                retagged = {}
                for kk, part, value in ((2, ~to_csf, -1), (inner, to_csf, 1)):
                    if kk in local_masks:
                        retagged[kk] = np.zeros(phis[2].shape, np.int8)
                        retagged[kk][tuple(sheet[part & (share >= 0.5)].T)] = value
                del sheet, share
            if csf_far is not None:
                # the CSF sheet becomes bone (outside the CSF's outer surface in the mesh) or brain
                # (inside the grey matter's): those surfaces enclose that much more and less
                sheet = np.argwhere(csf_far & (phis[3] < 0) & (phis[4] >= 0)
                                    & (phis[4] - phis[3] <= np.float32(CSF_SHEET_OF_MIN * tk[3])))
                to_brain = csf_far_brain[tuple(sheet.T)]
                target[3] += float(np.count_nonzero(~to_brain)) * vox
                target[4] -= float(np.count_nonzero(to_brain)) * vox
                retagged = {} if retagged is None else retagged
                for kk, part, value in ((3, ~to_brain, -1), (4, to_brain, 1)):
                    if kk in local_masks:
                        retagged.setdefault(kk, np.zeros(phis[3].shape, np.int8))[tuple(sheet[part].T)] = value
                del sheet
            if grey_far is not None:
                # the grey matter's sheet becomes CSF (inside the grey matter's outer surface in the mesh)
                # or white matter (outside the white matter's): those surfaces enclose that much more and less
                sheet = np.argwhere(grey_far & (phis[4] < 0) & (phis[5] >= 0)
                                    & (phis[5] - phis[4] <= np.float32(CSF_SHEET_OF_MIN * tk[4])))
                to_csf = grey_far_csf[tuple(sheet.T)]
                target[4] += float(np.count_nonzero(to_csf)) * vox
                target[5] -= float(np.count_nonzero(~to_csf)) * vox
                if 4 in local_masks:
                    retagged = {} if retagged is None else retagged
                    retagged.setdefault(4, np.zeros(phis[4].shape, np.int8))[tuple(sheet[to_csf].T)] = -1
                del sheet
            for k in range(1, 6):
                if k in shares:  # calibrated as the layer whose surface it shares
                    continue
                if k in local_masks:
                    _local_shift(phis, k, tk, local_masks[k], zooms, calibrate_step, local_calibration_mm,
                                 override=retagged.get(k) if retagged else None)
                c, last = 0.0, None
                layer_floors = [f for f in floors if f.layer == k]
                for _ in range(3):
                    if layer_floors:  # the floors hold wherever the level goes: measure with them
                        shifted = phis[k] - np.float32(c)
                        for f in layer_floors:
                            _raise_to(shifted, f)
                        v, a = _mc_volume_area(shifted, 0.0, zooms, calibrate_step)
                        del shifted
                    else:
                        v, a = _mc_volume_area(phis[k], c, zooms, calibrate_step)
                    # dV/dc is the integral of 1 / |grad phi| over the surface: the area where phi is
                    # a distance, more where smoothing flattened it (thin white-matter gyri: Newton
                    # with the area alone overshot by ~2x and oscillated, WM +5 % at 0.5 mm); the
                    # secant of the last two levels, kept between 1 and 4 areas
                    slope = a
                    if last is not None and c != last[0]:
                        slope = min(max((v - last[1]) / (c - last[0]), a), 4.0 * a)
                    last = (c, v)
                    c += (target[k] - v) / slope
                    c = float(np.clip(c, -1.5, 1.5))
                phis[k] -= np.float32(c)
            _enforce(phis, tk_local, sweeps=2)
            _apply_floors(phis, floors, tk_local)
        del retagged, local_masks, csf_far, grey_far
    phi_air = None
    if air.any():
        phi_air = _sdf(air, zooms, sigma_vox)
        np.maximum(phi_air, phis[2] + t, out=phi_air)
        np.maximum(phi_air, -phis[3] + t, out=phi_air)
        if not (phi_air < 0).any():
            phi_air = None
    return phis, phi_air, bone, far_from_csf, far_from_grey


def _white_meets_csf(layer: np.ndarray) -> bool:
    """Whether any white-matter voxel of ``layer`` (the nesting layers 0..5) shares a face with a CSF one."""
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        lo, hi = layer[tuple(a)], layer[tuple(b)]
        if np.any(((lo == 5) & (hi == 3)) | ((lo == 3) & (hi == 5))):
            return True
    return False


def _surface(phi: np.ndarray, zooms, pad: int, step: int):
    """Marching cubes of ``phi`` at 0 on every ``step``-th grid point (all surfaces on the same
    sub-grid: nested fields give disjoint, self-intersection-free surfaces; quadric decimation
    made self-intersections on Colin27)."""
    from skimage.measure import marching_cubes

    # one layer of "outside" around the sub-grid: the thickness sweeps can push a surface into the
    # padding where the head touches the volume edge (neck cut), which left it open
    sub = np.pad(phi[::step, ::step, ::step], 1, constant_values=np.float32(1e3))
    # keep the zero level off the grid points: values ~0 there made clusters of near-coincident
    # points (tiny triangles, flat tetrahedra) where several cube edges cross at one corner
    eps = np.float32(0.03 * step * float(np.min(zooms)))
    near = np.abs(sub) < eps
    sub[near] = np.where(sub[near] < 0, -eps, eps)
    verts, faces, _, _ = marching_cubes(sub, level=0.0, spacing=tuple(float(z) * step for z in zooms),
                                        allow_degenerate=False)
    verts = verts - (pad + step) * np.asarray(zooms)
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64), len(faces)


def _vertex_sum(f: np.ndarray, n: int, vals: np.ndarray) -> np.ndarray:
    """Sum of per-triangle ``vals`` (m, 3) over the triangles of each of the ``n`` vertices."""
    out = np.zeros((n, vals.shape[1]))
    for k in range(3):
        for d in range(vals.shape[1]):
            out[:, d] += np.bincount(f[:, k], weights=vals[:, d], minlength=n)
    return out


def _field_grad(phi, pts, zooms, pad, h=0.5):
    from ...fem.kernels import numba_ready

    if numba_ready():  # the same samples in one pass (the relaxation calls this ~240 times on Colin27)
        from ._kernels import central_gradient

        return central_gradient(phi, pts, zooms, pad, h)
    g = np.empty_like(pts)
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        g[:, a] = (_trilinear(phi, pts + e, zooms, pad) - _trilinear(phi, pts - e, zooms, pad)) / (2 * h)
    return g


def _project(phi, pts, zooms, pad, iters=2, max_step=0.5):
    """Newton steps of ``pts`` onto the level ``phi = 0`` (each step clamped to ``max_step`` mm)."""
    for _ in range(iters):
        f = _trilinear(phi, pts, zooms, pad)
        g = _field_grad(phi, pts, zooms, pad)
        step = (f / np.maximum((g * g).sum(1), 1e-6))[:, None] * g
        n = np.linalg.norm(step, axis=1)
        pts = pts - step * np.minimum(1.0, max_step / np.maximum(n, 1e-12))[:, None]
    return pts


def _fair_surface(v, f, phi, free, zooms, pad, rounds, band_mm):
    """Taubin's smoothing without shrinkage (lambda 0.5, mu -0.53, Taubin 1995) of the ``free``
    vertices, each step held within ``|phi| <= band_mm`` of the surface's level set (a point pushed
    past the band goes back to its edge along the field's gradient).  The level set of the smoothed
    voxel distances still carries the voxels' staircase as ripples a fraction of a voxel high; under
    a 1:100 conductivity jump they cost accuracy (docs/meshing.md, surf-6.3), and the band keeps
    the surface where the voxels put it."""
    import scipy.sparse as sp

    n = len(v)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    adj = sp.coo_matrix((np.ones(2 * len(i)), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # each edge once, whichever way round its triangles list it
    mean = sp.diags(1.0 / np.maximum(np.asarray(adj.sum(1)).ravel(), 1.0)) @ adj
    idx = np.flatnonzero(free)
    v0 = v
    for _ in range(int(rounds)):
        for lam in (0.5, -0.53):
            new = v[idx] + lam * ((mean[idx] @ v) - v[idx])
            level = _trilinear(phi, new, zooms, pad)
            out = np.abs(level) > band_mm
            if out.any():
                g = _field_grad(phi, new[out], zooms, pad)
                over = level[out] - np.sign(level[out]) * band_mm
                new[out] -= _newton_step(over, g, 5 * band_mm)
            v = v.copy()
            v[idx] = new
    # what is left is the offset from the level set averaged over a few rings of neighbours: a drift
    # (Taubin's filter, uniform weights on irregular marching-cubes triangles and the band's clamp
    # push convex surfaces out by ~0.06 mm on average, +4 % on a 15 mm box), not the vertex-to-vertex
    # ripple; take it back along the field's gradient
    offset = _trilinear(phi, v, zooms, pad)
    for _ in range(5):
        offset = mean @ offset
    g = _field_grad(phi, v[idx], zooms, pad)
    v = v.copy()
    v[idx] -= _newton_step(offset[idx], g, 5 * band_mm)
    from scipy.sparse.csgraph import connected_components

    _, piece = connected_components(adj, directed=False)
    target = _piece_volumes(v0, f, piece)
    v = _restore_piece_volumes(v, f, target, free, piece)
    # as in the relaxation: a triangle turned away from the field's normal (cos < 0.5, and worse than
    # before) is a fold, and faired vertices away from other surfaces are not checked again before
    # TetGen (a folded synthetic head: 6 self-crossing triangles, a second TetGen run); undo them
    facing0 = _facing(v0, f, phi, zooms, pad)
    kept = free.copy()
    for attempt in range(6):
        bad = _facing(v, f, phi, zooms, pad) < np.minimum(0.5, facing0)
        back = np.unique(f[bad])
        back = back[np.any(v[back] != v0[back], axis=1)]
        if not len(back):
            break
        v = v.copy()
        v[back] = v0[back]
        kept[back] = False
        if attempt < 4:  # the volume back on the vertices still faired (the last rounds: folds only)
            v = _restore_piece_volumes(v, f, target, kept, piece)
    return v


def _facing(v, f, phi, zooms, pad):
    """Cosine between each triangle's normal and the field's gradient at its centroid."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cr = np.cross(b - a, c - a)
    g = _field_grad(phi, (a + b + c) / 3.0, zooms, pad)
    return (cr * g).sum(1) / np.maximum(np.linalg.norm(cr, axis=1) * np.linalg.norm(g, axis=1), 1e-12)


def _newton_step(level, g, max_mm):
    """The step ``level g / |g|^2`` that takes a field's ``level`` to 0, at most ``max_mm`` long (where
    the gradient flattens, e.g. on the ridge of a thin layer's distance field, it would be long)."""
    step = (level / np.maximum((g * g).sum(1), 1e-6))[:, None] * g
    n = np.linalg.norm(step, axis=1)
    return step * np.minimum(1.0, max_mm / np.maximum(n, 1e-12))[:, None]


def _piece_volumes(v, f, piece):
    """Signed volume enclosed by each connected piece (``piece``: per vertex) of the surface."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return np.bincount(piece[f[:, 0]], weights=np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0,
                       minlength=int(piece.max()) + 1)


def _restore_piece_volumes(v, f, target, free, piece):
    """``v`` with the ``free`` vertices of each connected piece (``piece``: per vertex) of the surface
    moved along their normals, all by one distance per piece, so that each piece encloses its
    ``target`` volume: fairing moves no volume from one piece of a tissue to another (two grey-matter
    pieces half a voxel apart: 0.3 % without this)."""
    tri_piece = piece[f[:, 0]]
    npc = int(piece.max()) + 1
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cr = np.cross(b - a, c - a)
    normal = _vertex_sum(f, len(v), cr)
    normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-12)[:, None]
    free_area = np.bincount(tri_piece, weights=0.5 * np.linalg.norm(cr, axis=1) * free[f].sum(axis=1) / 3.0,
                            minlength=npc)
    shift = np.where(free_area > 0, (target - _piece_volumes(v, f, piece)) / np.maximum(free_area, 1e-12), 0.0)
    out = v.copy()
    out[free] += shift[piece[free], None] * normal[free]
    return out


def _relax_surface(v, f, phi, others, zooms, pad, cell, iters=8, weight=0.6, fair_rounds=0, fair_band_mm=0.0):
    """Tangential relaxation of a marching-cubes surface on its own level set: each vertex moves
    towards the area-weighted centroid of its triangles, in the tangent plane, then back onto
    ``phi = 0`` (Newton).  Marching cubes puts vertices wherever the level crosses a grid edge, so a
    fifth of its triangles have a shape quality below 0.5 (tiny or needle triangles near grid
    points), and TetGen ``-Y`` keeps every one of them as a face of a flat tetrahedron.  Vertices
    closer than ``0.25 cell`` to another surface (``others``) stay put, those within ``0.75 cell``
    move less (thin layers: moving there made neighbouring surfaces cross), and so do those off the
    level set (the caps closing a surface at the edge of the volume).  A move that turns a triangle
    by more than 60 deg from the field's normal is undone.  Then ``fair_rounds`` of
    :func:`_fair_surface` of the vertices at least ``0.75 cell`` from the other surfaces and from the
    other side of their own tissue and of the gap outside it, within ``fair_band_mm`` of the level set."""
    n = len(v)
    dmin = np.full(n, np.inf)
    for o in others:
        dmin = np.minimum(dmin, np.abs(_trilinear(o, v, zooms, pad)))
    w = weight * np.clip((dmin - 0.25 * cell) / (0.5 * cell), 0.0, 1.0)
    w[np.abs(_trilinear(phi, v, zooms, pad)) > 0.05 * cell] = 0.0
    move = w > 0
    near = dmin < 1.5 * cell  # where a relaxed triangle may cross a neighbouring surface
    if not move.any():
        return v, near & move
    for _ in range(iters):
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        cr = np.cross(b - a, c - a)
        area = 0.5 * np.linalg.norm(cr, axis=1) + 1e-12
        acc = _vertex_sum(f, n, np.column_stack([area[:, None] * (a + b + c) / 3.0, area, cr]))
        target = acc[:, :3] / np.maximum(acc[:, 3:4], 1e-12)
        nrm = acc[:, 4:7] / np.maximum(np.linalg.norm(acc[:, 4:7], axis=1), 1e-12)[:, None]
        d = target - v
        d -= (d * nrm).sum(1)[:, None] * nrm
        new = v.copy()
        new[move] = _project(phi, v[move] + w[move, None] * d[move], zooms, pad)
        facing = _facing(new, f, phi, zooms, pad)
        for _ in range(4):  # undo moves that fold a triangle over
            bad = facing < 0.5
            if not bad.any():
                break
            vb = np.unique(f[bad])
            new[vb] = v[vb]
            undone = np.zeros(n, bool)
            undone[vb] = True
            redo = undone[f].any(axis=1)  # only the triangles around the vertices put back change
            facing[redo] = _facing(new, f[redo], phi, zooms, pad)
        v = new
    if fair_rounds and fair_band_mm > 0:
        # only where the relaxation moved freely (>= 0.75 cell from any other surface): faired vertices
        # closer than that to a thin layer's other side crossed it (Colin27: 3,617 put back, CSF -6 %)
        # and where the surface's own tissue and the gap outside it are that thick too (the two banks
        # of a sulcus are one surface: faired, they crossed each other)
        d = 0.75 * cell
        g = _field_grad(phi, v, zooms, pad)
        g /= np.maximum(np.linalg.norm(g, axis=1), 1e-12)[:, None]
        thick = (_trilinear(phi, v + d * g, zooms, pad) > 0.5 * d) & (_trilinear(phi, v - d * g, zooms, pad) < -0.5 * d)
        v = _fair_surface(v, f, phi, (w >= weight * (1 - 1e-9)) & thick, zooms, pad, fair_rounds, fair_band_mm)
    return v, near & move


def _signed_volume(v, f) -> float:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->", a, np.cross(b, c))) / 6.0


def _keep_enclosed_volume(v, f, v_mc, max_move, total_mm3=None):
    """The relaxed surface ``v`` moved along its normals (only the vertices the relaxation moved, by one
    distance per group of pieces below, at most ``max_move`` mm) to enclose what the marching-cubes
    surface ``v_mc`` encloses: the calibration in :func:`nested_fields` made that the voxel volume,
    and relaxing a folded surface changes it (Colin27: the grey matter's outer surface +3.6 cm^3,
    which is -1.2 % of the CSF between it and the next surface).  A small connected piece of the
    surface (under :data:`OWN_VOLUME_AREA_SHARE` of its area: a ventricle's or a haemorrhage's wall
    in the white matter, an island) keeps its own volume; the others keep theirs together, as
    before.  The relaxation rounds a small closed piece out (a 1.4 mL haemorrhage in Colin27's white
    matter, its wall four 4 mm cells across: +10 % on both walls of the grey sheet around it), which
    one shift of the whole surface hardly touches.  ``total_mm3``: what the surface's field encloses
    measured as the calibration measures it (:func:`_mc_volume_area`, on the final field), which the
    large pieces then keep together with the small ones' own: the marching cubes of :func:`_surface`
    keep the level off the sub-grid points, which the calibration cannot follow (its volume would
    jump with the level), and which made two 1.7 mL boxes on 4 mm cells +1.1 %."""
    moved = np.any(v != v_mc, axis=1)
    if not moved.any():
        return v
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = len(v)
    edges = sp.coo_matrix((np.ones(2 * len(f)), (np.r_[f[:, 0], f[:, 1]], np.r_[f[:, 1], f[:, 2]])), shape=(n, n))
    n_pieces, piece = connected_components(edges, directed=False)
    a, b, c = v_mc[f[:, 0]], v_mc[f[:, 1]], v_mc[f[:, 2]]
    piece_area = np.bincount(piece[f[:, 0]], weights=np.linalg.norm(np.cross(b - a, c - a), axis=1), minlength=n_pieces)
    own = piece_area < OWN_VOLUME_AREA_SHARE * piece_area.sum()
    own[np.argmax(piece_area)] = False  # (the largest keeps the rest, however many small pieces)
    group = np.where(own, np.arange(n_pieces), n_pieces)[piece]  # per vertex; n_pieces: the rest together
    tri_group = group[f[:, 0]]
    want = _piece_volumes(v_mc, f, group)
    if total_mm3 is not None and own.sum() < n_pieces:
        want[-1] = np.sign(want.sum()) * float(total_mm3) - want[:-1].sum()
    out, total = v.copy(), np.zeros(len(want))
    for _ in range(2):  # on a folded surface the area overstates dV/d(shift): a second step closes ~95 % of the rest
        a, b, c = out[f[:, 0]], out[f[:, 1]], out[f[:, 2]]
        cr = np.cross(b - a, c - a)  # |cr| = 2 area; along it the signed volume grows at the area's rate
        normal = _vertex_sum(f, n, cr)
        normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-12)[:, None]
        area = np.bincount(tri_group, weights=0.5 * np.linalg.norm(cr, axis=1) * moved[f].sum(axis=1) / 3.0,
                           minlength=len(want))
        d = np.where(area > 0, (want - _piece_volumes(out, f, group)) / np.maximum(area, 1e-12), 0.0)
        d = np.clip(d, -max_move - total, max_move - total)
        out[moved] += d[group[moved], None] * normal[moved]
        total += d
    return out


def _segment_crosses(p0, p1, a, b, c):
    """Vectorised: does segment ``p0 p1`` cross triangle ``abc``."""
    e1, e2, d = b - a, c - a, p1 - p0
    h = np.cross(d, e2)
    det = (e1 * h).sum(1)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = p0 - a
    u = (s * h).sum(1) * inv
    q = np.cross(s, e1)
    w = (d * q).sum(1) * inv
    t = (e2 * q).sum(1) * inv
    return ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t >= 0) & (t <= 1)


def intersecting_triangles(v: np.ndarray, f: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Triangles of ``(v, f)`` that cross another triangle with which they share no vertex (an edge of
    one through the other), among the pairs with at least one triangle in ``candidates`` (bool per
    triangle; default all).  Bounding-sphere pairs, then 6 segment tests per pair: by the numba kernel
    (:mod:`._kernels`) when numba is used, else by a k-d tree and vectorised numpy (the same pairs and
    tests; ~30x slower on Colin27)."""
    from scipy.spatial import cKDTree

    from ...fem.kernels import numba_ready

    if candidates is None:
        candidates = np.ones(len(f), bool)
    if not np.any(candidates):
        return np.zeros(0, np.int64)
    if numba_ready():
        from ._kernels import intersecting

        return intersecting(v, f, candidates)

    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cen = (a + b + c) / 3.0
    r = np.max([np.linalg.norm(p - cen, axis=1) for p in (a, b, c)], axis=0)
    tree = cKDTree(cen)
    sel = np.flatnonzero(candidates)
    lists = tree.query_ball_point(cen[sel], 2 * float(r.max()))
    lens = np.fromiter((len(x) for x in lists), np.int64, len(lists))
    pairs = np.column_stack([np.repeat(sel, lens), np.concatenate(lists).astype(np.int64)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    i, j = pairs[:, 0], pairs[:, 1]
    near = np.linalg.norm(cen[i] - cen[j], axis=1) <= r[i] + r[j]
    i, j = i[near], j[near]
    share = (f[i][:, :, None] == f[j][:, None, :]).any((1, 2))
    i, j = i[~share], j[~share]
    hit = np.zeros(len(i), bool)
    for x, y in ((i, j), (j, i)):
        for k0, k1 in ((0, 1), (1, 2), (2, 0)):
            hit |= _segment_crosses(v[f[x, k0]], v[f[x, k1]], v[f[y, 0]], v[f[y, 1]], v[f[y, 2]])
    return np.unique(np.concatenate([i[hit], j[hit]]))


def _encloses(outer, inner) -> bool:
    """Does the region of surface ``outer`` hold that of ``inner`` (layers "1".."5" nested, outermost
    first; "air" lies inside layers 1 and 2, apart from 3-5)?"""
    if inner == "air":
        return outer in ("1", "2")
    return outer != "air" and int(outer) < int(inner)


def _separate_crossings(v, f, vsurf, names, fields, zooms, pad, cell, max_rounds=8):
    """Push apart marching-cubes triangles of two surfaces that cross.

    Two fields at least ``tk`` apart at every sub-grid point can still give crossing triangles
    inside one cube when the cube is large against ``tk`` (chords of curved surfaces: seen once on
    a 0.5 mm head at the 4 mm sub-grid).  Each vertex of a crossing triangle moves along its own
    field's gradient, away from the other surface (the inner of a nested pair inwards, the outer
    outwards, surfaces of disjoint regions both inwards), 0.1 sub-grid cell per round, until
    nothing crosses.  Returns ``(v, number of vertices moved)``."""
    from scipy.spatial import cKDTree

    v = v.copy()
    moved = np.zeros(len(v), bool)
    tsurf = vsurf[f[:, 0]]
    encloses = np.array([[_encloses(a, b) for b in names] for a in names], bool).reshape(len(names), len(names))
    candidates = None  # all at first; then the triangles that crossed or moved (no other pair changed)
    for _ in range(max_rounds):
        bad = np.asarray(intersecting_triangles(v, f, candidates), np.int64)
        if not len(bad):
            break
        cen = v[f[bad]].mean(1)
        k = min(len(bad), 16)
        _, nn = cKDTree(cen).query(cen, k=k)
        nn = nn.reshape(len(bad), k)
        other = tsurf[bad][nn]
        first = np.argmax(other != tsurf[bad][:, None], axis=1)
        partner = np.where(other[np.arange(len(bad)), first] != tsurf[bad], other[np.arange(len(bad)), first], -1)
        push = np.zeros(len(v))
        paired = partner >= 0
        sign = np.where(encloses[tsurf[bad][paired], partner[paired]], 1.0, -1.0)
        np.add.at(push, f[bad[paired]], sign[:, None])
        for sid, name in enumerate(names):
            sel = np.flatnonzero((vsurf == sid) & (push != 0))
            if not len(sel):
                continue
            g = _field_grad(fields[name], v[sel], zooms, pad)
            g /= np.maximum(np.linalg.norm(g, axis=1), 1e-12)[:, None]
            v[sel] += (np.sign(push[sel]) * 0.1 * cell)[:, None] * g
            moved[sel] = True
        candidates = (push != 0)[f].any(axis=1)
        candidates[bad] = True
    return v, int(moved.sum())


def _touching_overlaps(v: np.ndarray, f: np.ndarray, candidates: np.ndarray,
                       checked: np.ndarray | None = None, backend: str = "auto") -> np.ndarray:
    """Triangles among ``candidates`` (bool per triangle) that overlap a triangle they share a vertex
    with, which :func:`intersecting_triangles` does not test: sharing one vertex, when the line where
    their planes meet lies inside both triangles' angles there (or, in one plane, a side of one inside
    the other's angle); sharing a side, when folded flat onto each other (normals within ~11 deg of
    opposite).  The same geometry as :func:`.edge_merge._fan_overlaps`, for whole surfaces.  Pairs
    meeting at a vertex of ``checked`` (bool per vertex: fans already tested) are skipped.  By the
    numba kernel (:func:`._kernels.touching`: the same tests, ~20x faster) when numba is used
    (``backend``: as :func:`collapse_short_edges`)."""
    from ...fem.kernels import numba_ready

    ptr, tri_of = vertex_incidence(f, len(v))
    if numba_ready(backend):
        from ._kernels import touching

        return touching(v, f, ptr, tri_of, candidates, checked)
    t = np.repeat(np.flatnonzero(candidates), 3)
    corner = np.tile(np.arange(3), int(np.count_nonzero(candidates)))
    q = f[t, corner]
    if checked is not None:
        t, corner, q = t[~checked[q]], corner[~checked[q]], q[~checked[q]]
    deg = ptr[q + 1] - ptr[q]
    t_pair, corner_pair = np.repeat(t, deg), np.repeat(corner, deg)
    start = np.repeat(ptr[q], deg)
    u = tri_of[start + np.arange(len(start)) - np.repeat(np.cumsum(deg) - deg, deg)]
    keep = u != t_pair
    t_pair, corner_pair, u = t_pair[keep], corner_pair[keep], u[keep]
    if not len(u):
        return np.zeros(0, np.int64)
    ft, fu = f[t_pair], f[u]
    shared = (ft[:, :, None] == fu[:, None, :]).any(axis=2).sum(axis=1)
    pv = v[f]
    nt = np.cross(pv[t_pair, 1] - pv[t_pair, 0], pv[t_pair, 2] - pv[t_pair, 0])
    nu = np.cross(pv[u, 1] - pv[u, 0], pv[u, 2] - pv[u, 0])
    lt, lu = np.linalg.norm(nt, axis=1), np.linalg.norm(nu, axis=1)
    hit = (shared == 2) & ((nt * nu).sum(1) < -0.98 * lt * lu)
    one = np.flatnonzero(shared == 1)
    if len(one):
        tt, uu, c = t_pair[one], u[one], corner_pair[one]
        qv = f[tt, c]
        cu = np.argmax(f[uu] == qv[:, None], axis=1)  # the shared vertex's place in u

        def sides(tri, k):  # the two sides from the shared vertex, in the triangle's turning order
            p0 = v[f[tri, k]]
            return v[f[tri, (k + 1) % 3]] - p0, v[f[tri, (k + 2) % 3]] - p0

        ut, wt = sides(tt, c)
        uv, wv = sides(uu, cu)
        n1, n2 = np.cross(ut, wt), np.cross(uv, wv)

        def inside(d, a, w, n):
            return ((np.cross(d, w) * n).sum(1) >= 0) & ((np.cross(a, d) * n).sum(1) >= 0)

        d = np.cross(n1, n2)
        flat = (d * d).sum(1) < 1e-12 * (n1 * n1).sum(1) * (n2 * n2).sum(1)
        cross = ((inside(d, ut, wt, n1) & inside(d, uv, wv, n2)) | (inside(-d, ut, wt, n1) & inside(-d, uv, wv, n2)))
        same_plane = (inside(uv, ut, wt, n1) | inside(wv, ut, wt, n1) | inside(ut, uv, wv, n2)
                      | inside(wt, uv, wv, n2))
        hit[one[np.where(flat, same_plane, cross)]] = True
    return np.unique(np.concatenate([t_pair[hit], u[hit]]))


def collapse_short_edges(v: np.ndarray, f: np.ndarray, min_len_mm: float, rounds: int = 6, backend: str = "auto"):
    """Merge the surface edges shorter than ``min_len_mm`` (:func:`.edge_merge.plan_merges`, shortest
    first, up to ``rounds`` rounds; why: :mod:`.edge_merge`).  A round whose merges make a triangle
    cross another one (:func:`intersecting_triangles`) or overlap one it shares a vertex with
    (:func:`_touching_overlaps`) is planned again without the merges involved (at most ``rounds``
    times in all).  Returns ``(v, f, merged, kept)``: the vertices left (``kept``: which of the input's,
    in order), the triangles renumbered, the number of merges."""
    from ...fem.kernels import numba_ready
    from .edge_merge import plan_merges as plan

    if numba_ready(backend):
        from ._kernels import plan_merges as plan
    v = np.ascontiguousarray(v, np.float64).copy()
    f = np.ascontiguousarray(f, np.int64).copy()
    merged = done = replanned = 0
    banned: set = set()
    while done < int(rounds) and replanned <= int(rounds):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        e = e[np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1) < min_len_mm]  # each edge twice
        if not len(e):
            break
        e = np.unique(e[:, 0] * len(v) + e[:, 1])  # one key per edge (a 1-D unique: ~40x faster)
        e = np.column_stack([e // len(v), e % len(v)])
        length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
        e = np.ascontiguousarray(e[np.argsort(length, kind="stable")])
        skip = np.zeros(len(e), bool)
        if banned:
            skip = np.fromiter(((int(a), int(b)) in banned for a, b in e), bool, len(e))
            if skip.all():
                break
        ptr, tri_of = vertex_incidence(f, len(v))
        chosen = np.zeros(len(e), np.bool_)
        points = np.zeros((len(e), 3))
        if not plan(v, f, ptr, tri_of, e[:, 0].copy(), e[:, 1].copy(), skip, chosen, points):
            break
        a, b = e[chosen, 0], e[chosen, 1]
        v_try = v.copy()
        v_try[a] = points[chosen]
        to = np.arange(len(v))
        to[b] = a
        f_try = to[f]
        keep = (f_try[:, 0] != f_try[:, 1]) & (f_try[:, 1] != f_try[:, 2]) & (f_try[:, 2] != f_try[:, 0])
        f_try = f_try[keep]
        touched = np.isin(f_try, a).any(axis=1)
        fan_tested = np.zeros(len(v), bool)  # plan_merges tested the fans around the merged points
        fan_tested[a] = True
        bad = np.union1d(intersecting_triangles(v_try, f_try, touched),
                         _touching_overlaps(v_try, f_try, touched, fan_tested, backend))
        if len(bad):  # drop the merges whose triangles cross or overlap, and plan the round again
            hit = np.isin(a, f_try[bad])
            banned |= {(int(x), int(y)) for x, y in zip(a[hit], b[hit])}
            replanned += 1
            continue
        v, f = v_try, f_try
        merged += int(len(a))
        done += 1
    kept = np.zeros(len(v), bool)
    kept[f.ravel()] = True
    new_index = np.cumsum(kept) - 1
    return v[kept], new_index[f], merged, kept


def _untangle(v, v0, f, near=None, max_rounds=12):
    """Undo the relaxation (back to the marching-cubes points ``v0``, which do not intersect) around
    every pair of crossing triangles, one ring wider each round, until none is left.  Returns
    ``(v, number of vertices put back)``."""
    moved = np.any(v != v0, axis=1)
    if near is not None:
        moved &= near
    cand = moved[f].any(1)
    back = 0
    for _ in range(max_rounds):
        bad = intersecting_triangles(v, f, cand)
        if not len(bad):
            return v, back
        vb = np.unique(f[bad])
        ring = np.unique(f[np.isin(f, vb).any(1)])
        put_back = int(np.count_nonzero(np.any(v[ring] != v0[ring], axis=1)))
        if not put_back:  # marching-cubes points cross: the rounds left would change nothing either
            break
        back += put_back
        v[ring] = v0[ring]
        cand = np.isin(f, ring).any(1)
    return v0.copy(), len(v)


def _seeds(region: np.ndarray, depth: np.ndarray, zooms, pad: int, min_depth: float):
    """One point (mm, local frame) per 6-connected piece of ``region``: its deepest grid point."""
    lab, n = label_pieces(region)
    if not n:
        return np.zeros((0, 3)), np.zeros(0)
    idx = ndi.maximum_position(depth, lab, np.arange(1, n + 1))
    d = ndi.maximum(depth, lab, np.arange(1, n + 1))
    pts = (np.array(idx, float) - pad) * np.asarray(zooms)
    keep = np.asarray(d) >= min_depth
    return pts[keep], np.asarray(d)[keep]


def _trilinear(phi, pts_mm, zooms, pad):
    from ...fem.kernels import numba_ready

    p = pts_mm / np.asarray(zooms) + pad
    if numba_ready():
        from ._kernels import trilinear

        return trilinear(phi, p)
    return ndi.map_coordinates(phi, p.T, order=1, mode="nearest")


def _shortest_chain(allowed: np.ndarray, nb: np.ndarray, src: np.ndarray, dst: np.ndarray,
                    cost: np.ndarray | None = None):
    """The fewest face-adjacent tetrahedra among ``allowed`` (bool per tet) leading from one of ``src``
    to one of ``dst`` (both ends included, from ``dst`` back), or None where none does; with ``cost``
    (per tet, > 0), the chain of the least summed cost (a step costs the mean of its two ends')."""
    from scipy.sparse.csgraph import dijkstra

    cand, loc, g = face_graph(allowed, nb)
    if cost is not None:
        rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
        g.data = 0.5 * (cost[cand[rows]] + cost[cand[g.indices]])
    dist, pred, _ = dijkstra(g, directed=False, indices=loc[src], min_only=True, return_predecessors=True)
    dm = dist[loc[dst]]
    if not np.isfinite(dm).any():
        return None
    cur = int(loc[dst][int(np.argmin(dm))])
    path = []
    while cur >= 0:  # back to a source tet (predecessor -9999)
        path.append(cand[cur])
        cur = int(pred[cur])
    return path


def _connect_pieces(ttags, nb, vol, tag, through, cen, tags, zooms, fluid_tags=(), allowed=None, cost=None,
                    layer_voxels=None, min_share=None, min_mm3=0.0):
    """Join the extra face-connected pieces of ``tag`` (the CSF's layer; the 8 largest) that the labels
    join to its largest, by re-tagging the shortest face-adjacent chain of tets through the
    ``through`` tissues: the ventricles, CSF inside the brain joined to the subarachnoid CSF by the
    aqueduct and foramina, which the surfaces' sampling closes.  "The labels join": the labels' CSF
    layer (and ``fluid_tags``, the CSF meshed inside the brain), in pieces by faces, edges and corners,
    has most of the piece's volume (at its tetrahedra's centres) in a piece that holds at least
    :data:`JOIN_MIN_SHARE` of the largest's.  A piece the labels have apart (a haemorrhage or a cyst
    in the white matter) stays apart: joined, a 0.9 mL ball of blood got a 0.8 mL channel of CSF
    through the white and grey matter, a shunt the labels do not have (surf-6.22).  The labels are
    read only where the mesh has such pieces.  ``allowed`` (bool per tet): other tetrahedra the chain
    may take, and then only pieces next to one are joined (the bone the skull-defect rule re-tagged,
    :func:`_open_bone_defects`); ``cost``: per tet, the chain's (:func:`_shortest_chain`), or a function
    that gives it;
    ``layer_voxels`` (bool, the grid of ``tags``): the layer's voxels where ``tags`` is a coarse copy
    that may have lost thin ones (:func:`downsample_layers`' bone); ``min_share``: the share of the
    largest's volume a labels' piece must hold to be the largest's (:data:`JOIN_MIN_SHARE`); ``min_mm3``:
    smaller pieces are left to the islands' clean-up.  Returns the number of re-tagged tets."""
    idx, n, lab = face_components(ttags == tag, nb, ttags)
    if n <= 1:
        return 0
    size = np.bincount(lab, weights=vol[idx])
    order = np.argsort(size)[::-1]
    others = order[1:9]  # (more is not a head's ventricles)
    others = others[size[others] >= float(min_mm3)]
    if not len(others):
        return 0
    if allowed is not None:  # only pieces next to a tetrahedron the chain may take
        near = np.zeros(n, bool)
        for j in range(4):
            o = nb[idx, j]
            near[lab[(o >= 0) & allowed[np.maximum(o, 0)]]] = True
        others = others[near[others]]
        if not len(others):
            return 0
    is_fluid = layer_lut(max(256, int(tags.max()) + 1)) == LAYER_OF_TAG.get(tag, -1)
    if len(fluid_tags):
        is_fluid[[t for t in fluid_tags if t < len(is_fluid)]] = True
    in_layer = is_fluid[tags] if layer_voxels is None else is_fluid[tags] | layer_voxels
    pieces, _ = label_pieces(in_layer, connectivity=26)  # (a bool lookup: one byte per voxel)
    del in_layer
    on_labels = sample_volume(pieces, cen[idx], zooms, fill=0)
    del pieces
    main = idx[lab == order[0]]
    held = np.bincount(on_labels[lab == order[0]], weights=vol[main])
    held[0] = 0.0
    min_held = JOIN_MIN_SHARE if min_share is None else float(min_share)
    main_pieces = set(np.flatnonzero(held >= min_held * held.sum()).tolist())
    moved = 0
    for other in others:
        mine = lab == other
        share = np.bincount(on_labels[mine], weights=vol[idx[mine]])
        share[0] = 0.0
        if not share.any() or int(np.argmax(share)) not in main_pieces:
            continue
        if callable(cost):  # (computed where a piece is to be joined)
            cost = cost()
        path = _shortest_chain(np.isin(ttags, list(through) + [tag]) | (False if allowed is None else allowed),
                               nb, idx[mine], main, cost)
        if path is None:
            continue
        path = [t for t in path if ttags[t] != tag]
        ttags[path] = tag
        moved += len(path)
        # (what is joined is the largest's now: the next piece may join through it)
        main = np.concatenate([main, idx[mine], np.asarray(path, dtype=main.dtype)])
    return moved


#: a piece of the labels' CSF layer that holds at least this share of the mesh's largest CSF piece
#: (by its tetrahedra's centres) is that piece's in the labels (:func:`_connect_pieces`)
JOIN_MIN_SHARE = 0.01


#: pieces of the white matter smaller than this fraction of its largest are specks, left to the tag
#: stage's island clean-up (Colin27's largest other piece: 0.014 %), not joined
WM_JOIN_MIN_FRACTION = 1e-3


def _white_matter_as_labelled(ttags, nb, vol, cen, tags, zooms, lesion=None, pieces=None) -> int:
    """Join the white matter's pieces that its labels join, each to the largest by the shortest chain
    of grey-matter tetrahedra, through those centred on the labels' white matter first (the bridge the
    surfaces lost), else through any.  Pieces the labels have apart, or join only through a lesion,
    stay apart: the labels' pieces are those :func:`nested_fields` keeps apart (26-connected), the
    lesion's voxels left out (on a coarse copy: ``pieces``, the finer grid's pieces, the lesion counted
    as tissue).  Pieces under :data:`WM_JOIN_MIN_FRACTION` of the largest are left as they are.
    Returns the number of re-tagged tets.

    Why: a thin bridge of the labels (a cerebellar peduncle of Colin27 scaled to 70 %) is lost by the
    smoothed surfaces, and the piece it held, 1.3 % of the white matter, then became grey matter in
    the tissue pass (its specks' rule): white matter -1.6 %, grey matter +1.8 % (docs/meshing.md,
    surf-6.16)."""
    wm, gm = LAYER_FILL_TAG[5], LAYER_FILL_TAG[4]
    idx, n, lab = face_components(ttags == wm, nb, ttags)
    if n <= 1:
        return 0
    size = np.sort(np.bincount(lab, weights=vol[idx]))
    if size[-2] < WM_JOIN_MIN_FRACTION * size[-1]:  # specks only (the labels' pieces not needed)
        return 0
    brain = np.flatnonzero((ttags == wm) | (ttags == gm))
    piece = np.zeros(len(ttags), np.int64)
    if pieces is not None:
        # a coarse copy (0.5 mm labels meshed on 1 mm blocks): the finer grid's pieces, as nested_fields
        # keeps them apart, or one piece there (the blocks lose a thin bridge: not kept open).  The
        # lesion is not left out here (those pieces count it as tissue): pieces the finer grid joins
        # only through a lesion are joined around it
        grid = pieces[5] if 5 in pieces else np.isin(tags, [t for t, k in LAYER_OF_TAG.items() if k == 5])
        piece[brain] = sample_volume(grid, cen[brain], zooms, fill=0)
    else:
        mask = np.isin(tags, [t for t, k in LAYER_OF_TAG.items() if k == 5])
        if lesion is not None:
            mask &= ~np.asarray(lesion, bool)
        if not mask.any():
            return 0
        # labelled in the white matter's box only (a 0.5 mm head meshed on its own grid: ~100 M voxels)
        box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in
                    (np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)))
        lab = layer_pieces(mask[box])[0]
        corner_mm = np.array([sl.start for sl in box], float) * np.asarray(zooms, float)
        piece[brain] = sample_volume(lab, cen[brain] - corner_mm, zooms, fill=0)

    def piece_of(t):  # the labels' piece most of these tetrahedra's volume lies in (0: none)
        votes = np.bincount(piece[t], weights=vol[t])
        votes[0] = 0.0
        return int(np.argmax(votes)) if votes.any() else 0

    unreachable = np.zeros(len(ttags), bool)
    moved = 0
    for _ in range(8):
        idx, n, lab = face_components(ttags == wm, nb, ttags)
        if n <= 1:
            break
        size = np.bincount(lab, weights=vol[idx])
        order = np.argsort(size)[::-1]
        main = idx[lab == order[0]]
        mine = piece_of(main)
        big = [p for p in order[1:] if size[p] >= WM_JOIN_MIN_FRACTION * size[order[0]]]
        src = next((t for t in (idx[lab == p] for p in big) if mine and not unreachable[t[0]] and piece_of(t) == mine),
                   None)
        if src is None:
            break
        for allowed in ((ttags == gm) & (piece == mine), ttags == gm):
            allowed[main] = True
            allowed[src] = True
            path = _shortest_chain(allowed, nb, src, main)
            if path is not None:
                break
        if path is None:
            unreachable[src] = True
            continue
        path = [t for t in path if ttags[t] != wm]
        ttags[path] = wm
        moved += len(path)
        # the largest piece grew: a piece whose only way to it ran through the one just joined is tried again
        unreachable[:] = False
    return moved


#: interim tag of lesion tets while islands are cleaned and CSF pieces joined (a deep CSF lesion is
#: neither an island to remove nor a piece to join to the outer CSF)
_LESION = 254


def _clear_of_surfaces(pts: np.ndarray, fields, zooms, pad: int, gap_mm: float) -> np.ndarray:
    """Which free vertices ``pts`` (mm, local frame) lie inside the head (``fields[0]``) and farther than
    ``gap_mm`` from every input surface (each field's zero level): closer ones make flat tetrahedra
    against the ``-Y`` facets."""
    keep = _trilinear(fields[0], pts, zooms, pad) < -gap_mm
    for phi in fields:
        keep &= np.abs(_trilinear(phi, pts, zooms, pad)) > gap_mm
    return keep


def lesion_point_spacing(lesion: np.ndarray, zooms, max_points: int = 100_000) -> float:
    """The spacing (mm) of :func:`_lesion_points`' lattice: 1.5 voxels, coarser for a lesion that would
    take more than ``max_points``."""
    zooms = np.asarray(zooms, float)
    return max(1.5 * float(zooms.min()), (2.0 * float(lesion.sum()) * float(np.prod(zooms)) / max_points) ** (1 / 3))


def _lesion_points(lesion: np.ndarray, fields, zooms, pad: int, surface_cell_mm: float = 0.0,
                   max_points: int = 100_000) -> np.ndarray:
    """Free TetGen vertices (mm, local frame) in and around the lesion: a BCC lattice of spacing
    1.5 voxels (coarser if it would exceed ``max_points``) within one spacing of a lesion voxel,
    inside the head and at least 0.4 spacing, and :data:`LESION_CLEARANCE_OF_CELL` of the surfaces'
    sub-grid cell ``surface_cell_mm``, from every input surface (closer points make flat tets against
    the ``-Y`` facets: a surface triangle as wide as the cell under a vertex 0.6 mm away).  Small
    tets there make the lesion (the tets centred in a lesion voxel) follow the mask to about a
    voxel, however coarse the surfaces."""
    zooms = np.asarray(zooms, float)
    s = lesion_point_spacing(lesion, zooms, max_points)
    idx = np.argwhere(lesion)
    m = np.ceil(s / zooms).astype(int) + 1
    lo = np.maximum(idx.min(0) - m, 0)
    hi = np.minimum(idx.max(0) + m + 1, lesion.shape)
    box = lesion[tuple(slice(a, b) for a, b in zip(lo, hi))]
    dist = distance_to_background(~box, zooms)
    pts = []
    for off in (0.0, 0.5 * s):
        axes = [np.arange(lo[i] * zooms[i] + off, (hi[i] - 1) * zooms[i], s) for i in range(3)]
        pts.append(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))
    pts = np.concatenate(pts)
    k = np.clip(np.rint(pts / zooms).astype(int) - lo, 0, np.array(box.shape) - 1)
    keep = dist[tuple(k.T)] <= s
    pts = pts[keep]
    gap = max(0.4 * s, LESION_CLEARANCE_OF_CELL * float(surface_cell_mm))
    return pts[_clear_of_surfaces(pts, fields, zooms, pad, gap)]


def _interface_points(labels: np.ndarray, lzooms, offset_mm, fields, zooms, pad: int, spacing_mm: float,
                      layers=None, max_points: int = 200_000, fold_tags=(), clearance: float = 0.4,
                      avoid_tags=(), fold_layers=(4,), layer_of: dict[int, int] | None = None) -> np.ndarray:
    """Free TetGen vertices (mm, local frame) on the interfaces between two tissues of one nesting layer
    (``layers``, default :data:`INTERFACE_POINT_LAYERS`: scalp | muscle | eyes, compact | spongy bone,
    CSF | blood): centres of the voxel faces between them, one per ``spacing_mm`` cube, tissue pair and
    side (which of the two lies outwards), the face nearest the group's mean (coarser cubes if there
    would be more than ``max_points``), at least ``clearance`` spacings from every input surface.
    ``labels`` (SimNIBS tags) on a grid of ``lzooms`` whose voxel-frame mm are this grid's plus
    ``offset_mm``.  ``fold_tags``: stand-ins of the folds' CSF in the grey-matter layer (4), whose
    interfaces with the layer's other tissues get vertices too, one per cube and pair whichever side
    (:data:`FOLD_POINT_CELL`; where a fold reaches the white matter, another layer, its floor gets
    none: the white-matter surface lies there); with ``layers=()`` only those, searched on the box of
    the folds' voxels.  ``fold_layers``: the layers of ``fold_tags`` (the grey matter's; a user's
    tissue inside the brain: the grey and white matter's).  ``avoid_tags``: no vertex within a cube
    of a face of these tissues (the folds' blood: the vertices broke a thin sheet of it into many
    pieces).  ``layer_of``: {tag: layer} for tissues meshed in another layer than their own.
    Tetrahedra with vertices on an interface follow it (docs/meshing.md, surf-6.12, surf-6.19,
    surf-6.20)."""
    layers = INTERFACE_POINT_LAYERS if layers is None else layers
    lz = np.asarray(lzooms, float)
    fold_tags = np.asarray(sorted(fold_tags), np.int64)
    origin = np.zeros(3, np.int64)  # (the grid's index of labels[0, 0, 0] after a crop)
    if not len(layers) and len(fold_tags):  # the folds alone: on their box (a 0.5 mm head: 114 M voxels)
        m = np.isin(labels, fold_tags)
        ends = [np.flatnonzero(m.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
        if any(len(e) == 0 for e in ends):
            return np.zeros((0, 3))
        origin = np.array([max(int(e[0]) - 1, 0) for e in ends], np.int64)
        labels = labels[tuple(slice(o, int(e[-1]) + 2) for o, e in zip(origin, ends))]
        del m
    fold_layers = tuple(fold_layers) if len(fold_tags) else ()
    lut = layer_lut(max(256, int(labels.max()) + 1), layer_of).astype(np.int8)
    lut[~np.isin(lut, tuple(layers) + fold_layers)] = 0  # (int8: no isin over the grid)
    lay = lut[labels]
    centres, keys, near_avoid = [], [], []
    avoid_tags = np.asarray(sorted(avoid_tags), np.int64)
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        la = lay[tuple(lo)]
        face = la == lay[tuple(hi)]
        face &= la > 0
        del la
        face &= labels[tuple(lo)] != labels[tuple(hi)]
        idx = np.argwhere(face)
        del face
        a = labels[tuple(lo)][tuple(idx.T)].astype(np.int64)
        b = labels[tuple(hi)][tuple(idx.T)].astype(np.int64)
        fold = np.zeros(len(idx), bool)
        if len(fold_tags):  # in the folds' layers, only the walls of the folds' stand-ins
            fold = np.isin(lay[tuple(lo)][tuple(idx.T)], fold_layers)
            wall = np.isin(a, fold_tags) | np.isin(b, fold_tags)
            if not (wall | ~fold).all():
                idx, a, b, fold = idx[wall | ~fold], a[wall | ~fold], b[wall | ~fold], fold[wall | ~fold]
        c = (idx + origin).astype(float)
        c[:, ax] += 0.5
        centres.append(c * lz)
        near_avoid.append(np.isin(a, avoid_tags) | np.isin(b, avoid_tags))
        # the faces of one interface in a cube: the same two tissues, the same one outwards (the two
        # interfaces of a diploe 2 mm thick, one cube across, differ in which tissue is outside:
        # "outwards" as the outermost field grows along the face's axis)
        step = np.zeros(3)
        step[ax] = 0.5 * lz[ax]
        local = c * lz - np.asarray(offset_mm, float)
        grows = _trilinear(fields[0], local + step, zooms, pad) > _trilinear(fields[0], local - step, zooms, pad)
        outer = np.where(grows, b, a)
        # (a fold narrower than a cube: one vertex on either wall, not one on each)
        keys.append(np.column_stack([np.minimum(a, b), np.maximum(a, b), (outer == np.maximum(a, b)) & ~fold]))
    pts = np.concatenate(centres)
    if not len(pts):
        return pts
    s = max(float(spacing_mm), (float(len(pts)) * float(np.prod(lz)) ** (2 / 3) / max_points) ** 0.5)
    cube = np.floor(pts / s).astype(np.int64)
    near_avoid = np.concatenate(near_avoid)
    if near_avoid.any():  # none in the cubes next to a face of ``avoid_tags`` (nor in its own)
        shifts = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
        blocked = (np.unique(cube[near_avoid], axis=0)[:, None, :] + shifts[None]).reshape(-1, 3)
        low = np.minimum(cube.min(0), blocked.min(0))
        span = np.maximum(cube.max(0), blocked.max(0)) - low + 1
        ok = ~np.isin(np.ravel_multi_index((cube - low).T, span), np.ravel_multi_index((blocked - low).T, span))
        pts, cube, keys = pts[ok], cube[ok], [np.concatenate(keys)[ok]]
        if not len(pts):
            return pts
    group = np.column_stack([cube, np.concatenate(keys)])
    # one int64 per row, in the rows' lexicographic order (np.unique(axis=0) sorts the rows, slowly),
    # unless the rows' ranges would overflow it
    group -= group.min(0)
    span = group.max(0) + 1
    if float(np.prod(span.astype(float))) < 2.0 ** 62:
        code = np.zeros(len(group), np.int64)
        for col, n in zip(group.T, span):
            code = code * n + col
        _, inv, count = np.unique(code, return_inverse=True, return_counts=True)
    else:
        _, inv, count = np.unique(group, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
    mean = np.zeros((len(count), 3))
    np.add.at(mean, inv, pts)
    mean /= count[:, None]
    # each group's face centre nearest its mean: on the interface (a mean of faces can fall between
    # two interfaces, or inside a small blob)
    d = ((pts - mean[inv]) ** 2).sum(1)
    order = np.lexsort((d, inv))
    first = order[np.r_[True, inv[order][1:] != inv[order][:-1]]]
    pts = pts[first] - np.asarray(offset_mm, float)
    return pts[_clear_of_surfaces(pts, fields, zooms, pad, clearance * s)]


class TetGenFailed(MeshError):
    """TetGen refused the head surfaces (crossing or touching surfaces it could not recover): surfaces
    held further apart may pass (:func:`stimsim.head.meshers.core.make_head_mesh` retries).  ``reason``:
    TetGen's words; ``tried``: the minimum-thickness factors tried (1: as asked); ``thin_in_places``:
    whether the surfaces had lower minimums where the bone or the CSF is thin in places
    (:func:`_local_floors`), which the retries give up first."""

    def __init__(self, reason, tried=(1.0,), thin_in_places=False):
        self.reason, self.tried = str(reason), tuple(float(f) for f in tried)
        self.thin_in_places = bool(thin_in_places)
        also = (f" (also with the minimum layer thicknesses x{', x'.join(f'{f:g}' for f in self.tried[1:])})"
                if len(self.tried) > 1 else "")
        super().__init__(f"TetGen failed on the head surfaces ({self.reason}){also}; try another element size, "
                         "or method='lattice'")


def _tetgen_unless_crossing(verts, faces, switches, verbose, stats):
    """TetGen's ``(nodes, tetrahedra)``, or None when it finds the surfaces crossing."""
    try:
        return tetgen_worker.tetrahedralize(verts, faces, switches, verbose, stats)
    except RuntimeError as exc:
        if not _crossing(exc):
            raise
    return None


def _crossing(exc: RuntimeError) -> bool:
    """Whether TetGen's refusal says the surfaces cross: it says so, or it crashed on them (two
    overlapping spheres abort it, :mod:`.tetgen_worker`)."""
    return "intersect" in str(exc) or isinstance(exc, tetgen_worker.TetGenCrashed)


def surface_mesh_from_tags(tags: np.ndarray, cavity: np.ndarray, zooms, h: float, *, min_thickness_mm=0.5,
                           sigma_vox=0.7, minratio=1.5, mindihedral=12.0, surface_step=None, extra_switches="",
                           progress_cb=None, verbose=False, thickness_scale=1.0, calibrate=True,
                           island_fraction=0.01, lesion=None, lesion_tag=3, relax_iterations=8, sliver_move=0.0,
                           layer_volume_mm3=None, bone_voxels=None, csf_voxels=None, lesion_voxels=None,
                           pieces=None,
                           fair_rounds=0, fair_band_vox=0.3, local_calibration_mm=0.0, min_edge_cell=0.0,
                           sub_tissue_labels=None, sub_tissue_roaming=None, sub_tissue_volumes_mm3=None,
                           sub_tissue_never_merged=(), sub_tissue_part_of=None, sub_tissue_joined=None,
                           interface_point_cell=0.0, fold_point_cell=0.0, thin_layer_scale=0.0,
                           thin_layer_voxel_mm=1.0, local_floors=True, sub_tissue_layer_of=None):
    """Nested surfaces -> TetGen.  Returns ``(nodes_mm_local, tets, tet_tags, info)``; the info's
    ``"tet_neighbors"`` holds the tets' face neighbours (:func:`.topology.tet_neighbors`), an array
    for the caller's checks rather than a record.

    ``h``: target element size (mm); tets get a max volume ``h^3 / (6 sqrt 2)`` (regular tet
    of edge h); surfaces come from marching cubes on every ``surface_step``-th grid point (2).

    ``extra_switches="Y"`` (keep surface triangles) is what gets through TetGen on Colin27.
    ``thickness_scale`` multiplies the minimum layer thicknesses (2 for ``surface_step`` 3-4),
    ``calibrate`` shifts each surface to its voxel volume, ``island_fraction`` is the size
    (of a tissue's largest piece) below which pieces are re-tagged.  ``lesion`` (bool, same grid as
    ``tags``): its voxels are meshed as the layer of ``lesion_tag`` (CSF's for a tag outside the
    SimNIBS layers, e.g. 11) and the tets in it get ``lesion_tag``.  ``sliver_move`` (a fraction of
    the smallest voxel edge; 0: off): how far surface nodes may move off their surface in the sliver
    pass (:mod:`.sliver`).  ``fair_rounds``: rounds of Taubin smoothing of the relaxed surfaces, each
    vertex held within ``fair_band_vox`` voxels of its level set (:func:`_fair_surface`; 0: off).
    ``min_edge_cell``: surface edges shorter than this many sub-grid cells are merged
    (:func:`collapse_short_edges`; with the relaxation only; 0: off).
    ``layer_volume_mm3``, ``bone_voxels``, ``csf_voxels``, ``pieces``: see :func:`nested_fields`.
    ``lesion_voxels``: ``(mask, zooms, offset_mm)`` of the finer grid the lesion was drawn on (its
    voxel-frame mm = this grid's + ``offset_mm``), which then decides which tetrahedra are lesion.
    ``sub_tissue_labels``: ``(labels, zooms, offset_mm, lesion)``, the same for the labels whose
    tissues inside a layer (eyes, muscle, compact and spongy bone, blood) the tetrahedra take, and
    the lesion on their grid (:mod:`.sub_tissues`; default: ``tags`` and ``lesion``);
    ``sub_tissue_roaming``: {tag: layers} of tissues that may take tetrahedra of several layers,
    ``sub_tissue_volumes_mm3``: {tag: mm^3} they should hold, ``sub_tissue_never_merged``: tags kept
    however far off their volume, ``sub_tissue_part_of``: {stand-in: tissue} (the folds' CSF),
    ``sub_tissue_joined``: {stand-in: tissue} (the folds' blood) (:func:`.sub_tissues.keep_sub_tissues`).
    ``sub_tissue_layer_of``: {tag: layer} for a user's tissues meshed inside another layer than the
    grey matter's (:func:`.core.enclosing_layers`; ``tags`` holds that layer's tissue there, the
    sub-tissue labels the user's).
    ``interface_point_cell``: free vertices on the interfaces between tissues of one layer (compact
    and spongy bone ...; a user's tissue in the brain and its neighbours; :func:`_interface_points`),
    one per this many sub-grid cells (0: none);
    ``fold_point_cell``: the same on the walls of the folds' CSF and blood (the stand-ins of
    ``sub_tissue_part_of`` and ``sub_tissue_joined``; :data:`FOLD_POINT_CELL`).
    ``thin_layer_scale``: minimum thicknesses of layers thin nearly everywhere lowered down to this
    scale (:func:`_thin_layer_floors`; 0: off; listed in the info's ``"thin_layers"``), their lowest
    floors scaled with ``thin_layer_voxel_mm``, the labels' voxel size (:func:`thin_layer_floor_scale`);
    with ``local_floors`` also those of the bone and the CSF where they are thin in places
    (:func:`_local_floors`; listed in ``"thin_in_places"``).  See the module docstring."""
    import tetgen

    for name, value in (("interface_point_cell", interface_point_cell), ("fold_point_cell", fold_point_cell)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"surface option {name}: a number of sub-grid cells, 0 (no such vertices) or more "
                             f"(default {INTERFACE_POINT_CELL if name == 'interface_point_cell' else FOLD_POINT_CELL}), "
                             f"got {value!r}")
    zooms = np.asarray(zooms, float)
    pad = 3
    info = {"timings_s": {}}
    if progress_cb:
        progress_cb("signed distances")
    t0 = time.perf_counter()
    phis, phi_air, bone, far_from_csf, far_from_grey = nested_fields(
        tags, cavity, zooms, min_thickness_mm=min_thickness_mm, sigma_vox=sigma_vox, pad=pad,
        thickness_scale=thickness_scale, calibrate_step=int(surface_step or 2) if calibrate else None,
        layer_volume_mm3=layer_volume_mm3, bone_voxels=bone_voxels, csf_voxels=csf_voxels,
        surface_step=int(surface_step or 2),
        pieces=pieces, local_calibration_mm=float(local_calibration_mm), fluid_tags=tuple(sub_tissue_roaming or ()),
        thin_layer_scale=thin_layer_scale, thin_layer_voxel_mm=thin_layer_voxel_mm, local_floors=local_floors,
        report=info)
    info["timings_s"]["fields_s"] = time.perf_counter() - t0
    if progress_cb:
        progress_cb("surfaces")
    t0 = time.perf_counter()
    step = int(surface_step or 2)
    verts, faces, nsurf = [], [], {}
    off = 0
    # one surface per field: a layer without voxels shares the next one's (nested_fields)
    fields = [(k, phis[k]) for k in range(1, 6) if not any(phis[j] is phis[k] for j in range(k + 1, 6))]
    fields += [("air", phi_air)] if phi_air is not None else []
    mc_verts, near, surf_names = [], [], []
    cell = step * float(np.min(zooms))
    for name, phi in fields:
        if not (phi[::step, ::step, ::step] < 0).any():  # e.g. a small air field on a coarse sub-grid
            continue
        v, f, n0 = _surface(phi, zooms, pad, step)
        mc_verts.append(v)
        surf_names.append(str(name))
        if relax_iterations:
            v_mc = v
            v, nr = _relax_surface(v, f, phi, [o for n2, o in fields if n2 != name], zooms, pad, cell,
                                   iters=int(relax_iterations), fair_rounds=int(fair_rounds),
                                   fair_band_mm=float(fair_band_vox) * float(np.min(zooms)))
            # (up to a tenth of a cell: the relaxation grew two 1.7 mL boxes by 7 %, of which a
            # twentieth of a cell, the limit before surf-6.22, gave back two thirds)
            v = _keep_enclosed_volume(v, f, v_mc, 0.1 * cell, _mc_volume_area(phi, 0.0, zooms, step)[0])
            near.append(nr)
        verts.append(v)
        faces.append(f + off)
        off += len(v)
        nsurf[str(name)] = (n0, len(f))
    mc_all = np.concatenate(mc_verts) if mc_verts else np.zeros((0, 3))
    vsurf = np.concatenate([np.full(len(m), i) for i, m in enumerate(mc_verts)]) if mc_verts else np.zeros(0, int)
    named_fields = {str(n): phi for n, phi in fields}
    premerge = None
    if relax_iterations:
        t1 = time.perf_counter()
        fs = np.concatenate(faces)
        relaxed = np.concatenate(verts)
        # the marching-cubes triangles of two surfaces may cross each other (chords inside one sub-grid
        # cube), where no relaxed point is: the untangling below looks at moved points only, and puts
        # them back onto those triangles.  Pushed apart first (Colin27 scaled to 80 %: 9 such triangles;
        # TetGen refused the surfaces twice and the whole head was meshed unrelaxed, 218 tetrahedra
        # below the shape bounds)
        pushed, moved = _separate_crossings(mc_all, fs, vsurf, surf_names, named_fields, zooms, pad, cell)
        near = np.concatenate(near)
        if moved:
            info["crossing_vertices_moved"] = moved
            # a pushed point the relaxation did not move now differs from its marching-cubes point:
            # the untangling looks at it (the relaxation's "near" leaves out the points it did not move)
            near |= np.any(pushed != mc_all, axis=1)
            mc_all = pushed
        v, back = _untangle(relaxed.copy(), mc_all, fs, near)
        if back == len(v):  # not even the marching-cubes points were free of crossings (the pushes did not clear them)
            pushed, moved = _separate_crossings(mc_all, fs, vsurf, surf_names, named_fields, zooms, pad, cell)
            info["crossing_vertices_moved"] = info.get("crossing_vertices_moved", 0) + moved
            near |= np.any(pushed != mc_all, axis=1)
            mc_all = pushed
            v, back = _untangle(relaxed, mc_all, fs, near)
        info["relax_vertices_put_back"] = back
        if min_edge_cell:
            # a fold far from the other surfaces (the untangling above looks near them only; Colin27
            # at 6 mm had three crossing triangles) is put back first: TetGen would refuse the merged
            # surfaces for it, and the retry below cannot put marching-cubes points on merged ones
            v, back = _untangle(v, mc_all, fs, None)
            info["relax_vertices_put_back"] += back
            # the surfaces as untangled, kept for TetGen's retries: those put marching-cubes points
            # back, which are free of crossings on the unmerged triangles only
            premerge = (v, fs, mc_all, vsurf, dict(nsurf))
            v, fs, info["short_edges_merged"], kept = collapse_short_edges(v, fs, float(min_edge_cell) * cell)
            mc_all, vsurf = mc_all[kept], vsurf[kept]
            count = np.bincount(vsurf[fs[:, 0]], minlength=len(surf_names))
            nsurf = {name: (nsurf[name][0], int(count[i])) for i, name in enumerate(surf_names)}
        info["timings_s"]["untangle_s"] = time.perf_counter() - t1
        verts, faces = [v], [fs]
        relaxed_all = v
    lesion_pts = None
    if lesion is not None:  # free vertices that refine the mesh in the lesion
        lesion_pts = _lesion_points(lesion, [phi for _, phi in fields], zooms, pad,
                                    surface_cell_mm=step * float(np.max(zooms)))
        verts.append(lesion_pts)
        info["lesion_points"] = len(lesion_pts)
    lab, lz, loff = (tags, zooms, 0.0) if sub_tissue_labels is None else sub_tissue_labels[:3]
    layer_of = {int(t): int(k) for t, k in (sub_tissue_layer_of or {}).items()}
    extras = {}
    sub_layers = (layers_with_sub_tissues(value_counts(lab, minlength=256), layer_of)
                  if interface_point_cell or fold_point_cell else {})
    if interface_point_cell:  # free vertices on the interfaces between tissues of one layer
        if set(sub_layers) & set(INTERFACE_POINT_LAYERS):
            extras["interface_points"] = _interface_points(lab, lz, loff, [phi for _, phi in fields], zooms, pad,
                                                           float(interface_point_cell) * cell, layer_of=layer_of)
    fold_tags = sorted({*(sub_tissue_part_of or {}), *(sub_tissue_joined or {})})
    if fold_point_cell and fold_tags:  # ... on the walls of the folds' CSF, clear of their blood
        extras["fold_points"] = _interface_points(
            lab, lz, loff, [phi for _, phi in fields], zooms, pad, float(fold_point_cell) * cell, layers=(),
            fold_tags=fold_tags, clearance=FOLD_POINT_CLEARANCE, avoid_tags=sorted(sub_tissue_joined or {}))
    # ... and on the walls of a user's tissues in the brain (a tumour in the white matter: without them
    # the tetrahedra there, sized for the white matter, hold it as a few blocks or none)
    # (not the lesion's tag: the label clean-up gives it the specks it encloses)
    user = sorted({t for k in (4, 5) for t in sub_layers.get(k, ()) if t > 10} - set(fold_tags)
                  - set(sub_tissue_roaming or ()) - ({int(lesion_tag)} if lesion is not None else set()))
    if interface_point_cell and user:
        extras["user_tissue_points"] = _interface_points(
            lab, lz, loff, [phi for _, phi in fields], zooms, pad, float(interface_point_cell) * cell, layers=(),
            fold_tags=user, fold_layers=(4, 5), clearance=FOLD_POINT_CLEARANCE, layer_of=layer_of)
    spacing = {"interface_points": interface_point_cell * cell, "fold_points": fold_point_cell * cell,
               "user_tissue_points": interface_point_cell * cell}
    taken = []  # (points, spacing mm) of the sets kept so far
    from scipy.spatial import cKDTree

    for key, extra in extras.items():
        if lesion_pts is not None and len(lesion_pts) and len(extra):
            # none among the lesion's vertices (the folds it spares lie inside it: a fold vertex a
            # fraction of a millimetre from a lattice vertex gave Colin27 112 flat tetrahedra)
            near, _ = cKDTree(lesion_pts).query(extra, distance_upper_bound=lesion_point_spacing(lesion, zooms))
            extra = extra[~np.isfinite(near)]
        for pts, other in taken:
            # none near another set's: a user's tissue against the folds' CSF had vertices of both on
            # that wall, some at the same point (a 2 mL tumour across a fold: 487 flat tetrahedra, the
            # mesh refused); as far apart as a vertex keeps from the surfaces
            if len(pts) and len(extra):
                near, _ = cKDTree(pts).query(extra, distance_upper_bound=FOLD_POINT_CLEARANCE * min(other, spacing[key]))
                extra = extra[~np.isfinite(near)]
        taken.append((extra, spacing[key]))
        verts.append(extra)
        info[key] = len(extra)
    verts = np.concatenate(verts)
    faces = np.concatenate(faces)
    # marching-cubes points lie on grid lines (many exactly coplanar): a 1e-4 mm jitter keeps
    # TetGen from making exactly flat tetrahedra between them (seen on Colin27 with -Y)
    verts = verts + np.random.default_rng(12345).uniform(-1e-4, 1e-4, verts.shape)
    info["surface_triangles"] = nsurf
    info["timings_s"]["surfaces_s"] = time.perf_counter() - t0
    logger.info("surfaces (marching cubes -> decimated): %s", nsurf)

    # no region seeds: regions are recovered below as the face-connected pieces between the
    # input surfaces (the TetGen region attributes read back wrong tags, see STATUS)
    rid = 0
    # no hole seeds either: a seed of an air piece that the sub-grid surfaces miss made TetGen
    # delete the whole bone region (the "bone 0.2 mL" bug); air regions are dropped by the vote
    n_holes = 0
    info["region_seeds"] = rid
    info["hole_seeds"] = n_holes
    if progress_cb:
        progress_cb("tetgen")
    t0 = time.perf_counter()
    maxvol = h ** 3 / (6 * np.sqrt(2))
    if minratio:
        q = f"q{minratio:g}/{mindihedral:g}" if mindihedral else f"q{minratio:g}"
    else:
        q = ""
    switches = f"p{q}a{maxvol:.4g}{extra_switches}" + ("V" if verbose else "Q")
    tg_stats = {}  # the child process's memory (tetgen_worker)
    try:
        try:
            out = tetgen_worker.tetrahedralize(verts, faces, switches, verbose, tg_stats)
        except RuntimeError as exc:
            if not _crossing(exc):
                raise
            out = None
            if premerge is not None:  # first the surfaces as they were before their short edges merged
                relaxed_all, faces, mc_all, vsurf, nsurf = premerge
                rest = verts[int(np.count_nonzero(kept)):]  # the free vertices (the lesion's, the interfaces')
                verts = np.concatenate([relaxed_all, rest])
                verts = verts + np.random.default_rng(12345).uniform(-1e-4, 1e-4, verts.shape)
                info["short_edges_merged"], info["merges_undone"] = 0, True
                info["surface_triangles"] = nsurf
                out = _tetgen_unless_crossing(verts, faces, switches, verbose, tg_stats)
            if out is None and relax_iterations:
                # the untangling checks only the triangles near another surface (a fold of one surface
                # elsewhere is rare: a head sampled half a voxel off Colin27's grid had one); check them
                # all, put back what crosses, and try again before giving up the relaxation (which cost
                # that head 35 % more tetrahedra, 7x the poor ones and twice the TetGen time)
                jitter = verts[:len(mc_all)] - relaxed_all
                v2, back = _untangle(relaxed_all.copy(), mc_all, faces, None)
                if 0 < back < len(v2):  # else TetGen would refuse the same surfaces again
                    info["relax_vertices_put_back"] = info.get("relax_vertices_put_back", 0) + back
                    verts[:len(mc_all)] = v2 + jitter
                    out = _tetgen_unless_crossing(verts, faces, switches, verbose, tg_stats)
            if out is None:
                # a crossing the untangling missed: mesh the marching-cubes surfaces, with any of their
                # own crossings pushed apart (rare: chords of close surfaces inside one sub-grid cube)
                logger.warning("head surfaces intersect (%s); meshing the unrelaxed ones", exc)
                mc, moved = _separate_crossings(mc_all, faces, vsurf, surf_names, named_fields, zooms, pad, cell)
                info["crossing_vertices_moved"] = info.get("crossing_vertices_moved", 0) + moved
                verts[:len(mc)] = mc + np.random.default_rng(12345).uniform(-1e-4, 1e-4, mc.shape)
                info["relax_fallback"] = True
                out = tetgen_worker.tetrahedralize(verts, faces, switches, verbose, tg_stats)
    except RuntimeError as exc:  # TetGen's refusals (crossing surfaces, an internal error recovering them)
        # (no local name for it: the frame would hold its own traceback, and every array in it until
        # the garbage collector ran, through the retry: 3.0 GB against 2.0 on a 0.6 mm head)
        raise TetGenFailed(exc, thin_in_places=bool(info.get("thin_in_places"))) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # anything else on the way: one line, not retried
        raise MeshError(f"TetGen failed on the head surfaces ({exc}); try another element size, or "
                        "method='lattice'") from None
    nodes, elem = out[0], out[1]
    info["timings_s"]["tetgen_s"] = time.perf_counter() - t0
    info["tetgen_switches"] = switches
    if tg_stats.get("peak_mib"):  # this process at the call + TetGen's child at its peak (MiB)
        info["tetgen_peak_mib"] = round(float(tg_stats["peak_mib"]), 1)
    nodes = np.asarray(nodes, float)
    tets = np.asarray(elem, np.int64)[:, :4]

    # tags: regions = face-connected pieces of tets not separated by an input surface triangle
    # (-Y keeps every input triangle, and TetGen keeps the input points first); each region gets
    # the layer the majority (by volume) of its tet centroids fall in (trilinear signed distances)
    if progress_cb:
        progress_cb("tags")
    t0 = time.perf_counter()
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components


    from scipy.spatial import cKDTree

    nin = len(verts)
    if len(nodes) >= nin and np.allclose(nodes[:nin], verts, atol=1e-9):
        vmap = np.arange(nin)
    else:  # TetGen merged or reordered points: match the input points by position
        dist, vmap = cKDTree(nodes).query(verts)
        # points of surfaces TetGen dropped (inside a hole / outside the head) have no match
        vmap[dist > 1e-6] = -1
    info["unmatched_surface_points"] = int((vmap < 0).sum())
    if info["unmatched_surface_points"]:
        o = 0
        for name, (_, nt) in nsurf.items():
            nv = int(faces[o:o + nt].max()) + 1 if nt else 0
            lo = int(faces[o:o + nt].min()) if nt else 0
            info.setdefault("unmatched_per_surface", {})[name] = int((vmap[lo:nv] < 0).sum())
            o += nt

    nn = np.int64(len(nodes))
    sf = vmap[faces]
    sf = sf[(sf >= 0).all(1)]
    scode = np.unique(face_codes(sf[:, 0], sf[:, 1], sf[:, 2], nn))
    nb = tet_neighbors(tets)
    rows, cols = [], []
    ar = np.arange(len(tets))
    for k, (i, j, l) in enumerate(TET_FACES):
        other = nb[:, k]
        ok = other > ar
        code = face_codes(tets[ok, i], tets[ok, j], tets[ok, l], nn)
        pos = np.searchsorted(scode, code)
        pos[pos >= len(scode)] = 0
        cut = scode[pos] == code
        sel = np.flatnonzero(ok)[~cut]
        rows.append(sel)
        cols.append(other[sel])
    r, c = np.concatenate(rows), np.concatenate(cols)
    g = sp.coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(len(tets), len(tets)))
    ng, ginv = connected_components(g, directed=False)
    del g, r, c, rows, cols
    p = nodes[tets]
    cen = p.mean(1)
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    vol = np.abs(np.einsum("ij,ij->i", a, np.cross(b, c))) / 6.0
    del p, a, b, c
    lay = np.zeros(len(tets), np.int64)
    for k in range(1, 6):
        lay += _trilinear(phis[k], cen, zooms, pad) < 0
    if phi_air is not None:
        lay[_trilinear(phi_air, cen, zooms, pad) < 0] = 0
    votes = np.zeros((ng, 6))
    np.add.at(votes, (ginv, lay), vol)
    gl = votes.argmax(1)
    info["regions"] = int(ng)
    info["tets_disagreeing_with_region_vote"] = int((gl[ginv] != lay).sum())
    info["region_vote_purity"] = float(votes.max(1).sum() / votes.sum())
    seed_tag = np.array([0] + [LAYER_FILL_TAG[k] for k in range(1, 6)])
    ttags = seed_tag[gl[ginv]]
    opened = _open_bone_defects(ttags, cen, bone, phis[2], tags, zooms, pad)
    info["bone_defect_tets"] = int(len(opened))
    if bone is not None and len(opened):
        # ... but not across a strand of bone one or two voxels thick that joins a piece of the skull to
        # the rest in the labels (Colin27 scaled to 75 %: 1.26 mL of the skull base cut off)
        # (through those the rule re-tagged, the chain the nearer the labels' bone the cheaper: through
        # any, it closed a kerf 110 deg round from a 1 x 1 voxel strand; only the labels' piece that
        # holds most of the skull is the skull's: a flap a closed kerf joins is not)
        retagged = np.zeros(len(ttags), bool)
        retagged[opened] = True
        cost = np.ones(len(ttags))
        off_bone = (_trilinear(bone["excess_mm"], cen[opened], zooms, pad) + bone["within_mm"]) / float(np.max(zooms))
        cost[opened] += 10.0 * np.maximum(off_bone, 0.0) ** 2
        info["bone_rejoined_tets"] = _connect_pieces(ttags, nb, vol, LAYER_FILL_TAG[2], (), cen, tags, zooms,
                                                     allowed=retagged, cost=cost, layer_voxels=bone_voxels,
                                                     min_share=0.5)
    if bone is not None:
        # ... and a piece of the skull of 1 mL or more that the surfaces cut off where the labels join it (a
        # tester's cropped SAMSEG head: 2.7 mL of the skull at the field of view's lower edge), through the
        # scalp or the CSF, the chain the nearer the labels' bone the cheaper (as above)
        def near_bone_cost():
            off = (_trilinear(bone["excess_mm"], cen, zooms, pad) + bone["within_mm"]) / float(np.max(zooms))
            return 1.0 + 10.0 * np.maximum(off, 0.0) ** 2

        joined = _connect_pieces(ttags, nb, vol, LAYER_FILL_TAG[2], (LAYER_FILL_TAG[1], LAYER_FILL_TAG[3]), cen,
                                 tags, zooms, cost=near_bone_cost, layer_voxels=bone_voxels, min_share=0.5,
                                 min_mm3=ISLAND_KEPT_MM3)
        if joined:
            info["bone_rejoined_tets"] = info.get("bone_rejoined_tets", 0) + joined
    # (the roaming tissues are CSF meshed inside the brain's layers: the folds', the ventricles')
    # the CSF's minimum thickness as nested_fields used it (lowered for a CSF thin nearly everywhere)
    csf_min_mm = info.get("thin_layers", {}).get(3, {}).get("now_mm", float(min_thickness_mm) * float(thickness_scale))
    info["csf_gap_tets"] = _open_layer_gaps(ttags, nodes, tets, cen, vol, tags, zooms, phis, pad, far_from_csf,
                                            CSF_SHEET_OF_MIN * float(csf_min_mm), 3, (2, 4, 5))
    if far_from_grey is not None:
        info["grey_gap_tets"] = _open_layer_gaps(ttags, nodes, tets, cen, vol, tags, zooms, phis, pad, far_from_grey,
                                                 CSF_SHEET_OF_MIN * info["layer_min_thickness_mm"][4], 4, (3, 5))
    if lesion is not None:  # tets centred in a lesion voxel (unbiased, as the lattice mesher does)

        if lesion_voxels is None:
            in_lesion = sample_volume(lesion, cen, zooms, fill=False) & (ttags > 0)
        else:
            fmask, fzooms, offset = lesion_voxels
            in_lesion = sample_volume(fmask, cen + np.asarray(offset, float), np.asarray(fzooms, float),
                                      fill=False) & (ttags > 0)
        ttags[in_lesion] = _LESION
        info["lesion_tets"] = int(in_lesion.sum())
    # pieces of the white matter its labels join (a bridge the surfaces lost), joined before the islands
    # below would take the smaller ones (a cerebellar piece of Colin27 scaled to 70 %, cut by a lesion)
    info["white_matter_bridge_tets"] = _white_matter_as_labelled(ttags, nb, vol, cen, tags, zooms, lesion, pieces)
    # small pieces (< island_fraction of the tissue's largest piece) take the tag most of their
    # faces touch; larger ones (the ventricles: CSF inside the brain) stay; pieces cut off the
    # head are dropped

    n_moved = 0
    for _ in range(3):
        changed = False
        # the pieces of every tissue at once; a tissue that took tetrahedra in this round is labelled
        # again on its own (the same pieces, numbered alike: by their first tetrahedron)
        idx_all, _, lab_all = face_components(ttags > 0, nb, ttags)
        tag_all = ttags[idx_all]
        took = set()
        for t in np.unique(ttags[ttags > 0]):
            if int(t) in took:
                idx, n, lab = face_components(ttags == t, nb, ttags)
            else:
                pick = tag_all == t
                idx = idx_all[pick]
                _, lab = np.unique(lab_all[pick], return_inverse=True)
                n = int(lab.max()) + 1
            if n <= 1:
                continue
            size = np.bincount(lab, weights=vol[idx])
            small = np.flatnonzero((size < island_fraction * size.max()) & (size < ISLAND_KEPT_MM3))
            if not len(small):
                continue
            sel = idx[np.isin(lab, small)]
            labs = lab[np.isin(lab, small)]
            cand = nb[sel]
            ctag = np.where(cand >= 0, ttags[np.maximum(cand, 0)], 0)
            pl = np.repeat(labs, 4)
            ct = ctag.ravel()
            # a lesion takes no island (pieces of a ventricle that a lesion splits are not lesion):
            # a piece only the lesion touches stays as it is, unless it is a speck of a few voxels'
            # volume (tetrahedra its staircase cut off the tissue, touching it at an edge or a corner:
            # a 50 mL lesion left the white matter in 21 pieces)
            ok = (ct != t) & ((ct != _LESION) | (t == _LESION))
            votes_p = np.zeros((lab.max() + 1, 256))
            np.add.at(votes_p, (pl[ok], ct[ok]), 1.0)
            new = np.where(votes_p.any(1), votes_p.argmax(1), t)
            if t != _LESION:
                by_lesion = np.zeros(lab.max() + 1, bool)
                by_lesion[pl[ct == _LESION]] = True
                speck = ~votes_p.any(1) & by_lesion & (size < LESION_SPECK_VOXELS * float(np.prod(zooms)))
                if speck.any() and lesion is not None:
                    # ... but not tissue the labels have as a piece of its own (white matter a lesion
                    # mask spares, a ventricle's horn): a speck lies in the labels' main piece
                    speck &= ~_own_label_piece(sel, labs, t, tags, lesion, cen, zooms, lab.max() + 1)
                new[speck] = _LESION
            ttags[sel] = new[labs]
            took.update(int(u) for u in np.unique(new[labs]))
            n_moved += len(sel)
            changed = True
        if not changed:
            break
    info["island_tets_retagged"] = int(n_moved)
    info["csf_channel_tets"] = _connect_pieces(ttags, nb, vol, 3, (1, 2), cen, tags, zooms,
                                               tuple(sub_tissue_roaming or ()))
    if info["csf_channel_tets"]:  # (a channel through the white matter may have cut a join above)
        info["white_matter_bridge_tets"] += _white_matter_as_labelled(ttags, nb, vol, cen, tags, zooms, lesion,
                                                                      pieces)
    keep = ttags > 0
    if keep.any():
        idx, n, lab = face_components(keep, nb, keep.astype(np.int64))
        if n > 1:
            big = np.argmax(np.bincount(lab, weights=vol[idx]))
            keep[idx[lab != big]] = False
    tets, ttags = tets[keep], ttags[keep]
    nb = _kept_neighbors(nb, keep)
    lesion_tets = ttags == _LESION
    ttags[lesion_tets] = int(lesion_tag)
    info["timings_s"]["tags_s"] = time.perf_counter() - t0
    if sliver_move and len(tets):
        nodes, info["slivers"] = _perturb_slivers(nodes, tets, ttags, nb, sliver_move * float(np.min(zooms)),
                                                  progress_cb)
        info["timings_s"]["slivers_s"] = info["slivers"].pop("time_s")
        if "skipped" not in info["slivers"]:  # then edge flips inside one tissue (the lesion apart)
            from .sliver import flip_slivers

            t1 = time.perf_counter()
            key = np.where(lesion_tets, -1, ttags.astype(np.int64))
            tets, key, info["slivers"]["flips"] = flip_slivers(nodes, tets, key)
            if any(info["slivers"]["flips"].get(k) for k in ("flips_3_2", "flips_4_4")):
                nb = tet_neighbors(tets)
            lesion_tets = key == -1
            ttags = np.where(lesion_tets, int(lesion_tag), key).astype(ttags.dtype)
            info["timings_s"]["slivers_s"] += time.perf_counter() - t1
    # tissues inside a layer, on the final nodes (the sliver pass moves them, and sees the layers only)
    t0 = time.perf_counter()
    labels, lzooms, loff, lmask = (tags, zooms, 0.0, lesion) if sub_tissue_labels is None else sub_tissue_labels
    ttags, sub = keep_sub_tissues(ttags, nodes, tets, labels, lzooms, offset_mm=loff, skip=lesion_tets,
                                  lesion_voxels=lmask, roaming=sub_tissue_roaming, never_merged=sub_tissue_never_merged,
                                  part_of=sub_tissue_part_of, joined_to=sub_tissue_joined,
                                  volumes_mm3=sub_tissue_volumes_mm3, neighbors=nb, layer_of=layer_of)
    if sub["layers"]:
        info["sub_tissues"] = sub
        info["timings_s"]["sub_tissues_s"] = time.perf_counter() - t0
    info["tet_neighbors"] = nb  # (an array for the caller's checks, not a record: core takes it out)
    return nodes, tets, ttags, info


def _own_label_piece(tets, piece_of_tet, tag, tags, lesion, cen, zooms, n_pieces) -> np.ndarray:
    """For pieces (``piece_of_tet`` of each of ``tets``, ids < ``n_pieces``) of the layer fill tag
    ``tag``: does one of their tetrahedra lie in a piece of that layer's voxels outside ``lesion``
    (26-connected) other than the largest?  Such a piece the labels have apart from the rest."""
    mask = (layer_lut(max(256, int(tags.max()) + 1))[tags] == LAYER_OF_TAG[int(tag)]) & ~lesion
    pieces, n = label_pieces(mask, 26)
    out = np.zeros(n_pieces, bool)
    if n < 2:
        return out
    main = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
    there = sample_volume(pieces, cen[tets], zooms, fill=0)
    out[piece_of_tet[(there > 0) & (there != main)]] = True
    return out


def _open_bone_defects(ttags, cen, bone, phi_bone, tags, zooms, pad) -> np.ndarray:
    """Re-tag the bone the minimum layer thickness put where the labels have none.

    The nested surfaces keep every layer at least ``tk`` thick, so a skull defect (craniectomy, burr
    hole, a segmentation without bone somewhere) is closed by a thin bone sheet.  Bone tetrahedra
    whose centre is more than :func:`bone_defect_distance_mm` from every bone (or cavity) voxel
    (``bone["excess_mm"]`` > 0, from :func:`nested_fields`) and with no bone voxel along the normal of
    the bone's surface within ``bone["probe_mm"]`` (:func:`_bone_along_normal`: thin bone the
    thickness rules pushed a sheet away from) take the tissue of the voxel they sit in:
    ``bone["inside_tag"]`` on the brain's side (CSF, or the next layer in where the labels have none),
    ``bone["outside_tag"]`` outside (scalp; 0, dropped from the mesh, where the labels have none), as
    the calibration in :func:`nested_fields` counts on.  Returns the re-tagged tetrahedra's indices."""
    tets = (ttags == LAYER_FILL_TAG[2]).nonzero()[0]
    if not len(tets):
        return tets
    if bone is None:  # labels without a skull: no bone in the mesh either
        sel = tets
    else:
        sel = tets[_trilinear(bone["excess_mm"], cen[tets], zooms, pad) > 0]
        # a sheet the thickness rules pushed out over thin real bone has that bone along its
        # normal; a sheet across a defect has it only beside it: keep the first
        sel = sel[~_bone_along_normal(cen[sel], phi_bone, bone, zooms, pad)]
    if not len(sel):
        return sel
    layer = layer_lut()[sample_volume(tags, cen[sel], zooms, fill=0)]
    inside, outside = ((LAYER_FILL_TAG[3], LAYER_FILL_TAG[1]) if bone is None
                       else (bone["inside_tag"], bone["outside_tag"]))
    ttags[sel] = np.where(layer >= 3, inside, outside)
    return sel


def csf_gap_mm(zooms) -> float:
    """A CSF tetrahedron whose centre's voxel is farther than this from every CSF voxel lies in the
    sheet the minimum layer thickness keeps where the labels have none (:data:`CSF_GAP_VOXELS`)."""
    return CSF_GAP_VOXELS * float(np.max(zooms))


def _open_layer_gaps(ttags, nodes, tets, cen, vol, tags, zooms, phis, pad, far: np.ndarray, sheet_mm: float, k: int,
                     into: tuple) -> int:
    """Re-tag the sheet of layer ``k`` (the CSF's, 3, or the grey matter's, 4) that its minimum thickness
    put where the labels have none: the brain against the bone (over 10 % of Colin27's rays from the
    brain's centre meet no CSF), the white matter against a ventricle (a 24 mL ball of CSF or blood in
    the white matter lost 11 % of its voxels to a grey sheet, blood -5.9 %).  The sheet: tetrahedra of
    the layer whose centre's voxel is more than :func:`csf_gap_mm` from every voxel of the layer's
    tissues (``far``, of :func:`nested_fields`; the CSF meshed inside the brain counts as CSF), where
    the layer is at most ``sheet_mm`` thick (``phis[k + 1] - phis[k]``).  Each takes one of the
    layers ``into`` or stays, by the labels' layers at its 15 sample points
    (:func:`~.sub_tissues.tissue_fractions`), rounded so that each keeps the volume of its shares
    (:func:`~.sub_tissues.calibrated_choice`): the sheet is about one tetrahedron thick, so by their
    centres (mid-sheet) the tetrahedra went whole to the side the sheet's middle lies in (a 2 mL
    haemorrhage in the white matter +5.8 %, the calibration in :func:`nested_fields` counting voxels).
    Returns how many were re-tagged."""
    from .sub_tissues import SAMPLE_WEIGHTS, calibrated_choice, tissue_fractions

    cand = np.flatnonzero(ttags == LAYER_FILL_TAG[k])
    if not len(cand) or far is None:
        return 0
    zooms = np.asarray(zooms, float)
    sel = cand[sample_volume(far, cen[cand] + pad * zooms, zooms, fill=False)]
    sel = sel[_trilinear(phis[k + 1], cen[sel], zooms, pad) - _trilinear(phis[k], cen[sel], zooms, pad) <= sheet_mm]
    if not len(sel):
        return 0
    p = nodes[tets[sel]]
    lo = np.maximum(np.floor(p.reshape(-1, 3).min(0) / zooms).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil(p.reshape(-1, 3).max(0) / zooms).astype(np.int64) + 2, tags.shape)
    box = tags[tuple(slice(a, b) for a, b in zip(lo, hi))]
    layers = layer_lut(max(256, int(box.max(initial=0)) + 1)).astype(np.uint8)[box]  # (one byte per voxel)
    shares = tissue_fractions(p - lo * zooms, layers, zooms, list(into))
    n_points = float(len(SAMPLE_WEIGHTS))  # (each point counts 1, shared out where it falls between voxels)
    shares = np.column_stack([shares, np.maximum(n_points - shares.sum(1), 0.0)])  # the last: stays
    choice = calibrated_choice(shares, vol[sel], (shares / n_points * vol[sel, None]).sum(0))
    go = choice < len(into)
    ttags[sel[go]] = np.array([LAYER_FILL_TAG[j] for j in into])[choice[go]]
    return int(go.sum())


def _defect_share(excess_mm: np.ndarray, voxels: np.ndarray, zooms, pad: int, phi_outer, phi_inner,
                  bone: dict) -> np.ndarray:
    """The share of each of ``voxels`` (indices on the padded grid) that lies in the bone layer's sheet
    (inside ``phi_outer``, outside ``phi_inner``) where :func:`_open_bone_defects` re-tags it
    (``excess_mm`` > 0, interpolated, and no bone along the normal, :func:`_bone_along_normal`): its 8
    points a quarter voxel from the centre along each axis, counted."""
    from ...fem.kernels import numba_ready

    zooms = np.asarray(zooms, float)
    corners = np.array(np.meshgrid([-0.25, 0.25], [-0.25, 0.25], [-0.25, 0.25], indexing="ij")).reshape(3, -1).T
    if numba_ready():  # the same tests point by point, in one pass (Colin27: 3 calls, 1.15 -> 0.27 s)
        from ._kernels import defect_share

        return defect_share(excess_mm, phi_outer, phi_inner, voxels, corners, zooms, pad, bone["normal_mm"],
                            *_normal_steps(bone, zooms))
    pts = (((voxels - pad) * zooms)[:, None, :] + (corners * zooms)[None]).reshape(-1, 3)
    hit = np.zeros(len(pts), bool)
    idx = np.flatnonzero(_trilinear(excess_mm, pts, zooms, pad) > 0)  # then each test on the points left
    idx = idx[_trilinear(phi_outer, pts[idx], zooms, pad) < 0]
    idx = idx[_trilinear(phi_inner, pts[idx], zooms, pad) >= 0]
    hit[idx[~_bone_along_normal(pts[idx], phi_outer, bone, zooms, pad)]] = True
    return hit.reshape(-1, 8).mean(axis=1)


def _bone_along_normal(pts, phi_bone, bone, zooms, pad) -> np.ndarray:
    """Does the normal of the bone's outer surface (the gradient of ``phi_bone``, by central differences
    ``bone["normal_mm"]`` apart) through each point pass a bone voxel within ``bone["probe_mm"]``,
    either way?  "Pass": the distance to the nearest bone voxel centre, interpolated between voxel
    centres, at most three quarters of a voxel (a quarter of the voxel's three sides) somewhere on the
    line, sampled every half voxel: a line across a sheet of bone voxels one voxel thick passes within
    that even where the sheet's voxels touch only at corners (0.75 at the centre of the cube between
    two such voxels; with half a voxel a 1 mm skull on a sphere had 725 tetrahedra taken for a
    defect's, bone +4.7 %), and one along a hole's wall stays out of the outer quarter of the voxels
    along it.  A defect has its bone
    beside it, not along the normal.  (Half a voxel diagonal before surf-6.23; docs/meshing.md.)"""
    from ...fem.kernels import numba_ready

    if not len(pts):
        return np.zeros(0, bool)
    steps, near = _normal_steps(bone, zooms)
    if numba_ready():  # the same samples, point by point, stopping at the first hit
        from ._kernels import bone_along_normal

        return bone_along_normal(bone["excess_mm"], phi_bone, pts, zooms, pad, bone["normal_mm"], steps, near)
    g = _field_grad(phi_bone, pts, zooms, pad, bone["normal_mm"])
    n = g / np.maximum(np.linalg.norm(g, axis=1), 1e-12)[:, None]
    found = np.zeros(len(pts), bool)
    todo = np.arange(len(pts))  # (the points not found yet: most are found in the first few steps)
    for s in steps:
        hit = _trilinear(bone["excess_mm"], pts[todo] + s * n[todo], zooms, pad) <= near
        found[todo[hit]] = True
        todo = todo[~hit]
        if not len(todo):
            break
    return found


def _normal_steps(bone: dict, zooms) -> tuple[np.ndarray, float]:
    """:func:`_bone_along_normal`'s offsets along the normal (mm, every half voxel out to
    ``bone["probe_mm"]`` either way) and its bound on the excess-distance field."""
    step = 0.5 * float(np.min(zooms))
    near = 0.25 * float(np.sum(zooms)) - bone["within_mm"]
    return np.arange(-bone["probe_mm"], bone["probe_mm"] + step / 2, step), near


def _kept_neighbors(nb: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Face neighbours ``nb`` of all tetrahedra -> those of the ones ``keep`` holds, renumbered (-1
    across a face to one dropped)."""
    if keep.all():
        return nb
    new = np.cumsum(keep) - 1
    nbk = nb[keep]
    ok = nbk >= 0
    ok[ok] = keep[nbk[ok]]
    return np.where(ok, new[np.maximum(nbk, 0)], -1)


def _perturb_slivers(nodes, tets, ttags, nb, max_move_mm, progress_cb):
    """:func:`.sliver.perturb_slivers` on ``tets`` (face neighbours ``nb``)."""
    from ...fem.kernels import numba_ready

    t0 = time.perf_counter()
    if not numba_ready():
        logger.warning("numba is not usable: the sliver pass is skipped (the quality report lists the "
                       "poorly shaped tetrahedra)")
        return nodes, {"skipped": "numba not usable", "time_s": 0.0}
    from .sliver import perturb_slivers

    if progress_cb:
        progress_cb("slivers")
    nodes, info = perturb_slivers(nodes, tets, ttags, max_move_mm=max_move_mm, neighbors=nb)
    info["time_s"] = time.perf_counter() - t0
    logger.info("sliver pass: %d -> %d poorly shaped tetrahedra, %d nodes moved", info["poor_before"],
                info["poor_after"], info["nodes_moved"])
    return nodes, info


#: the most voxels of the head's box (with the fields' margin on every side) the fields are built on at
#: the labels' own resolution when a coarser copy may serve (time and memory grow with them, ~60 MiB per
#: million: 0.55-0.6 mm heads of 43-64 million took 101-115 s and 2.6-3.8 GB; docs/meshing.md, surf-6.26)
MAX_FIELD_VOXELS = 48_000_000

#: a coarse copy's voxels are at most this share of the surfaces' sampling (a sub-grid cell at least
#: three of them wide), however large the head
COARSEST_OF_CELL = 1.0 / 3.0


def label_grid_factors(surface_step: int, zooms, head_voxels: int = 0) -> np.ndarray:
    """Per-axis block sizes by which the labels are coarsened before meshing (1: the voxel grid).

    The surfaces are sampled on every ``surface_step``-th grid point, so a grid more than 4x finer
    than that sampling carries detail no surface keeps, and costs time and memory with the cube of
    the factor (Colin27 split into 0.5 mm voxels: 79 s and 3.0 GB).  The fields are therefore built
    on a grid with at least a quarter of the sampling step per axis: 1 mm voxels at the default
    8 mm elements are kept as they are (step 4), 0.5 mm voxels are coarsened in 2 x 2 x 2 blocks.
    A head box of more than :data:`MAX_FIELD_VOXELS` (``head_voxels``) is coarsened further, by
    whole factors, with blocks at most :data:`COARSEST_OF_CELL` of the sampling wide and none finer
    than along the labels' finest axis: about 0.53-0.73 mm voxels in 2 x 2 x 2 blocks at the default
    size, where the head has that many of them."""
    factors, most = _grid_factor_range(surface_step, zooms)
    finest = int(np.argmin(zooms))
    while head_voxels > MAX_FIELD_VOXELS * np.prod(factors) and (factors < most).any():
        grown = np.minimum(factors + 1, most)
        # the surfaces are sampled every so many voxels of the copy's finest axis, along every axis:
        # blocks finer along an axis left as it is than along the labels' finest would sample the fine
        # axes coarser than the labels' grid does (0.6 x 0.6 x 0.8 mm in 2 x 2 x 1 blocks: every 6 mm)
        size = np.asarray(zooms, float) * grown
        if size.min() < size[finest] - 1e-9:
            break
        factors = grown
    return factors


def _grid_factor_range(surface_step: int, zooms) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_grid_factors` for any head (a quarter of the sampling) and the most its budget may
    coarsen to (a third)."""
    zooms = np.asarray(zooms, float)
    cell_mm = int(surface_step) * float(np.min(zooms))
    factors = np.maximum(1, np.floor(cell_mm / 4.0 / zooms + 1e-6)).astype(int)
    most = np.maximum(factors, np.floor(cell_mm * COARSEST_OF_CELL / zooms + 1e-6).astype(int))
    return factors, most


def budget_may_coarsen(surface_step: int, zooms) -> bool:
    """Whether :func:`label_grid_factors` reads the head's voxel count for a grid of ``zooms`` sampled
    every ``surface_step`` voxels (so that the count is made only then)."""
    factors, most = _grid_factor_range(surface_step, zooms)
    return bool((most > factors).any())


def _block_reduce(values: np.ndarray, f, start, combine) -> np.ndarray:
    """Reduce each block of ``f`` voxels (``values``' shape a multiple of ``f``) by strided operations
    along one axis at a time (a 6-D reshaped view took 4-10x longer): ``start(part)`` makes the
    accumulator from the first slice, ``combine(acc, part, out=acc)`` adds each further one."""
    out = values
    for ax in range(3):
        if f[ax] == 1:
            continue
        sl = [slice(None)] * 3
        acc = None
        for o in range(int(f[ax])):
            sl[ax] = slice(o, None, int(f[ax]))
            part = out[tuple(sl)]
            acc = start(part) if acc is None else combine(acc, part, out=acc)
        out = acc
    return out


def _block_counts(mask: np.ndarray, f) -> np.ndarray:
    """Number of true voxels in each block of ``f`` voxels."""
    return _block_reduce(mask.view(np.uint8) if mask.dtype == bool else mask, f,
                         lambda part: part.astype(np.uint16), np.add)


def _block_max(values: np.ndarray, f) -> np.ndarray:
    """Largest value in each block of ``f`` voxels."""
    return _block_reduce(values, f, np.copy, np.maximum)


class CoarseLayers(NamedTuple):
    """:func:`downsample_layers`'s result."""

    tags: np.ndarray  #: one voxel per block: its layer's fill tag, 0 outside the head and in cavities
    lesion: np.ndarray | None  #: blocks at least half lesion (None without a lesion)
    bone_voxels: np.ndarray  #: blocks with any bone voxel
    csf_voxels: np.ndarray  #: blocks with any voxel of the CSF's layer
    voxel_to_coarse: np.ndarray  #: 4x4 coarse -> fine voxel indices (``affine @ it``: the coarse affine)
    layer_voxels: np.ndarray  #: voxels per layer 0..5 on the fine grid
    #: {4: brain, 5: white matter}: per block, the (highest) label of the layer's fine-grid pieces in
    #: it; only layers with several pieces (blocks can join pieces a fine voxel apart)
    pieces: dict


def downsample_layers(tags: np.ndarray, factors, lesion: np.ndarray | None = None, *,
                      min_piece_voxels: int = 0) -> CoarseLayers:
    """Labels -> one voxel per block of ``factors`` voxels (the volume's far edges padded with
    background).  A block is in nesting layer ``>= k`` where at least half its voxels are (so the
    layers stay nested: a thin layer keeps its place rather than losing a vote to both neighbours)
    and gets that layer's :data:`~stimsim.tissues.LAYER_FILL_TAG` (the surface mesher meshes
    layers, not tags); background blocks inside the head stay background (air cavities).  The
    lesion mask, when given, where at least half the block is lesion.  ``bone_voxels``: the blocks
    with any bone voxel (a bone sheet thinner than half a block loses the vote, and the skull-defect
    rule of :func:`nested_fields` must still see it), ``csf_voxels`` those with any CSF-layer voxel
    (with ``bone_voxels``, where a layer thinner than a block is, for :func:`_local_floors`).
    ``pieces``: see :class:`CoarseLayers`; pieces of fewer than ``min_piece_voxels`` voxels are left
    out."""
    f = np.asarray(factors, int)
    nc = -(-np.asarray(tags.shape) // f)
    lut = layer_lut(max(256, int(tags.max()) + 1)).astype(np.int8)
    layer = lut[tags]
    layer_voxels = np.array([np.count_nonzero(layer == k) for k in range(6)], np.int64)
    if (nc * f != np.asarray(tags.shape)).any():
        layer = np.pad(layer, [(0, int(n * b - s)) for n, b, s in zip(nc, f, tags.shape)])
    half = np.prod(f) / 2.0
    coarse = np.zeros(tuple(nc), np.int8)
    for k in range(1, 6):
        coarse += _block_counts(layer >= k, f) >= half
    pieces = {}
    # the brain's bounding box in whole blocks: labelling the head's whole grid at 0.5 mm took 0.3 GB
    # and 3 s more on a 394 x 466 x 620 volume, for pieces that are usually not there
    in_brain = layer >= 4
    brain = [np.flatnonzero(np.any(in_brain, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    del in_brain
    if all(len(b) for b in brain):
        fine_box = tuple(slice(int(b[0]) // int(fa) * int(fa), -(-(int(b[-1]) + 1) // int(fa)) * int(fa))
                         for b, fa in zip(brain, f))
        coarse_box = tuple(slice(sl.start // int(fa), sl.stop // int(fa)) for sl, fa in zip(fine_box, f))
        for k in (4, 5):
            lab, n = layer_pieces(layer[fine_box] >= k)
            if n > 1:
                # pieces the mesher drops anyway (nested_fields: < 500 mm^3) are not kept apart: a speck
                # in a block of the main piece would otherwise give that block a piece of its own
                sizes = np.bincount(lab.ravel())
                big = sizes >= max(1, int(min_piece_voxels))
                big[0] = False
                if np.count_nonzero(big) > 1:
                    relabel = np.where(big, np.arange(len(sizes)), 0).astype(lab.dtype)
                    np.take(relabel, lab, out=lab)
                    pieces[k] = np.zeros(coarse.shape, lab.dtype)
                    pieces[k][coarse_box] = _block_max(lab, f) * (coarse[coarse_box] >= k)
            del lab
    bone_voxels = _block_counts(layer == 2, f) > 0
    csf_voxels = _block_counts(layer == 3, f) > 0
    del layer
    fill = np.array([0] + [LAYER_FILL_TAG[k] for k in range(1, 6)], tags.dtype)
    clesion = None
    if lesion is not None:
        m = lesion.astype(bool, copy=False)
        if (nc * f != np.asarray(m.shape)).any():
            m = np.pad(m, [(0, int(n * b - s)) for n, b, s in zip(nc, f, m.shape)])
        clesion = (_block_counts(m, f) >= half) & (coarse > 0)
    to_fine = np.diag([float(v) for v in f] + [1.0])
    to_fine[:3, 3] = (f - 1) / 2.0  # a coarse voxel's centre is its block's centre
    return CoarseLayers(fill[coarse], clesion, bone_voxels, csf_voxels, to_fine, layer_voxels, pieces)


def surface_defaults(h: float, zooms, surface_size_mm: float | None = None) -> dict:
    """Options of :func:`surface_mesh_from_tags` for element size ``h`` (mm) on a grid of voxel size
    ``zooms``: surfaces on every ``round(surface_size_mm / voxel)``-th grid point, ``surface_size_mm``
    ``h / 2`` by default (4 for 8 mm on 1 mm voxels: sizes graded from the surfaces' to ``h`` inside;
    ``surface_size_mm = h`` gives about uniform sizes, docs/meshing.md),
    minimum layer thicknesses scaled with that sub-grid spacing (x2 at 4 mm, x1 up to 2 mm; thinner
    made neighbour surfaces intersect on Colin27; the CSF's grows more slowly, ``CSF_MIN_PER_SCALE_MM``
    x the scale, at least 0.5 mm: 0.75 mm at 4 mm), surfaces relaxed on their level sets (8 rounds),
    ``-pq2a<vol>YO9/7o/165`` (TetGen's flip/smooth/insert optimisation, max dihedral 165 deg; the
    looser radius-edge bound than surf-3's 1.4/15 lets sizes grow faster away from the surfaces:
    Colin27 520k instead of 644k tets, TetGen ~40 % faster, the same field; no minimum-dihedral
    bound in the refinement since surf-6: it cost TetGen 20 % more time and 8 % more tetrahedra on
    Colin27 for no fewer poor ones after the sliver pass; docs/meshing.md), 10 rounds of fairing
    within 0.3 voxel of each level set (surf-6.3), the volume calibration held within 10 mm of each
    place for the outer four surfaces (surf-6.4), surface edges shorter than ``MIN_EDGE_CELL`` sub-grid
    cells merged (surf-6.5, :mod:`.edge_merge`), the sliver pass with surface nodes at most 0.4
    voxel off their surface faces, and free vertices every ``INTERFACE_POINT_CELL`` sub-grid cells on
    the interfaces between tissues of one layer (surf-6.12), and every ``FOLD_POINT_CELL`` cells on the
    walls of the folds' CSF (surf-6.19)."""
    z = float(np.min(zooms))
    step = max(1, round((0.5 * float(h) if surface_size_mm is None else float(surface_size_mm)) / z))
    scale = max(1.0, step * z / 2)
    return {"surface_step": step, "thickness_scale": scale, "min_thickness_mm": csf_min_thickness_mm(scale),
            "minratio": 2.0, "mindihedral": 0.0,
            "extra_switches": "YO9/7o/165", "relax_iterations": 8, "sliver_move": 0.4, "fair_rounds": 10,
            "local_calibration_mm": 10.0, "min_edge_cell": MIN_EDGE_CELL, "interface_point_cell": INTERFACE_POINT_CELL,
            "fold_point_cell": FOLD_POINT_CELL, "thin_layer_scale": 1.0, "thin_layer_voxel_mm": float(np.min(zooms))}


def compact_for_shipping(mesh, keep_tri_tags=(1005,)):
    """Same mesh, smaller gzip: only the ``keep_tri_tags`` triangles (the outer scalp), nodes in
    reverse Cuthill-McKee order and tets sorted by their nodes (gzip 9: 9.7 -> 6.8 MB on Colin27)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    from ...mesh.model import Mesh

    t = mesh.tets
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    rows = np.concatenate([t[:, i] for i, _ in pairs])
    cols = np.concatenate([t[:, j] for _, j in pairs])
    n = len(mesh.nodes)
    g = sp.csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    perm = reverse_cuthill_mckee(g, symmetric_mode=True)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    t2 = inv[t]
    order = np.lexsort((t2.max(1), t2.min(1)))
    keep = np.isin(mesh.tri_tags, list(keep_tri_tags))
    return Mesh(mesh.nodes[perm], t2[order], mesh.tet_tags[order], inv[mesh.tris[keep]], mesh.tri_tags[keep])
