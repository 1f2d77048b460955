"""Tissues inside a nesting layer, kept by the surface mesher.

The surface mesher builds five nested layers (scalp, bone, CSF, grey matter, white matter;
:data:`stimsim.tissues.LAYER_OF_TAG`).  Labels such as SimNIBS charm's put several tissues in one
layer: eyes and muscle in the scalp layer, compact and spongy bone (and no tag 4) in the bone layer,
blood in the CSF layer, and a user's own tag (above 10) in the layer around it
(:func:`.core.enclosing_layers`: a tumour in the white matter, a plate in the skull).  Their
conductivities differ (muscle 0.16 S/m against scalp 0.465, compact bone 0.008 against spongy
0.025), so merging them changes the field.  The layers and their surfaces stay as they are; this pass gives each
tetrahedron of such a layer one of the layer's tissues, from the tissues' shares of it, calibrated
to their voxel volumes (:func:`keep_sub_tissues`).  Interfaces inside a layer are then staircases
of tetrahedra, as the lattice mesher's are (design notes: docs/meshing.md, surf-6.7).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp

from ...tissues import LAYER_FILL_TAG, layer_lut
from ..labels import value_counts
from .topology import (ISLAND_FRACTION, ISLAND_KEPT_MM3, face_components, label_pieces, sample_volume, signed_volumes,
                       tet_neighbors)

#: how far (voxels along each axis) a tetrahedron whose centroid lies outside its layer's voxels
#: looks for the nearest voxel of that layer (the surfaces lie within about a voxel of them)
SEARCH_RADIUS_VOXELS = 2
#: a tissue inside a layer whose tetrahedra miss its voxel volume by more than this (too thin for
#: the elements) is meshed as its layer's main tissue instead, with a warning
MERGE_ABOVE_ERROR = 0.5
#: rounds in which each tetrahedron's shares are averaged with its face neighbours' in the layer:
#: a sheet about as thin as the elements otherwise comes out as specks (charm-like Colin27: compact
#: bone in 3,596 face-connected pieces, 35 % of its volume in pieces under 1 % of the largest; two
#: rounds: 510 and 9 %, its overlap with the voxels 0.56 -> 0.54)
SMOOTHING_ROUNDS = 2
#: rounds of :func:`_in_pieces_kept` (specks cleaned, then each tissue grown back to its volume)
PIECE_ROUNDS = 3
#: relative gap below which two calibration thresholds count as one (see calibrated_choice)
_SAME = 1e-9
#: tetrahedra per chunk of the share sampling (about 1 kB each while it runs)
CHUNK_TETS = 200_000


def layers_with_sub_tissues(voxels_per_tag, layer_of: dict[int, int] | None = None) -> dict[int, list[int]]:
    """``{layer: [tags]}`` for the nesting layers whose labels hold a tag other than the layer's
    fill tag (:data:`~stimsim.tissues.LAYER_FILL_TAG`).  ``voxels_per_tag``: counts indexed by tag;
    ``layer_of``: {tag: layer} for tissues meshed in another layer than their own
    (:func:`~stimsim.tissues.layer_lut`)."""
    counts = np.asarray(voxels_per_tag)
    lut = layer_lut(max(256, len(counts)), layer_of)
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
SAMPLE_WEIGHTS = np.array(
    [[0.25] * 4]
    + [np.roll([0.7, 0.1, 0.1, 0.1], i) for i in range(4)]
    + [np.roll([0.1, 0.3, 0.3, 0.3], i) for i in range(4)]
    + [[0.4 if j in e else 0.1 for j in range(4)] for e in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))])


def tissue_fractions(p: np.ndarray, labels: np.ndarray, zooms, tags) -> np.ndarray:
    """Share of each tetrahedron's sample points (``p``: its 4 vertices, voxel-frame mm) in each
    of ``tags``: each point reads the tissue's indicator by trilinear interpolation, so the shares
    vary smoothly as a tetrahedron crosses an interface (nearest-voxel counts come in steps of
    1/15, whose ties the calibration cannot split).  Points in another layer count for none; points
    beyond the grid read its edge.  A tetrahedron whose points' nearest voxels all hold one of
    ``tags`` (most of them) takes it whole, without interpolating (a 0.5 mm head: 2.7 -> 1.6 s)."""
    f = np.zeros((len(p), len(tags)))
    # tag -> column of f, over every value the labels hold (-1: none of ``tags``)
    column = np.full(max(256, int(max(tags)) + 1, int(labels.max(initial=0)) + 1), -1, np.int64)
    column[np.asarray(tags)] = np.arange(len(tags))
    for a in range(0, len(p), CHUNK_TETS):
        f[a:a + CHUNK_TETS] = _fractions_chunk(p[a:a + CHUNK_TETS], labels, zooms, tags, column)
    return f


def _fractions_chunk(p, labels, zooms, tags, column):
    pts = np.matmul(SAMPLE_WEIGHTS, p / np.asarray(zooms, float)).transpose(2, 1, 0)  # (3, w, tets)
    from ...fem.kernels import numba_ready

    if numba_ready():
        from ._kernels import tissue_shares

        return tissue_shares(pts, labels, column, len(tags))
    nw = len(SAMPLE_WEIGHTS)  # the same in numpy and scipy, more slowly (a copy of the grid per tissue)
    hi = np.array(labels.shape) - 1
    near = np.clip(np.rint(pts), 0, hi[:, None, None]).astype(np.intp)
    col = column[labels[near[0], near[1], near[2]]]
    del near
    whole = (col >= 0).all(0) & (col == col[0]).all(0)
    f = np.zeros((len(p), len(tags)))
    f[np.flatnonzero(whole), col[0, whole]] = float(nw)
    mixed = np.flatnonzero(~whole)
    if not len(mixed):
        return f
    pts = pts[:, :, mixed].reshape(3, -1)
    lo = np.maximum(np.floor(pts.min(1)).astype(np.int64) - 1, 0)
    up = np.minimum(np.ceil(pts.max(1)).astype(np.int64) + 2, labels.shape)
    box = labels[tuple(slice(a, b) for a, b in zip(lo, up))]
    pts -= lo[:, None]
    for j, t in enumerate(tags):
        share = ndi.map_coordinates((box == t).view(np.uint8), pts, order=1, mode="nearest", prefilter=False,
                                    output=np.float32)
        f[mixed, j] = share.reshape(nw, len(mixed)).sum(0)
    return f


def _smoothed(f: np.ndarray, sel: np.ndarray, neighbors: np.ndarray, rounds: int) -> np.ndarray:
    """Shares (rows: tetrahedra ``sel``) averaged ``rounds`` times with those of their face
    neighbours among ``sel``, kept only where a tetrahedron has a share of its own (a tissue never
    spreads to a tetrahedron it does not reach)."""
    if not rounds or not len(sel):
        return f
    local = np.full(len(neighbors), -1, np.int64)
    local[sel] = np.arange(len(sel))
    nb = neighbors[sel]
    nb = np.where(nb >= 0, local[np.maximum(nb, 0)], -1)
    own = f > 0
    g = f / np.maximum(f.sum(1, keepdims=True), 1e-300)
    for _ in range(rounds):
        acc, n = g.copy(), np.ones(len(g))
        for k in range(4):
            ok = nb[:, k] >= 0
            acc[ok] += g[nb[ok, k]]
            n[ok] += 1
        g = np.where(own, acc / n[:, None], 0.0)
    return g


def calibrated_choice(f: np.ndarray, vol: np.ndarray, target: np.ndarray, max_rounds: int = 50) -> np.ndarray:
    """Column per row: ``argmax(f + lam)`` over the columns with ``f > 0``, the offsets ``lam``
    chosen so that each column's rows hold ``target`` volume (the largest column's offset 0).  With
    the others fixed, row ``i`` takes column ``j`` when ``lam_j > max_other_i - f_ij``: sorting
    those thresholds, ``lam_j`` goes halfway between the last row taken and the next distinct
    threshold, at the count nearest the target (a block of equal thresholds is taken whole or not at
    all), largest target first.  Three or more columns take rounds of that until every column but
    the largest is within the largest row it may take of its target, or holds every row it may take
    and is still short (then its offset stays), or a round changes nothing (docs/meshing.md,
    surf-6.20: each of these stopped a tumour's labels 6-30 % short)."""
    k = f.shape[1]
    score = np.where(f > 0, f, -np.inf)
    lam = np.zeros(k)
    main = int(np.argmax(target))
    tol = 1.0 * (np.where(f > 0, vol[:, None], 0.0).max(0) if len(vol) else np.zeros(k))

    def choice():
        return np.argmax(score + np.where(np.isfinite(lam), lam, -1e9), axis=1)

    last = None

    # the largest first, the smallest last: each round ends with the small ones at their targets, the
    # large ones taking up what they moved (in column order, a tumour's oedema took back what its rim
    # and core took, which stopped 20-30 % short on Colin27)
    order_j = [int(j) for j in np.argsort(-np.asarray(target, float), kind="stable") if j != main]
    # a column that takes every row it can and is still short keeps its first offset: raised each round
    # above the others' new offsets, it took their rows in turn (Colin27's white matter, short by 0.3 %,
    # took 5 % of a tumour's oedema and rim round after round)
    short = np.zeros(k, bool)
    for _ in range(max_rounds if k > 2 else 1):
        for j in order_j:
            if short[j]:
                continue
            rest = np.delete(score + lam, j, axis=1).max(1)
            cand = np.flatnonzero(f[:, j] > 0)
            need = rest[cand] - f[cand, j]
            order = np.argsort(need, kind="stable")
            need = need[order]
            cum = np.concatenate([[0.0], np.cumsum(vol[cand[order]])])
            # row counts that end a block of equal thresholds (and none); thresholds closer than
            # _SAME apart are one block (halfway between them would round onto one)
            a, b = need[:-1], need[1:]
            with np.errstate(invalid="ignore"):
                apart = np.where(np.isfinite(a) & np.isfinite(b), b - a > _SAME * np.maximum(1.0, np.abs(b)), a != b)
            ends = np.concatenate([[0], np.flatnonzero(apart) + 1, [len(need)]])
            n = int(ends[np.argmin(np.abs(cum[ends] - target[j]))])
            if n == 0:
                lam[j] = -np.inf  # rows with no other share still take j (their only one)
            elif n == len(need):  # all of them (finite when they all have no other share)
                lam[j] = need[-1] + 1.0 if np.isfinite(need[-1]) else 0.0
                short[j] = cum[n] < target[j]
            elif np.isfinite(need[n - 1]):
                lam[j] = 0.5 * (need[n - 1] + need[n])
            else:
                lam[j] = need[n] - 1.0
        if k > 2:
            now = choice()
            # (the largest column holds the rest; a short one can hold no more)
            off = np.abs(np.bincount(now, weights=vol, minlength=k) - target) > tol
            off[main] = False
            if not (off & ~short).any() or (last is not None and np.array_equal(now, last)):
                break
            last = now
    return choice()


def _connected(new, f, vol, target, tags, column, sel, out, neighbors, part_of, own_main_col, tet_layer,
               lut, nodes_mm, tets, groups=None):
    """The choice ``new`` (tags of the tetrahedra ``sel``) with every ``part_of`` stand-in one piece
    with its tissue, and no small piece of the other tissues left.

    The folds' CSF is one piece with the CSF around the brain in the labels (through each sulcus'
    mouth), but tetrahedra chosen by their shares break a thin fold into specks: Colin27's CSF came
    out in 325 pieces (97 % in the largest), its grey matter in 44.  So, layer by layer from the
    tissue's own outwards (grey matter, then white matter), the stand-in takes the tetrahedra whose
    margin (its share less the best other) is at least a threshold and that are joined across
    faces, through such tetrahedra, to its tissue or to the stand-in's tetrahedra of the layers done;
    the threshold is set so that they hold what the shares gave the stand-in in that layer
    (bisection; one threshold for all layers moved the folded phantom's white matter -2.1 %, its
    grey matter +2.8 %).  The other tissues are then calibrated again on the rest.  Last, pieces of
    a tissue smaller than :data:`~.topology.ISLAND_FRACTION` of its largest, all inside ``sel``,
    take the tag most of their faces touch (as the tag stage cleans its islands).  ``groups`` ({stand-in:
    int per tetrahedron}; :func:`_layer_groups`): pieces of the tissue's own layer that the labels keep
    apart; the stand-in grown next to two of them is cut between them (:func:`_split_by_group`), after
    the growth and again at the end (grown from both, the folds' CSF joined a 0.5 mm head's
    ventricles, 2.5 mm from any other CSF in the labels, to the CSF around the brain)."""
    from scipy.sparse.csgraph import connected_components

    new = new.copy()
    own_main_col = np.asarray(own_main_col)
    for stand_in, tissue in part_of.items():
        if stand_in >= len(column) or column[stand_in] < 0:
            continue
        j = column[stand_in]
        joined = out.copy()
        joined[sel] = np.where(new == stand_in, -1, 0)  # the group's tetrahedra: none yet
        done = np.zeros(len(new), bool)
        for k in sorted(np.unique(tet_layer), key=lambda k: abs(int(k) - int(lut[tissue]))):
            cand = np.flatnonzero((f[:, j] > 0) & (tet_layer == k))
            budget = float(vol[(new == stand_in) & (tet_layer == k)].sum())
            if not len(cand) or budget <= 0:
                continue
            others = np.delete(f[cand], j, axis=1)
            margin = f[cand, j] - (others.max(1) if others.shape[1] else 0.0)
            local = np.full(len(out), -1, np.int64)
            local[sel[cand]] = np.arange(len(cand))
            nb = neighbors[sel[cand]]
            nl = np.where(nb >= 0, local[np.maximum(nb, 0)], -1)
            seed = ((nb >= 0) & ((out[np.maximum(nb, 0)] == tissue) | (joined[np.maximum(nb, 0)] == stand_in))).any(1)
            r, c = np.nonzero(nl >= 0)
            g = sp.csr_matrix((np.ones(len(r), np.int8), (r, nl[r, c])), shape=(len(cand),) * 2)

            def grown(tau):
                idx = np.flatnonzero(margin >= tau)
                n, lab = connected_components(g[idx][:, idx], directed=False)
                good = np.zeros(n, bool)
                good[lab[seed[idx]]] = True
                keep = np.zeros(len(cand), bool)
                keep[idx[good[lab]]] = True
                return keep

            levels = np.unique(margin)[::-1]  # high to low: the grown volume rises
            lo, hi = 0, len(levels) - 1
            while lo < hi:  # the highest level whose grown set holds the budget
                mid = (lo + hi) // 2
                if vol[cand[grown(levels[mid])]].sum() >= budget:
                    hi = mid
                else:
                    lo = mid + 1
            keep = grown(levels[lo])
            if lo > 0:  # the level above, if nearer
                above = grown(levels[lo - 1])
                if abs(vol[cand[above]].sum() - budget) < abs(vol[cand[keep]].sum() - budget):
                    keep = above
            done[cand[keep]] = True
            joined[sel[cand[keep]]] = stand_in
        if (groups or {}).get(stand_in) is not None:
            done &= ~_split_by_group(done, sel, neighbors, groups[stand_in])
        # the other tissues calibrated again on the rest
        rest = ~done
        fr = f[rest].copy()
        fr[:, j] = 0.0
        empty = np.flatnonzero(~(fr > 0).any(1))
        fr[empty, own_main_col[rest][empty]] = 1e-9
        tr = np.asarray(target, float).copy()
        tr[j] = 0.0
        tr *= vol[rest].sum() / max(tr.sum(), 1e-300)
        new[rest] = tags[calibrated_choice(fr, vol[rest], tr)]
        new[done] = stand_in
    want = {t: float(vol[new == t].sum()) for t in part_of}
    out_sel = new
    # the layers' main tissues and the stand-ins' (a vessel, a user's tissue may be in pieces)
    clean = set(int(t) for t in tags[np.unique(own_main_col)]) | set(part_of.values())
    for rounds_left in (2, 1, 0):
        out_sel = _without_specks(out_sel, sel, out, neighbors, part_of, vol, nodes_mm, tets, clean)
        if not rounds_left:
            break
        gave = False
        for stand_in in part_of:
            # specks of the other tissues inside a fold became the stand-in: give back as much of its
            # weakest tetrahedra, a fold's rim (the folded phantom at 0.5 mm: CSF +1.3 % without);
            # that may leave specks again, so a few rounds
            if stand_in >= len(column) or column[stand_in] < 0:
                continue
            j = column[stand_in]
            gained = vol[out_sel == stand_in].sum() - want[stand_in]
            if gained <= 0:
                continue
            mine = np.flatnonzero(out_sel == stand_in)
            rest = np.where(np.arange(f.shape[1]) == j, -np.inf, np.where(f[mine] > 0, f[mine], -np.inf))
            to = np.where(np.isfinite(rest.max(1)), tags[rest.argmax(1)], tags[own_main_col[mine]])
            # only where that tissue is a face neighbour (else the tetrahedron became a speck of it)
            full = out.copy()
            full[sel] = out_sel
            nb = neighbors[sel[mine]]
            touch = ((nb >= 0) & (full[np.maximum(nb, 0)] == to[:, None])).any(1)
            mine, to = mine[touch], to[touch]
            margin = f[mine, j] - np.where(np.isfinite(rest[touch].max(1)), rest[touch].max(1), 0.0)
            order = np.argsort(margin, kind="stable")
            n = int(np.searchsorted(np.cumsum(vol[mine[order]]), gained))
            out_sel[mine[order[:n]]] = to[order[:n]]
            gave = gave or n > 0
        if not gave:
            break
    for stand_in, tissue in part_of.items():
        # the rounds above may have given a speck between two groups the stand-in's (or the tissue's) tag:
        # cut again on what is left, and give those up to their layer's main tissue
        if (groups or {}).get(stand_in) is not None:
            fluid = np.isin(out_sel, (stand_in, tissue))
            give_up = _split_by_group(fluid, sel, neighbors, groups[stand_in])
            out_sel[give_up] = tags[own_main_col[give_up]]
    return out_sel


def _split_by_group(done, sel, neighbors, groups) -> np.ndarray:
    """Which of the stand-in's tetrahedra ``sel[done]`` to give up so that none of them joins two
    ``groups`` (int per tetrahedron, -1: none; the pieces of the tissue's own layer the labels keep
    apart): each takes the group it is fewest faces from, through the stand-in's tetrahedra, and
    those with a face to another group's (or as near two) are given up."""
    from scipy.sparse.csgraph import dijkstra

    member = groups >= 0
    member[sel[done]] = True
    ids = np.flatnonzero(member)
    local = np.full(len(groups), -1, np.int64)
    local[ids] = np.arange(len(ids))
    nb = neighbors[ids]
    r, c = np.nonzero((nb >= 0) & member[np.maximum(nb, 0)])
    graph = sp.csr_matrix((np.ones(len(r)), (r, local[nb[r, c]])), shape=(len(ids),) * 2)
    names = np.unique(groups[groups >= 0])
    dist = np.stack([dijkstra(graph, indices=local[groups == g], min_only=True, unweighted=True) for g in names])
    nearest = dist.min(axis=0)
    tie = np.isfinite(nearest) & ((dist == nearest).sum(axis=0) > 1)
    # (-1: reached from no group, hence touching none: kept)
    group = np.where(np.isfinite(nearest) & ~tie, names[dist.argmin(axis=0)], -1)
    full = np.full(len(groups), -1, np.int64)
    full[ids] = group
    mine = sel[done]
    nbm = neighbors[mine]
    other = np.where(nbm >= 0, full[np.maximum(nbm, 0)], -1)
    own = full[mine][:, None]
    give_up = tie[local[mine]] | ((other >= 0) & (own >= 0) & (other != own)).any(axis=1)
    out = np.zeros(len(sel), bool)
    out[np.flatnonzero(done)[give_up]] = True
    return out


def _layer_groups(out, nodes_mm, tets, neighbors, labels, zooms, offset_mm, stand_in: int, tissue: int,
                  lut) -> np.ndarray | None:
    """The labels' piece (that layer's voxels and ``stand_in``'s, 26-connected) that holds most of each
    face-connected piece of ``tissue``'s own layer (``out == tissue``; the CSF's), per tetrahedron (-1
    elsewhere); None where those pieces lie in one piece of the labels (the labels are read only where
    the layer's tetrahedra are in several pieces)."""
    idx, n, lab = face_components(out == tissue, neighbors, out)
    if n <= 1:
        return None
    fluid = lut.astype(np.int8)[labels] == lut[tissue]  # (one byte per voxel: 0.5 mm heads)
    fluid |= labels == stand_in
    pieces, _ = label_pieces(fluid, connectivity=26)
    del fluid
    on = sample_volume(pieces, nodes_mm[tets[idx]].mean(axis=1) + np.asarray(offset_mm, float), zooms, fill=0)
    del pieces
    vol = np.abs(signed_volumes(nodes_mm, tets[idx]))
    names, on = np.unique(on, return_inverse=True)  # (the labels' pieces these tetrahedra lie in)
    held = sp.csr_matrix((vol, (lab, on)), shape=(n, len(names))).toarray()
    held[:, names == 0] = 0.0
    owner = np.where(held.any(axis=1), names[held.argmax(axis=1)], -1)
    if len(np.unique(owner[owner >= 0])) <= 1:
        return None
    groups = np.full(len(out), -1, np.int64)
    groups[idx] = owner[lab]
    return groups


def _in_pieces_kept(cols, f, vol, tags, sel, out, neighbors, allowed, fixed, kept=None, joined=None, out_vol=None,
                    label_piece=None, also_clean=()):
    """``cols`` (column of each tetrahedron of ``sel`` into ``tags``) with no tissue in specks: pieces of a
    tissue smaller than :data:`~.topology.ISLAND_FRACTION` of its largest take the tissue next to them
    across faces (allowed in their layer: ``allowed``, per tetrahedron and column) of the largest share
    of them, or that most of their faces touch; then each kept tissue that lost volume grows back, from
    its pieces across faces, to what it held (the tetrahedra of the best share margin first), for
    :data:`PIECE_ROUNDS` rounds.  ``fixed``: columns left alone (roaming tissues, the folds' CSF);
    ``kept``: the columns whose pieces are cleaned and grown back (default: all the others; the others
    are not cleaned, and give and take tetrahedra); ``joined``: {column: tag} of a tissue meshed
    outside the group that a column's pieces join (the folds' blood stand-in with the CSF layer's
    blood: a piece touching it is part of it), with ``out_vol`` the volumes of all tetrahedra (that
    tissue's pieces count with theirs); ``also_clean``: other columns whose specks the last cleaning
    removes too (a tetrahedron of grey matter that the grown folds' blood closed in).
    ``label_piece``: ``label_piece(j)`` -> the labels' piece (6-connected, 0: none) of column j's
    tissue at each tetrahedron's centre; pieces left in one piece of the labels are then joined
    along the fewest tetrahedra (:func:`_joined_as_labelled`).

    Chosen by its own shares, each tetrahedron of a skull whose outer table, diploe and inner table
    are 1-3 mm each is about half the skull's thickness: the choice makes a checkerboard there (the
    charm-like Colin27: compact bone 532 pieces, 87.7 % in the largest, where the labels have 98.6 %)."""
    cols = cols.copy()
    n_cols = len(tags)
    row = np.full(len(out), -1, np.int64)
    row[sel] = np.arange(len(sel))
    all_vol = np.zeros(len(out))
    all_vol[sel] = vol
    free = np.setdiff1d(np.arange(n_cols), np.asarray(list(fixed), np.int64))
    kept = free if kept is None else np.intersect1d(np.asarray(list(kept), np.int64), free)
    joined = dict(joined or {})
    if joined:  # the joined tissues' tetrahedra (outside the group) count with their volumes
        outside = np.ones(len(out), bool)
        outside[sel] = False
        joined_at = {j: np.flatnonzero(outside & (out == t)) for j, t in joined.items()}
        for at in joined_at.values():
            all_vol[at] = out_vol[at]
    want = np.bincount(cols, weights=vol, minlength=n_cols)
    choosable = np.full(n_cols, -np.inf)
    choosable[free] = 0.0

    def full_tags():
        full = np.where(out > 0, -1 - out, out)  # other layers' tags: never a tissue of this group
        full[sel] = cols
        return full

    def tissue_key(full, j):  # full, with the tissue column j joins outside the group counted as j
        if j not in joined:
            return full
        key = full.copy()
        key[joined_at[j]] = j
        return key

    def despeck(columns):
        # a speck's outer ring goes each pass (its inside touches only itself): until none changes
        for _ in range(6):
            if not despeck_once(columns):
                break

    def despeck_once(columns):
        changed = False
        for j in columns:
            full = tissue_key(full_tags(), j)
            idx, n, lab = face_components(full == j, neighbors, full)
            if n <= 1:
                continue
            size = np.bincount(lab, weights=all_vol[idx])
            small = np.flatnonzero((size < ISLAND_FRACTION * size.max()) & (size < ISLAND_KEPT_MM3))
            r = row[idx[np.isin(lab, small)]]
            r = r[r >= 0]  # (a joined tissue's tetrahedra are not this group's to change)
            if not len(r):
                continue
            # the tissues of this group next to it across faces, allowed in its layer: the one of the
            # largest share, or with no share under it the one most of its faces touch.  Only
            # neighbours: a speck given a tissue it does not touch is a speck of that one (and was
            # given back at that tissue's turn); a tetrahedron no other tissue touches waits for the
            # next pass, when its outer ring has gone
            nb = neighbors[sel[r]]
            nbc = np.where(nb >= 0, full[np.maximum(nb, 0)], -1)
            votes = np.zeros((len(r), n_cols))
            for k in range(nbc.shape[1]):
                ok = (nbc[:, k] >= 0) & (nbc[:, k] != j)
                ok[ok] = np.isfinite(choosable[nbc[ok, k]]) & allowed[r[ok], nbc[ok, k]]
                votes[np.flatnonzero(ok), nbc[ok, k]] += 1.0
            share = np.where(votes > 0, f[r], -np.inf)
            best = np.where(share.max(1) > 0, share.argmax(1), votes.argmax(1))
            best[votes.max(1) == 0] = j
            if not (best != j).any():
                continue
            cols[r] = best
            changed = True
        return changed

    for _ in range(PIECE_ROUNDS):
        despeck(kept)
        for j in kept:
            # ring by ring: first only where its voxels are at least the holder's (grown back elsewhere
            # the tissue would move: compact bone into the diploe), then anywhere next to it
            for least in (0.0,) * 6 + (-np.inf,) * 4:
                deficit = want[j] - vol[cols == j].sum()
                if deficit <= 0:
                    break
                full = tissue_key(full_tags(), j)
                cand = np.flatnonzero((cols != j) & (f[:, j] > 0) & allowed[:, j] & np.isin(cols, free))
                nb = neighbors[sel[cand]]
                touch = ((nb >= 0) & (full[np.maximum(nb, 0)] == j)).any(1)
                cand = cand[touch]
                margin = f[cand, j] - f[cand, cols[cand]]
                cand, margin = cand[margin >= least], margin[margin >= least]
                if not len(cand):
                    continue
                order = cand[np.argsort(-margin, kind="stable")]
                cum = np.cumsum(vol[order])
                n = int(np.searchsorted(cum, deficit))  # the first n fall short, n + 1 do not
                if n < len(cum) and cum[n] - deficit < deficit - (cum[n - 1] if n else 0.0):
                    n += 1  # whichever is nearer the deficit
                if not n:
                    break
                cols[order[:n]] = j
    despeck(np.union1d(kept, np.intersect1d(np.asarray(list(also_clean), np.int64), free)))
    if label_piece is not None:
        # (a later tissue's path goes around an earlier one's: locked; each tissue's pieces of the
        # labels found once)
        found = {}
        label_piece = (lambda j, read=label_piece: found[j] if j in found else found.setdefault(j, read(j)))
        locked = np.zeros(len(cols), bool)
        for _ in range(3):
            if not any([_joined_as_labelled(cols, j, f, sel, neighbors, allowed, free, label_piece, full_tags,
                                            all_vol, row, locked) for j in kept]):
                break
            despeck(kept)  # a path may cut a speck off another tissue
    return cols


def _joined_as_labelled(cols, j, f, sel, neighbors, allowed, free, label_piece, full_tags, all_vol, row, locked,
                        max_joins: int = 8) -> bool:
    """Join the pieces of column ``j`` (in place) that lie in one piece of its labels to the largest of
    them, along the fewest tetrahedra of the group: first only those whose centre lies in that piece of the
    labels (the way the labels join them), then those with a share of the tissue, then any its layer
    allows.  A skull base's spongy bone joined to the rest by a bridge of voxels thinner than the
    tetrahedra came out as a piece of its own (charm-like Colin27 with the interface vertices of
    surf-6.12: 2 % of the spongy bone).  ``locked`` (bool per row, updated): the paths of earlier joins,
    which a later path does not cut (two tissues' bridges crossing).  Returns whether any tetrahedron
    changed."""
    from scipy.sparse.csgraph import dijkstra

    from .topology import face_graph

    ids, tried, changed = None, set(), False
    for _ in range(max_joins):
        full = full_tags()
        idx, n, lab = face_components(full == j, neighbors, full)
        if n <= 1:
            break
        if ids is None:
            ids = label_piece(j)
        r = row[idx]
        piece_id = np.zeros(n, np.int64)
        for p in range(n):  # (few pieces: ISLAND_FRACTION of the largest and up)
            v = ids[r[lab == p]]
            v = v[v > 0]
            piece_id[p] = np.bincount(v).argmax() if len(v) else 0
        size = np.bincount(lab, weights=all_vol[idx])
        # each piece of the labels: its other mesh pieces joined to its largest one (two eyes, one of
        # them split: the split one joined, the two eyes not)
        by_size = np.argsort(-size, kind="stable")
        biggest = {}
        for q in by_size:
            if piece_id[q]:
                biggest.setdefault(piece_id[q], q)
        todo = [(p, biggest[piece_id[p]]) for p in by_size
                if piece_id[p] and biggest[piece_id[p]] != p and int(idx[lab == p].min()) not in tried]
        if not todo:
            break
        src, dst = idx[lab == todo[0][0]], idx[lab == todo[0][1]]
        target = piece_id[todo[0][1]]
        tried.add(int(src.min()))  # (a piece no path reaches is not tried again)
        own = cols == j
        movable = allowed[:, j] & ((np.isin(cols, free) & ~locked) | own)
        for ok in ((ids == target) | own, (f[:, j] > 0) | own, movable):
            ok = ok & movable
            keep = np.zeros(len(full), bool)
            keep[sel[ok]] = True
            cand, loc, g = face_graph(keep, neighbors)
            s_in, d_in = loc[src][loc[src] >= 0], loc[dst][loc[dst] >= 0]
            if not len(s_in) or not len(d_in):
                continue
            dist, pred, _ = dijkstra(g, directed=False, indices=s_in, min_only=True, return_predecessors=True)
            if not np.isfinite(dist[d_in]).any():
                continue
            cur = int(d_in[int(np.argmin(dist[d_in]))])
            path = []
            while cur >= 0:
                path.append(cand[cur])
                cur = int(pred[cur])
            rows = row[np.asarray(path)]
            rows = rows[rows >= 0]
            cols[rows] = j
            locked[rows] = True
            changed = True
            break
    return changed


def _without_specks(new, sel, out, neighbors, part_of, vol, nodes_mm, tets, clean):
    """``new`` (tags of ``sel``) with each piece of a tissue smaller than
    :data:`~.topology.ISLAND_FRACTION` of its largest and all inside ``sel`` given the tag most of
    its faces touch, for the tissues in ``clean``; a ``part_of`` stand-in counts as its tissue."""
    trial = out.copy()
    trial[sel] = new
    in_sel = np.zeros(len(out), bool)
    in_sel[sel] = True
    all_vol = None
    joined = trial.copy()  # a stand-in is one tissue with its own (each fold is a piece of it alone)
    for stand_in, tissue in part_of.items():
        joined[joined == stand_in] = tissue
    for t in np.unique(joined[sel]):
        if int(t) not in clean:
            continue
        idx, n, lab = face_components(joined == t, neighbors, joined)
        if n <= 1:
            continue
        if all_vol is None:
            all_vol = np.abs(signed_volumes(nodes_mm, tets))
        size = np.bincount(lab, weights=all_vol[idx])
        inside = np.bincount(lab, weights=in_sel[idx].astype(float)) == np.bincount(lab)
        small = np.flatnonzero((size < ISLAND_FRACTION * size.max()) & (size < ISLAND_KEPT_MM3) & inside)
        if not len(small):
            continue
        pick = np.isin(lab, small)
        tet, piece = idx[pick], lab[pick]
        nb = neighbors[tet]
        other = np.where(nb >= 0, trial[np.maximum(nb, 0)], 0)
        votes = np.zeros((len(size), int(trial.max()) + 1))
        ok = (other > 0) & (np.where(nb >= 0, joined[np.maximum(nb, 0)], 0) != t)
        np.add.at(votes, (np.repeat(piece, 4)[ok.ravel()], other.ravel()[ok.ravel()]), 1.0)
        has = votes.any(1)
        trial[tet[has[piece]]] = votes.argmax(1)[piece[has[piece]]]
        joined[tet] = trial[tet]
        for stand_in, tissue in part_of.items():
            joined[tet[joined[tet] == stand_in]] = tissue
    return trial[sel]


def keep_sub_tissues(ttags: np.ndarray, nodes_mm: np.ndarray, tets: np.ndarray, labels: np.ndarray, zooms, *,
                     offset_mm=0.0, skip: np.ndarray | None = None, lesion_voxels: np.ndarray | None = None,
                     roaming: dict[int, tuple[int, ...]] | None = None,
                     volumes_mm3: dict[int, float] | None = None, never_merged=(),
                     part_of: dict[int, int] | None = None,
                     joined_to: dict[int, int] | None = None,
                     neighbors: np.ndarray | None = None,
                     layer_of: dict[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Tissue tags inside the layers: returns ``(tags, info)``.

    ``ttags``: the layer fill tag of every tetrahedron (other tags, and those under ``skip``, the
    lesion's, are left alone); ``nodes_mm`` + ``offset_mm``: the nodes in the voxel frame of
    ``labels`` (index times ``zooms``); ``labels``: SimNIBS tags, with the tissue under a lesion;
    ``lesion_voxels``: the lesion on that grid, whose voxels the tissues' volumes leave out;
    ``roaming``: {tag: layers} for a tissue that may take tetrahedra of several layers (the
    ventricles of labels without CSF around the brain, in grey or white matter: whichever the
    surfaces, sampled every few millimetres, put them in); those layers are then done together,
    each tetrahedron choosing among its own layer's tissues and the roaming ones;
    ``volumes_mm3``: {tag: mm^3} each tissue should hold (outside the lesion) where ``labels`` is a
    cleaned copy (small islands moved to their neighbours, which the volume check does not count
    so); default: the voxels of ``labels``; ``never_merged``: tags kept however far off their
    volume (the folds' CSF: merged, its volume would be missing from the CSF's unreported);
    ``part_of``: {tag: tissue} for a stand-in of a tissue that also has a layer of its own (the
    folds' CSF, the CSF's): it holds what that tissue should hold less what its layer's tetrahedra
    give it, so that the two together hold the tissue's volume (the CSF layer kept at its minimum
    thickness holds more than its voxels: the charm-like head at 0.5 mm, CSF +3 %);
    ``joined_to``: {tag: tissue} for a stand-in of a tissue meshed in another layer (the folds' blood, the
    CSF layer's): kept in the pieces the two make together (:func:`_in_pieces_kept`), in the layers of
    a ``part_of`` stand-in (the folds' CSF, with which it comes; read only there); ``neighbors``:
    :func:`.topology.tet_neighbors` of ``tets``, where the caller has them; ``layer_of``: {tag:
    layer} for tissues meshed in another layer than their own (a user's tissue inside the white
    matter: :func:`.core.enclosing_layers`).

    Each tetrahedron reads the labels at 15 points (:data:`SAMPLE_WEIGHTS`, :func:`tissue_fractions`).
    One none of whose points reaches its layer's voxels (a layer kept at its minimum thickness)
    takes the nearest voxel of its layer (within :data:`SEARCH_RADIUS_VOXELS`, else the layer's
    main tissue).  The shares are averaged with the face neighbours' (:data:`SMOOTHING_ROUNDS`),
    and each tetrahedron takes the tissue with the largest share, each share offset by a per-tissue
    constant chosen so that every tissue's tetrahedra hold its voxel volume (scaled by the layers'
    mesh / voxel volume; in the layer of a ``part_of`` tissue its other tissues hold their own
    volumes and the main tissue the rest), as the layer surfaces are calibrated to theirs: with a
    plain majority, tetrahedra across a sheet thinner than themselves vote for its middle (compact bone -5.8 %,
    spongy +6.5 %, blood +19 % on a charm-like Colin27).

    ``info``: ``{"layers": {layer: [tags]}, "merged": {tag: into}, "nearest_tets": n}``: the tags
    of each layer that has several, the tissues whose tetrahedra still miss their voxel volume by
    more than :data:`MERGE_ABOVE_ERROR` (meshed as their layer's main tissue, the one with the most
    voxels; a roaming tissue's tetrahedra as their own layer's), and how many tetrahedra took the
    nearest voxel of their layer."""
    zooms = np.asarray(zooms, float)
    counts = value_counts(labels, minlength=256)
    if lesion_voxels is not None and lesion_voxels.any():
        under = value_counts(labels[lesion_voxels], minlength=len(counts))
        counts = counts - np.concatenate([under, np.zeros(len(counts) - len(under), np.int64)])[:len(counts)]
    layers = layers_with_sub_tissues(counts, layer_of)
    info = {"layers": dict(layers), "merged": {}, "nearest_tets": 0}
    if not layers:
        return ttags, info
    lut = layer_lut(max(256, len(counts)), layer_of)
    roam = {int(t): tuple(v) for t, v in (roaming or {}).items() if t < len(counts) and counts[t] > 0}
    groups = [{k} for k in layers]  # layers done together: those a roaming tissue spans
    for span in roam.values():
        joined = set(span).union(*[g for g in groups if g & set(span)])
        groups = [g for g in groups if not g & set(span)] + [joined]
    offsets = _neighbourhood(zooms, SEARCH_RADIUS_VOXELS)
    shape = np.array(labels.shape)
    voxel_mm3 = float(np.prod(zooms))
    if neighbors is None and (SMOOTHING_ROUNDS or part_of):
        neighbors = tet_neighbors(tets)
    fill_layer = np.zeros(max(256, len(counts)), np.int64)
    for k, t in LAYER_FILL_TAG.items():
        fill_layer[t] = k
    out = ttags.copy()
    want = {int(t): float(counts[t]) * voxel_mm3 for t in np.flatnonzero(counts)}
    want.update({int(t): float(v) for t, v in (volumes_mm3 or {}).items()})
    for stand_in, tissue in (part_of or {}).items():
        k = int(lut[tissue])
        if stand_in not in want or k not in LAYER_FILL_TAG:
            continue
        # the tissue's share of its own layer: the layer's tetrahedra less its other tissues' volumes
        in_layer = ttags == LAYER_FILL_TAG[k]
        if skip is not None:  # a lesion tagged as the tissue is not its layer's (its volume is left out)
            in_layer &= ~skip
        layer_mm3 = float(np.abs(signed_volumes(nodes_mm, tets[in_layer])).sum())
        others = sum(v for t, v in want.items() if t != tissue and t != stand_in and lut[t] == k)
        excess = layer_mm3 - others - want.get(tissue, 0.0)
        want[stand_in] = max(want[stand_in] - excess, 0.5 * want[stand_in])
    for group in groups:
        group = sorted(group)
        sel = np.isin(out, [LAYER_FILL_TAG[k] for k in group])
        if skip is not None:
            sel &= ~skip
        sel = np.flatnonzero(sel)
        tags = np.array([t for t in np.flatnonzero(counts > 0)
                         if t and (set(roam[t]) <= set(group) if t in roam else lut[t] in group)])
        for k in group:  # the tissues each layer's tetrahedra choose among
            mine = [int(t) for t in tags if lut[t] == k or (t in roam and k in roam[t])]
            if len(group) > 1 and mine:
                info["layers"][k] = mine
        voxels = np.array([want.get(int(t), 0.0) for t in tags])
        tet_layer = fill_layer[out[sel]]
        # each tetrahedron chooses among its own layer's tissues and the roaming ones
        allowed = (lut[tags][None, :] == tet_layer[:, None]) | np.isin(tags, list(roam))[None, :]
        own_main = {k: int(np.argmax(np.where(lut[tags] == k, voxels, -1.0))) for k in group}
        column = np.full(len(counts), -1, np.int64)
        column[tags] = np.arange(len(tags))
        p = nodes_mm[tets[sel]] + np.asarray(offset_mm, float)
        vol = np.abs(signed_volumes(nodes_mm, tets[sel]))
        f = tissue_fractions(p, labels, zooms, tags) * allowed
        todo = np.flatnonzero(f.sum(1) == 0)
        info["nearest_tets"] += len(todo)
        base = np.rint(p[todo].mean(1) / zooms).astype(np.int64)
        centre_vox = np.clip(np.rint(p.mean(1) / zooms).astype(np.int64), 0, shape - 1)
        del p
        for o in offsets:  # nearest first
            if not len(todo):
                break
            q = base + o
            inside = ((q >= 0) & (q < shape)).all(1)
            col = np.full(len(q), -1, np.int64)
            col[inside] = column[labels[tuple(q[inside].T)]]
            hit = col >= 0
            hit[hit] = allowed[todo[hit], col[hit]]
            f[todo[hit], col[hit]] = 1.0
            todo, base = todo[~hit], base[~hit]
        for k in group:  # farther: the layer's main tissue (a layer at its minimum thickness)
            at = todo[tet_layer[todo] == k]
            f[at, own_main[k]] = 1.0
        f = _smoothed(f, sel, neighbors, SMOOTHING_ROUNDS)
        target = voxels * (vol.sum() / voxels.sum())
        main = np.zeros(len(tags), bool)
        main[list(own_main.values())] = True
        rest = vol.sum() - voxels[~main].sum()
        if any(lut[u] in group for u in (part_of or {}).values()) and rest > 0:
            # the layer of a tissue with a stand-in elsewhere (the CSF's): what the layer holds beyond
            # its voxels is that tissue's sheet at its minimum thickness, which the stand-in gives
            # back; its other tissues (blood) hold their own volumes
            target = voxels.copy()
            target[main] = voxels[main] * (rest / voxels[main].sum())
        new = tags[calibrated_choice(f, vol, target)]
        if part_of and np.isin(tags, list(part_of)).any():
            apart = {stand_in: _layer_groups(out, nodes_mm, tets, neighbors, labels, zooms, offset_mm, stand_in,
                                             tissue, lut) for stand_in, tissue in part_of.items()}
            new = _connected(new, f, vol, target, tags, column, sel, out, neighbors, part_of,
                             [own_main[int(k)] for k in tet_layer], tet_layer, lut, nodes_mm, tets, apart)
            # a stand-in of a tissue meshed in another layer (the folds' blood): in the pieces it makes
            # with that tissue (charm-like Colin27: blood 16 pieces, 96.4 % in the largest, where the
            # labels have 99.5 %); the part_of stand-ins stay as _connected left them
            # (_without_specks may have given a speck a tissue of the next layer: left as it is, and
            # counted as that layer's)
            mine = column[new] >= 0
            seen = out.copy()
            seen[sel[~mine]] = new[~mine]
            if skip is not None:  # a lesion tagged as the joined tissue (a haemorrhage) is not part of it
                seen[skip & np.isin(seen, list((joined_to or {}).values()))] = -1
            glued = {int(column[s]): int(t) for s, t in (joined_to or {}).items()
                     if s < len(column) and column[s] >= 0 and (seen == t).any()}
            if glued:
                new[mine] = tags[_in_pieces_kept(
                    column[new[mine]], f[mine], vol[mine], tags, sel[mine], seen, neighbors, allowed[mine],
                    [column[s] for s in part_of if s < len(column) and column[s] >= 0], kept=list(glued),
                    joined=glued, out_vol=np.abs(signed_volumes(nodes_mm, tets)),
                    also_clean=sorted(set(own_main.values())))]
        elif neighbors is not None:  # the other layers' tissues: in the pieces the labels have
            def label_piece(j, tag_set=tags):  # the labels' piece of column j's tissue at each centre
                mask = labels == tag_set[j]
                if lesion_voxels is not None:  # (its tissue is not there: counts leave it out too)
                    mask &= ~lesion_voxels
                return label_pieces(mask)[0][tuple(centre_vox.T)]

            new = tags[_in_pieces_kept(column[new], f, vol, tags, sel, out, neighbors, allowed,
                                       [column[t] for t in roam if column[t] >= 0], label_piece=label_piece)]
        # a tissue too thin or small for the elements: its layer's main tissue instead (the volume
        # check would refuse the mesh otherwise, where merging it had been accepted)
        mesh_mm3 = np.bincount(new, weights=vol, minlength=len(counts))
        for j, (t, v) in enumerate(zip(tags, voxels)):
            if j != own_main[int(lut[t])] and int(t) not in never_merged and not (
                    v > 0 and abs(mesh_mm3[t] / v - 1.0) <= MERGE_ABOVE_ERROR):
                took = np.flatnonzero(new == t)
                new[took] = tags[[own_main[int(k)] for k in tet_layer[took]]]
                info["merged"][int(t)] = int(tags[own_main[int(lut[t])]])
        out[sel] = new
    return out, info
