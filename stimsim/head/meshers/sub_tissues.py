"""Tissues inside a nesting layer, kept by the surface mesher.

The surface mesher builds five nested layers (scalp, bone, CSF, grey matter, white matter;
:data:`stimsim.tissues.LAYER_OF_TAG`).  Labels such as SimNIBS charm's put several tissues in one
layer: eyes and muscle in the scalp layer, compact and spongy bone (and no tag 4) in the bone layer,
blood in the CSF layer, and a user's own tag (above 10) in the brain.  Their conductivities differ
(muscle 0.16 S/m against scalp 0.465, compact bone 0.008 against spongy 0.025), so merging them
changes the field.  This pass gives every tetrahedron of such a layer the tissue of the labels at
its centroid, where that tissue belongs to the tetrahedron's layer, and otherwise the nearest one
that does.  Interfaces inside a layer then follow the voxels to about an element, as the lattice
mesher's do (design notes: docs/meshing.md, "Tissues inside a layer").
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from ...tissues import LAYER_FILL_TAG, layer_lut
from ..labels import value_counts
from .topology import sample_volume

#: how far (voxels along each axis) a tetrahedron whose centroid lies outside its layer's voxels
#: looks for the nearest voxel of that layer (the surfaces lie within about a voxel of them)
SEARCH_RADIUS_VOXELS = 2
#: a tissue inside a layer whose tetrahedra miss its voxel volume by more than this (too thin for
#: the elements) is meshed as its layer's main tissue instead, with a warning
MERGE_ABOVE_ERROR = 0.5


def layers_with_sub_tissues(voxels_per_tag) -> dict[int, list[int]]:
    """``{layer: [tags]}`` for the nesting layers whose labels hold a tag other than the layer's
    fill tag (:data:`~stimsim.tissues.LAYER_FILL_TAG`).  ``voxels_per_tag``: counts indexed by tag."""
    counts = np.asarray(voxels_per_tag)
    lut = layer_lut(max(256, len(counts)))
    by_layer: dict[int, list[int]] = {}
    for t in np.flatnonzero(counts[1:] > 0) + 1:
        by_layer.setdefault(int(lut[t]), []).append(int(t))
    return {k: v for k, v in by_layer.items() if k > 0 and v != [LAYER_FILL_TAG[k]]}


def _neighbourhood(zooms, radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return off[np.argsort((off * np.asarray(zooms, float)) ** 2 @ np.ones(3), kind="stable")]


#: barycentric weights of the points at which a tetrahedron reads the labels: its centroid, and points
#: towards its vertices, face centres and edge midpoints
_SAMPLE_WEIGHTS = np.array(
    [[0.25] * 4]
    + [np.roll([0.7, 0.1, 0.1, 0.1], i) for i in range(4)]
    + [np.roll([0.1, 0.3, 0.3, 0.3], i) for i in range(4)]
    + [[0.4 if j in e else 0.1 for j in range(4)] for e in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))])


def _fractions(p: np.ndarray, labels: np.ndarray, zooms, tags) -> np.ndarray:
    """Share of each tetrahedron's sample points (``p``: its 4 vertices, voxel-frame mm) in each
    of ``tags``: each point reads the tissue's indicator by trilinear interpolation, so the shares
    vary smoothly as a tetrahedron crosses an interface (nearest-voxel counts come in steps of
    1/15, whose ties the calibration cannot split).  Points in another layer count for none.  A
    tetrahedron whose points' nearest voxels all hold one of ``tags`` (most of them) takes it whole,
    without interpolating (a 0.5 mm head: 2.7 -> 1 s)."""
    nw = len(_SAMPLE_WEIGHTS)
    pts = np.matmul(_SAMPLE_WEIGHTS, p / np.asarray(zooms, float)).transpose(2, 1, 0)  # (3, w, tets)
    column = np.full(max(256, int(max(tags)) + 1), -1, np.int64)
    column[np.asarray(tags)] = np.arange(len(tags))
    near = np.rint(pts).astype(np.int64)
    inside = ((near >= 0) & (near < np.array(labels.shape)[:, None, None])).all(0)
    col = np.full(near.shape[1:], -1, np.int64)
    col[inside] = column[labels[near[0][inside], near[1][inside], near[2][inside]]]
    whole = (col >= 0).all(0) & (col == col[0]).all(0)
    del near, inside
    f = np.zeros((len(p), len(tags)))
    f[np.flatnonzero(whole), col[0, whole]] = float(nw)
    mixed = np.flatnonzero(~whole)
    if not len(mixed):
        return f
    pts = pts[:, :, mixed].reshape(3, -1)
    lo = np.maximum(np.floor(pts.min(1)).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil(pts.max(1)).astype(np.int64) + 2, labels.shape)
    box = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    pts -= lo[:, None]
    for j, t in enumerate(tags):
        share = ndi.map_coordinates((box == t).view(np.uint8), pts, order=1, mode="constant", cval=0.0,
                                    prefilter=False, output=np.float32)
        f[mixed, j] = share.reshape(nw, len(mixed)).sum(0)
    return f


def _calibrated_choice(f: np.ndarray, vol: np.ndarray, target: np.ndarray, max_rounds: int = 50) -> np.ndarray:
    """Column per row: ``argmax(f + lam)`` over the columns with ``f > 0``, the offsets ``lam``
    chosen so that each column's rows hold ``target`` volume (the largest column's offset 0).  With
    the others fixed, row ``i`` takes column ``j`` from ``lam_j >= max_other_i - f_ij`` on: a sort
    of those thresholds by volume gives ``lam_j`` exactly.  Three or more columns take rounds of
    that until every column is within ``k - 1`` times the largest row's volume of its target (the
    rounds can cycle by a row or two)."""
    k = f.shape[1]
    score = np.where(f > 0, f, -np.inf)
    lam = np.zeros(k)
    main = int(np.argmax(target))
    tol = (k - 1) * float(vol.max()) if len(vol) else 0.0

    def choice():
        return np.argmax(score + np.where(np.isfinite(lam), lam, -1e9), axis=1)

    for _ in range(max_rounds if k > 2 else 1):
        for j in range(k):
            if j == main:
                continue
            rest = np.delete(score + lam, j, axis=1).max(1)
            cand = np.flatnonzero(f[:, j] > 0)
            need = rest[cand] - f[cand, j]
            order = np.argsort(need, kind="stable")
            cum = np.cumsum(vol[cand[order]])
            n = int(np.searchsorted(cum, target[j]))  # rows taken: the first n, and the one that crosses
            if n < len(order) and (n == 0 or cum[n] - target[j] < target[j] - cum[n - 1]):
                n += 1
            lam[j] = need[order[n - 1]] if n else -np.inf
            if n < len(order) and lam[j] == need[order[n]]:  # a tie with the next row: stop short of it
                lam[j] = np.nextafter(lam[j], -np.inf)
        if k > 2 and np.all(np.abs(np.bincount(choice(), weights=vol, minlength=k) - target) <= tol):
            break
    return choice()


def keep_sub_tissues(ttags: np.ndarray, nodes_mm: np.ndarray, tets: np.ndarray, labels: np.ndarray, zooms, *,
                     offset_mm=0.0, skip: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Tissue tags inside the layers: returns ``(tags, info)``.

    ``ttags``: the layer fill tag of every tetrahedron (other tags, and those under ``skip``, are
    left alone); ``nodes_mm`` + ``offset_mm``: the nodes in the voxel frame of ``labels`` (index
    times ``zooms``); ``labels``: SimNIBS tags.

    Each tetrahedron reads the labels at 15 points (:data:`_SAMPLE_WEIGHTS`); those outside its
    layer's voxels (near a surface) are not counted, and one with none inside takes the nearest
    voxel of its layer (within :data:`SEARCH_RADIUS_VOXELS`, else the layer's main tissue).  It
    then takes the tissue with the largest share, each share offset by a per-tissue constant chosen
    so that every tissue's tetrahedra hold its voxel volume (scaled by the layer's mesh / voxel
    volume), as the layer surfaces are calibrated to theirs: with a plain majority, tetrahedra
    across a sheet thinner than themselves vote for its middle (compact bone -18 %, spongy +23 %
    on a charm-like Colin27).

    ``info``: ``{"layers": {layer: [tags]}, "merged": {tag: into}, "nearest_tets": n}``: the tags
    of each layer that has several, the tissues none of whose voxels a tetrahedron reached or whose
    tetrahedra still miss their voxel volume by more than :data:`MERGE_ABOVE_ERROR` (meshed as the
    layer's main tissue), and how many tetrahedra took the nearest voxel of their layer."""
    zooms = np.asarray(zooms, float)
    counts = value_counts(labels, minlength=256)
    layers = layers_with_sub_tissues(counts)
    info = {"layers": layers, "merged": {}, "nearest_tets": 0}
    if not layers:
        return ttags, info
    lut = layer_lut(max(256, len(counts)))
    offsets = _neighbourhood(zooms, SEARCH_RADIUS_VOXELS)
    shape = np.array(labels.shape)
    voxel_mm3 = float(np.prod(zooms))
    out = ttags.copy()
    for layer, tags in layers.items():
        sel = out == LAYER_FILL_TAG[layer]
        if skip is not None:
            sel &= ~skip
        sel = np.flatnonzero(sel)
        tags = np.array(tags)
        column = np.full(len(counts), -1, np.int64)
        column[tags] = np.arange(len(tags))
        p = nodes_mm[tets[sel]] + np.asarray(offset_mm, float)
        vol = np.abs(np.einsum("ij,ij->i", p[:, 1] - p[:, 0], np.cross(p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]))) / 6
        f = _fractions(p, labels, zooms, tags)
        todo = np.flatnonzero(f.sum(1) == 0)
        info["nearest_tets"] += len(todo)
        base = np.rint(p[todo].mean(1) / zooms).astype(np.int64)
        del p
        for o in offsets:  # nearest first
            if not len(todo):
                break
            q = base + o
            inside = ((q >= 0) & (q < shape)).all(1)
            col = np.full(len(q), -1, np.int64)
            col[inside] = column[labels[tuple(q[inside].T)]]
            hit = col >= 0
            f[todo[hit], col[hit]] = 1.0
            todo, base = todo[~hit], base[~hit]
        voxels = counts[tags] * voxel_mm3
        f[todo, int(np.argmax(voxels))] = 1.0  # farther: the layer's main tissue (a layer at its minimum thickness)
        target = voxels * (vol.sum() / voxels.sum())
        new = tags[_calibrated_choice(f, vol, target)]
        # a tissue too thin or small for the elements: its layer's main tissue instead (the volume
        # check would refuse the mesh otherwise, where merging it had been accepted)
        main = int(tags[np.argmax(voxels)])
        mesh_mm3 = np.bincount(new, weights=vol, minlength=len(counts))
        for t, v in zip(tags, target):
            if t != main and not abs(mesh_mm3[t] / v - 1.0) <= MERGE_ABOVE_ERROR:
                new[new == t] = main
                info["merged"][int(t)] = main
        out[sel] = new
    return out, info
