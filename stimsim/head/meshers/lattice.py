"""The lattice mesher (``stimsim mesh --method lattice``): a BCC lattice tetrahedralised by Qhull,
tags sampled at centroids, nested layers closed, interface nodes snapped onto the voxel surfaces.
Pip wheels only (numpy, scipy).  Its steps and measurements: docs/meshing.md.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.ndimage as ndi

from ..._logging import logger
from ...errors import MeshError
from ...mesh.model import Mesh
from ...tissues import LAYER_FILL_TAG, layer_lut
from .topology import (CAVITY_TAG, ISLAND_FRACTION, compact_nodes, distance_to_background, face_components,
                       orient_tets, sample_volume, signed_volumes)

#: BCC lattice spacing at default resolution: Colin27 1 mm -> 1.43 M tets (uniform lattice)
DEFAULT_ELEMENT_SIZE_MM = 3.2
MESHER_VERSION = "bcc-2"
#: the smallest fraction of its volume a tet keeps while snapping moves its nodes
_SNAP_MIN_VOLUME = 0.25


def _interfaces(vol: np.ndarray) -> np.ndarray:
    b = np.zeros(vol.shape, bool)
    for ax in range(3):
        d = np.diff(vol, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        b[tuple(lo)] |= d
        b[tuple(hi)] |= d
    return b


# ----------------------------------------------------------------------------------------------
# points and tetrahedra
# ----------------------------------------------------------------------------------------------


def _bcc_points(dist: np.ndarray, fg_box, zooms, h: float, levels: int = 1) -> np.ndarray:
    """Graded BCC lattice points (mm, local frame = voxel index * zoom)."""
    lo = (np.asarray(fg_box[0]) * zooms) - 2 * h
    hi = (np.asarray(fg_box[1]) * zooms) + 2 * h
    shape = np.array(dist.shape)
    out = []
    for k in range(levels):
        s = h * 2 ** k
        origin = np.floor(lo / s) * s
        for off in (0.0, 0.5 * s):
            axes = [np.arange(origin[i] + off, hi[i] + s, s) for i in range(3)]
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            idx = np.rint(grid / zooms).astype(np.int64)
            inside = ((idx >= 0) & (idx < shape)).all(1)
            # beyond the volume (a head cut at the neck) counts as an interface: the points
            # there close the Delaunay hull away from the tissue, so no flat hull slivers
            # end up inside the head
            d = np.zeros(len(grid))
            d[inside] = dist[tuple(idx[inside].T)]
            keep = np.ones(len(grid), bool)
            if k < levels - 1:
                keep &= d < 1.25 * s * 2
            if k > 0:
                keep &= d >= 1.25 * s
            out.append(grid[keep])
    pts = np.concatenate(out)
    q = np.rint(pts / (0.5 * h)).astype(np.int64)
    _, first = np.unique(q, axis=0, return_index=True)
    return pts[np.sort(first)]


def _close_layers(tags: np.ndarray, tets: np.ndarray, neighbors: np.ndarray, cavity: np.ndarray,
                  n_nodes: int) -> tuple[np.ndarray, int]:
    """Min-plus propagation over shared *nodes*: a tet's layer is at most 1 + the smallest layer
    of any tet sharing a node with it (outside the hull and air cavities count as layer 0/1).

    Separating layers in this vertex sense makes each layer face-connected (the digital
    topology 6/26 duality), so skull and CSF come out as single closed shells.
    """
    lut = np.minimum(layer_lut(), 4)  # grey and white matter may both touch CSF (ventricles)
    tissue = tags > 0
    layer = np.where(tissue, lut[tags], 0)
    layer[cavity] = 1  # an air cavity may touch scalp or bone only
    hull = np.zeros(n_nodes, bool)
    for k in range(4):
        outer = neighbors[:, k] < 0
        faces = np.delete(tets[outer], k, axis=1)
        hull[faces.ravel()] = True
    new = layer.copy()
    for _ in range(8):
        node_min = np.full(n_nodes, 99, np.int64)
        for k in range(4):
            np.minimum.at(node_min, tets[:, k], new)
        node_min[hull] = 0
        cand = np.minimum(new, node_min[tets].min(1) + 1)
        cand[~tissue] = new[~tissue]
        if np.array_equal(cand, new):
            break
        new = cand
    changed = tissue & (new != layer)
    out = tags.copy()
    fill = np.zeros(8, np.int64)
    for l, t in LAYER_FILL_TAG.items():
        fill[l] = t
    out[changed] = fill[new[changed]]
    return out, int(changed.sum())


def _tet_islands(tags: np.ndarray, neighbors: np.ndarray, protect: np.ndarray | None = None
                 ) -> tuple[np.ndarray, int]:
    """Give small face-connected islands of a tissue the majority tag of their neighbours
    (tets under ``protect``, the lesion, keep their tag)."""
    tags = tags.copy()
    total = 0
    for _ in range(3):
        changed = 0
        for t in np.unique(tags[tags > 0]):
            idx, n, lab = face_components(tags == t, neighbors, tags)
            if n <= 1:
                continue
            sizes = np.bincount(lab)
            small = sizes < ISLAND_FRACTION * sizes.max()
            sel = idx[small[lab]]
            if protect is not None:
                sel = sel[~protect[sel]]
            if not len(sel):
                continue
            nb = neighbors[sel]
            nbt = np.where(nb >= 0, tags[np.maximum(nb, 0)], 0)
            nbt[nbt == t] = 0
            # most frequent other tag among the 4 neighbours (0 = outside only -> leave for pruning)
            best = np.zeros(len(sel), np.int64)
            bestc = np.zeros(len(sel), np.int64)
            for cand in np.unique(nbt):
                if cand == 0:
                    continue
                c = (nbt == cand).sum(1)
                better = c > bestc
                best[better], bestc[better] = cand, c[better]
            upd = best > 0
            tags[sel[upd]] = best[upd]
            changed += int(upd.sum())
        total += changed
        if not changed:
            break
    return tags, total


# ----------------------------------------------------------------------------------------------
# snapping
# ----------------------------------------------------------------------------------------------


def _sdf(mask: np.ndarray, zooms) -> np.ndarray:
    """Smoothed signed distance (mm, negative inside) of a voxel mask, zero on voxel faces."""
    out = distance_to_background(~mask, zooms)
    out -= distance_to_background(mask, zooms)
    out *= 0.5  # the centre-to-centre distances give +-1 voxel at both sides of a face
    return ndi.gaussian_filter(out, sigma=0.7, mode="nearest")


def _snap_targets(layer_vox: np.ndarray, zooms, layers, min_thickness: float) -> dict:
    """Smoothed signed distance of ``layer >= l`` for each ``l``, with every layer at least
    ``min_thickness`` thick: the surface of layer ``l`` encloses the surface of ``l + 1`` by that
    much.  Where the labels let two non-adjacent layers touch (Colin27 grey matter touches the
    skull on 15,000 voxel faces), the closing layer the mesher inserted there is snapped to this
    thin sheet instead of keeping a whole element of thickness, so it costs little volume."""
    out = {}
    inner = None
    for l in sorted(set(int(v) for v in layers), reverse=True):
        phi = _sdf(layer_vox >= l, zooms)
        if inner is not None and l <= 3:  # CSF, bone and scalp enclose what lies inside
            np.minimum(phi, inner - min_thickness, out=phi)
        out[l] = phi
        if l <= 4:
            inner = phi
    return out


def _node_layer_bits(tets, tags, n):
    """Nesting layer of every tet and, per node, the bitmask of the layers touching it."""
    layer = layer_lut()[tags]
    bits = np.zeros(n, np.int64)
    for j in range(4):
        np.bitwise_or.at(bits, tets[:, j], 1 << layer)
    return layer, bits


def _snap(nodes, tets, tags, zooms, tagvol, h, progress_cb=None, iterations=6, min_thickness=0.5):
    """Move nodes on two-layer interfaces onto the voxel interfaces (see module docstring)."""
    n = len(nodes)
    # layers touching each node (bitmask), boundary nodes also touch layer 0
    layer, bits = _node_layer_bits(tets, tags, n)
    mesh = Mesh(nodes, tets, tags)
    bits[mesh.boundary_nodes] |= 1
    popc = np.zeros(n, np.int64)
    for l in range(8):
        popc += (bits >> l) & 1
    movable = popc == 2
    hi_layer = np.zeros(n, np.int64)
    for l in range(8):
        hi_layer[(bits >> l) & 1 == 1] = l
    layer_vox = layer_lut()[tagvol]
    layer_vox[tagvol == 0] = 0
    vol0 = signed_volumes(nodes, tets)
    sign = np.sign(vol0)
    # nodes -> incident tets (CSR)
    order = np.argsort(tets.ravel(), kind="stable")
    starts = np.searchsorted(tets.ravel()[order], np.arange(n + 1))
    nodes = nodes.copy()
    step_cap = 0.45 * h
    levels = np.unique(hi_layer[movable])
    phis = _snap_targets(layer_vox, zooms, list(levels) + [4], min_thickness)
    for it in range(iterations):
        for l in levels:
            sel = np.flatnonzero(movable & (hi_layer == l))
            phi = phis[l]
            p = nodes[sel] / zooms
            val = ndi.map_coordinates(phi, p.T, order=1, mode="nearest")
            grad = np.empty((len(sel), 3))
            for ax in range(3):
                e = np.zeros(3)
                e[ax] = 0.5
                grad[:, ax] = (ndi.map_coordinates(phi, (p + e).T, order=1, mode="nearest")
                               - ndi.map_coordinates(phi, (p - e).T, order=1, mode="nearest")) / zooms[ax]
            g2 = np.maximum((grad ** 2).sum(1), 1e-6)
            disp = -(val / g2)[:, None] * grad
            norm = np.linalg.norm(disp, axis=1)
            scale = np.minimum(1.0, step_cap / np.maximum(norm, 1e-12))
            disp *= scale[:, None]
            _guarded_move(nodes, sel, disp, tets, order, starts, sign, vol0, _SNAP_MIN_VOLUME)
        if progress_cb:
            progress_cb()
    return nodes


def _guarded_move(nodes, sel, disp, tets, order, starts, sign, vol0, min_rel, min_abs=None):
    """Move ``nodes[sel]`` by ``disp``; where an incident tet would fall below ``min_rel`` of its
    original volume, halve the moves of its nodes (4 times), then undo them."""
    old = nodes[sel].copy()
    nodes[sel] = old + disp
    active = sel
    frac = np.ones(len(sel))
    for _guard in range(100):  # terminates: undone nodes are back where every tet was valid
        touched = np.unique(_incident(order, starts, active))
        v = signed_volumes(nodes, tets[touched]) * sign[touched]
        lim = min_rel * np.abs(vol0[touched])
        if min_abs is not None:
            lim = np.maximum(lim, min_abs[touched])
        bad = touched[v < lim]
        if not len(bad):
            return
        back = np.intersect1d(np.unique(tets[bad]), sel)
        pos = np.searchsorted(sel, back)
        frac[pos] = 0.0 if _guard >= 4 else 0.5 * frac[pos]
        nodes[back] = old[pos] + frac[pos, None] * disp[pos]
        active = back
    raise MeshError("internal error: the node-move guard did not converge")  # pragma: no cover


def _smooth(nodes, tets, tags, h, passes=3, progress_cb=None):
    """Guarded Laplacian smoothing of nodes inside one tissue layer (and not on the hull):
    evens out the elements next to the snapped interfaces.  A move that makes an incident
    tet flatter than before (volume below 30 % of the BCC element) is shrunk or undone."""
    n = len(nodes)
    layer, bits = _node_layer_bits(tets, tags, n)
    mesh = Mesh(nodes, tets, tags)
    free = (bits & (bits - 1)) == 0
    free[mesh.boundary_nodes] = False
    sel = np.flatnonzero(free)
    # node-node adjacency (edges)
    import scipy.sparse as sp

    i = tets[:, [0, 0, 0, 1, 1, 2]].ravel()
    j = tets[:, [1, 2, 3, 2, 3, 3]].ravel()
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    deg = np.asarray(a.sum(1)).ravel()
    order = np.argsort(tets.ravel(), kind="stable")
    starts = np.searchsorted(tets.ravel()[order], np.arange(n + 1))
    vol0 = np.full(len(tets), h ** 3 / 12.0)
    sign = np.ones(len(tets))
    cur = signed_volumes(nodes, tets)
    floor = np.minimum(0.3 * vol0, cur)  # never make a tet worse than now, nor below 30 %
    for _ in range(passes):
        avg = (a @ nodes) / np.maximum(deg, 1)[:, None]
        disp = 0.5 * (avg[sel] - nodes[sel])
        _guarded_move(nodes, sel, disp, tets, order, starts, sign, vol0, 0.0, min_abs=floor)
        if progress_cb:
            progress_cb()
    return nodes


def _incident(order, starts, nodes_idx):
    lens = starts[nodes_idx + 1] - starts[nodes_idx]
    if lens.sum() == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(starts[nodes_idx], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
    return order[offs] // 4


# ----------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------


def lattice_tets(tags: np.ndarray, cav: np.ndarray, zooms, h: float, lesion: np.ndarray | None, steps):
    """The lattice steps (docs/meshing.md) on cleaned tags; ``steps`` reports progress (``tick``).  Returns ``(nodes_mm_local, tets, tet_tags,
    info)`` with ``info`` holding ``closure_tets`` and ``timings_s``."""
    from scipy.spatial import Delaunay

    timings = {}
    work = tags.copy()
    work[cav] = CAVITY_TAG

    steps.start("distance field")
    t = time.perf_counter()
    dist = distance_to_background(~_interfaces(work), zooms)
    nz = np.nonzero(tags)
    box = (np.array([a.min() for a in nz]), np.array([a.max() for a in nz]))
    del nz
    timings["distance_s"] = time.perf_counter() - t

    steps.start("points + Delaunay")
    t = time.perf_counter()
    pts = _bcc_points(dist, box, zooms, h)
    del dist
    rng = np.random.default_rng(12345)
    pts = pts + rng.uniform(-1e-3 * h, 1e-3 * h, pts.shape)
    tri = Delaunay(pts)
    tets = tri.simplices.astype(np.int64)
    neighbors = tri.neighbors.astype(np.int64)
    del tri
    timings["delaunay_s"] = time.perf_counter() - t
    logger.info("%d points -> %d Delaunay tetrahedra", len(pts), len(tets))

    steps.start("tags + closure")
    t = time.perf_counter()
    cen = pts[tets].mean(axis=1)
    sampled = sample_volume(work, cen, zooms, fill=0).astype(np.int64)
    protect = None if lesion is None else sample_volume(lesion, cen, zooms, fill=False)
    del cen
    is_cav = sampled == CAVITY_TAG
    sampled[is_cav] = 0
    sampled, _ = _tet_islands(sampled, neighbors, protect)
    sampled, n_closed = _close_layers(sampled, tets, neighbors, is_cav, len(pts))
    for _ in range(2):  # islands the closure left behind, then close again
        sampled, k = _tet_islands(sampled, neighbors, protect)
        if not k:
            break
        sampled, k2 = _close_layers(sampled, tets, neighbors, is_cav, len(pts))
        n_closed += k2
    # keep the largest face-connected piece of tissue
    idx, n, lab = face_components(sampled > 0, neighbors, (sampled > 0).astype(np.int64))
    if n > 1:
        big = np.argmax(np.bincount(lab))
        sampled[idx[lab != big]] = 0
    keep = sampled > 0
    nodes, tets = compact_nodes(pts, tets[keep])
    tets, ttags = orient_tets(nodes, tets), sampled[keep]
    timings["tags_s"] = time.perf_counter() - t

    steps.start("snap interfaces")
    t = time.perf_counter()
    nodes = _snap(nodes, tets, ttags, zooms, tags, h, progress_cb=lambda: steps.tick(0.4))
    nodes = _smooth(nodes, tets, ttags, h, progress_cb=lambda: steps.tick(0.4))
    timings["snap_s"] = time.perf_counter() - t
    return nodes, tets, ttags, {"closure_tets": n_closed, "timings_s": timings}


__all__ = ["lattice_tets", "DEFAULT_ELEMENT_SIZE_MM", "MESHER_VERSION"]
