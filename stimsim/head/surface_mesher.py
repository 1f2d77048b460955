"""Label volume -> tetrahedral head mesh through nested smooth surfaces and TetGen.

Optional dependencies: ``scikit-image`` (marching cubes), ``fast-simplification`` (quadric
decimation) and ``tetgen`` (the TetGen wheel).  **TetGen is AGPL-3.0**: it is an *optional*
dependency of this GPL-3.0-or-later project (``pip install 'stimsim[mesh]'``); the combination
is allowed (GPL-3 section 13 / AGPL-3 section 13), a distributed binary that bundles it is
AGPL-3.  Without these packages :func:`stimsim.head.meshing.make_head_mesh` falls back to the
lattice mesher.

Method ("nested signed-distance surfaces")
-----------------------------------------
1. **Layers.**  Tags -> nesting layers (:data:`stimsim.head.labels.LAYER_OF_TAG`: 1 scalp,
   2 bone, 3 CSF, 4 GM, 5 WM).  Nested masks ``M_k = layer >= k``; ``M_1..M_3`` have their
   holes filled and keep their largest piece, ``M_4``/``M_5`` keep pieces over 0.5 mL and
   holes over 50 voxels (the ventricles are holes of ``M_4``: CSF inside the brain).
   Air cavities (background enclosed by the head, Colin27 label 6) become *holes* of the
   mesh (insulating, as in SimNIBS); they count as bone for the nesting.
2. **Signed distances.**  ``phi_k`` = Gaussian-smoothed (sigma 0.7 voxel) signed distance
   (mm, negative inside, zero on voxel faces) of ``M_k``.  Layers are made at least
   ``min_thickness_mm`` (0.5 mm) thick: where two surfaces come closer (Colin27 grey matter
   touches the skull on ~15,000 voxel faces) both are moved apart by half the deficit,
   then ``phi_{k+1} >= phi_k + t`` is enforced exactly on the grid (so also for its trilinear
   interpolant, and on every marching-cubes edge).  The closing sheet costs ``t`` x contact
   area instead of a whole element (the lattice mesher's problem).
3. **Surfaces.**  Marching cubes (scikit-image) of each ``phi_k`` (and the air field) at 0,
   quadric decimation (fast-simplification).  No surface smoothing: the field already is.
4. **Volume mesh.**  All surfaces in one PLC -> TetGen (``-pq<ratio>/<dihedral>a<vol>A``)
   with one region seed per connected piece of each layer (the grid point deepest inside
   it) and one hole seed per air cavity.  Each TetGen region then gets the tag the
   majority (by volume) of its tet centroids fall in, which fixes a seed that a
   decimated surface left on the wrong side.
5. Small face-connected islands are re-tagged, pieces not connected to the head dropped.

STATUS (measured on Colin27, 2 loaded cores; experimental, NOT wired into make_head_mesh)
-----------------------------------------------------------------------------------------
* Quadric decimation (fast-simplification, agg 7) of the 1-voxel marching-cubes surfaces to
  ~1.2-2.4 mm edges makes self-intersecting surfaces (TetGen: "self-intersections" /
  "recoversubfaces"); the undecimated surfaces (2.4 M triangles) are each valid.
* Marching cubes on the 2-voxel sub-grid: each surface valid; neighbour pairs intersect at
  thickness 0.5 mm (scalp/bone also at 0.75), not with the per-interface thicknesses in
  ``nested_fields`` (1.0 / 0.75 / 0.5 / 0.75 mm) -> 583 k triangles, a valid PLC.
* TetGen ``-pq1.5a3.18A`` and ``-pq2.0a3.18A`` fail ("split_subface");
  ``-pq1.5a3.18AY`` works: 734 k nodes / 4.25 M tets, 0 inverted, TetGen 116 s, 148 s and
  2.4 GB in all -> over the 1.5 M tet / 120 s budget.  Volumes with the (buggy) region vote:
  WM -3.8, GM +6.1, CSF -9.4 %, bone lost to scalp: the vote over TetGen region attributes
  must be fixed (1,560 seeds, 1,845 regions, 2.9 M tets disagree with their seed's tag).
* Fields (EDT + Gaussian of 5 masks + thickness): 13 s; surfaces 0.2 s at step 2.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.ndimage as ndi

from .._logging import logger
from ..errors import MeshError
from .labels import LAYER_OF_TAG

__all__ = ["available", "surface_mesh_from_tags", "SURFACE_MESHER_VERSION"]

SURFACE_MESHER_VERSION = "surf-1"
#: tag of each layer in the output (SimNIBS numbering)
LAYER_TAG = {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}


def available() -> bool:
    """True when tetgen, scikit-image and fast-simplification import."""
    try:
        import fast_simplification  # noqa: F401
        import skimage.measure  # noqa: F401
        import tetgen  # noqa: F401
    except Exception:
        return False
    return True


def _sdf(mask: np.ndarray, zooms, sigma_vox: float) -> np.ndarray:
    """Signed distance (mm, < 0 inside) to the voxel faces of ``mask``, Gaussian-smoothed."""
    out = ndi.distance_transform_edt(~mask, sampling=zooms).astype(np.float32)
    inside = ndi.distance_transform_edt(mask, sampling=zooms).astype(np.float32)
    half = 0.5 * float(np.mean(zooms))
    out = np.where(mask, -(inside - half), out - half)
    if sigma_vox > 0:
        out = ndi.gaussian_filter(out, sigma=sigma_vox, mode="nearest")
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _drop_small(mask: np.ndarray, min_vox: int) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= min(min_vox, sizes.max())
    return keep[lab]


def _fill_small_holes(mask: np.ndarray, max_vox: int) -> np.ndarray:
    holes = ndi.binary_fill_holes(mask) & ~mask
    lab, n = ndi.label(holes)
    if not n:
        return mask
    sizes = np.bincount(lab.ravel())
    small = sizes < max_vox
    small[0] = False
    return mask | small[lab]


def nested_fields(tags: np.ndarray, cavity: np.ndarray, zooms, *, min_thickness_mm=0.5, sigma_vox=0.7,
                  pad=3):
    """Nested masks -> smoothed signed distances with minimum layer thickness.

    Returns ``(phis, phi_air, info)``: ``phis[k]`` for layers 1..5 (padded by ``pad`` voxels),
    ``phi_air`` or None."""
    lut = np.zeros(256, np.int8)
    for t, layer in LAYER_OF_TAG.items():
        lut[t] = layer
    lut[11:] = 4  # e.g. a lesion tag: counts as brain
    layer = lut[tags]
    layer[cavity] = 2
    voxel = float(np.prod(zooms))
    masks = {}
    for k in range(1, 6):
        m = np.pad(layer >= k, pad)
        if k <= 3:
            m = _largest(ndi.binary_fill_holes(m))
        else:
            m = _fill_small_holes(_drop_small(m, int(500 / voxel)), 50)
        if k > 1:
            m &= masks[k - 1]
        masks[k] = m
    air = np.pad(cavity, pad) & masks[2] & ~masks[3]
    air = _drop_small(air, max(1, int(20 / voxel))) if air.any() else air
    if air.any():
        lab, n = ndi.label(air)
        sizes = np.bincount(lab.ravel())
        keep = sizes >= 20 / voxel
        keep[0] = False
        air = keep[lab]
    # per-interface minimum thickness (mm): below these, marching cubes on the 2-voxel sub-grid
    # gave intersecting neighbour surfaces on Colin27 (scalp/bone 0.75 failed, 1.0 ok; bone/CSF
    # and GM/WM 0.5 failed, 0.75 ok; CSF/GM 0.5 ok)
    tk = {1: 1.0, 2: 0.75, 3: float(min_thickness_mm), 4: 0.75}
    t = 0.75
    phis = {k: _sdf(masks[k], zooms, sigma_vox) for k in range(1, 6)}
    del masks
    # split the deficit between both surfaces (a few sweeps), then enforce exactly
    for _ in range(4):
        for k in range(1, 5):
            d = phis[k + 1] - phis[k] - tk[k]
            np.minimum(d, 0, out=d)
            d *= 0.5
            phis[k + 1] -= d
            phis[k] += d
    for k in range(1, 5):
        np.maximum(phis[k + 1], phis[k] + tk[k], out=phis[k + 1])
    phi_air = None
    if air.any():
        phi_air = _sdf(air, zooms, sigma_vox)
        np.maximum(phi_air, phis[2] + t, out=phi_air)
        np.maximum(phi_air, -phis[3] + t, out=phi_air)
        if not (phi_air < 0).any():
            phi_air = None
    return phis, phi_air


def _surface(phi: np.ndarray, zooms, pad: int, step: int):
    """Marching cubes of ``phi`` at 0 on every ``step``-th grid point (all surfaces on the same
    sub-grid: nested fields give disjoint, self-intersection-free surfaces; quadric decimation
    made self-intersections on Colin27)."""
    from skimage.measure import marching_cubes

    sub = phi[::step, ::step, ::step]
    verts, faces, _, _ = marching_cubes(sub, level=0.0, spacing=tuple(float(z) * step for z in zooms),
                                        allow_degenerate=False)
    verts = verts - pad * np.asarray(zooms)
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64), len(faces)


def _seeds(region: np.ndarray, depth: np.ndarray, zooms, pad: int, min_depth: float):
    """One point (mm, local frame) per 6-connected piece of ``region``: its deepest grid point."""
    lab, n = ndi.label(region)
    if not n:
        return np.zeros((0, 3)), np.zeros(0)
    idx = ndi.maximum_position(depth, lab, np.arange(1, n + 1))
    d = ndi.maximum(depth, lab, np.arange(1, n + 1))
    pts = (np.array(idx, float) - pad) * np.asarray(zooms)
    keep = np.asarray(d) >= min_depth
    return pts[keep], np.asarray(d)[keep]


def _trilinear(phi, pts_mm, zooms, pad):
    p = pts_mm / np.asarray(zooms) + pad
    return ndi.map_coordinates(phi, p.T, order=1, mode="nearest")


def surface_mesh_from_tags(tags: np.ndarray, cavity: np.ndarray, zooms, h: float, *, min_thickness_mm=0.5,
                           sigma_vox=0.7, minratio=1.5, mindihedral=12.0, surface_step=None, extra_switches="",
                           progress_cb=None, verbose=False):
    """Nested surfaces -> TetGen.  Returns ``(nodes_mm_local, tets, tet_tags, info)``.

    ``h``: target element size (mm); tets get a max volume ``h^3 / (6 sqrt 2)`` (regular tet
    of edge h); surfaces come from marching cubes on every ``surface_step``-th grid point (2).

    STATUS (experimental, not wired into make_head_mesh): on Colin27 only
    ``extra_switches="Y"`` (keep surface triangles) gets through TetGen, and the result
    (4.25 M tets, 116 s) is over budget; the per-region tag vote is wrong for bone.  See the
    module docstring."""
    import tetgen

    zooms = np.asarray(zooms, float)
    pad = 3
    info = {"timings_s": {}}
    t0 = time.perf_counter()
    phis, phi_air = nested_fields(tags, cavity, zooms, min_thickness_mm=min_thickness_mm, sigma_vox=sigma_vox,
                                  pad=pad)
    info["timings_s"]["fields_s"] = time.perf_counter() - t0
    if progress_cb:
        progress_cb("surfaces")
    t0 = time.perf_counter()
    step = int(surface_step or 2)
    verts, faces, nsurf = [], [], {}
    off = 0
    fields = [(k, phis[k]) for k in range(1, 6)] + ([("air", phi_air)] if phi_air is not None else [])
    for name, phi in fields:
        if not (phi < 0).any():
            continue
        v, f, n0 = _surface(phi, zooms, pad, step)
        verts.append(v)
        faces.append(f + off)
        off += len(v)
        nsurf[str(name)] = (n0, len(f))
    verts = np.concatenate(verts)
    faces = np.concatenate(faces)
    info["surface_triangles"] = nsurf
    info["timings_s"]["surfaces_s"] = time.perf_counter() - t0
    logger.info("surfaces (marching cubes -> decimated): %s", nsurf)

    # no region seeds: regions are recovered below as the face-connected pieces between the
    # input surfaces (the TetGen region attributes read back wrong tags, see STATUS)
    tg = tetgen.TetGen(verts, faces.astype(np.int32))
    rid = 0
    n_holes = 0
    if phi_air is not None:
        pts, _ = _seeds(phi_air < 0, -phi_air, zooms, pad, min_depth=0.05)
        for p in pts:
            tg.add_hole(p)
        n_holes = len(pts)
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
    try:
        out = tg.tetrahedralize(switches=switches)
    except Exception as exc:
        raise MeshError(f"TetGen failed on the head surfaces ({exc}); try another element size, or "
                        "method='lattice'") from None
    nodes, elem = out[0], out[1]
    info["timings_s"]["tetgen_s"] = time.perf_counter() - t0
    info["tetgen_switches"] = switches
    nodes = np.asarray(nodes, float)
    tets = np.asarray(elem, np.int64)[:, :4]

    # tags: regions = face-connected pieces of tets not separated by an input surface triangle
    # (-Y keeps every input triangle, and TetGen keeps the input points first); each region gets
    # the layer the majority (by volume) of its tet centroids fall in (trilinear signed distances)
    t0 = time.perf_counter()
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    from ..mesh.model import _TET_FACES, _face_codes
    from .meshing import _neighbors

    nin = len(verts)
    if len(nodes) < nin or not np.allclose(nodes[:nin], verts, atol=1e-6):
        raise MeshError("TetGen renumbered the surface points; cannot recover the regions")
    nn = np.int64(len(nodes))
    sf = np.sort(faces, axis=1)
    scode = np.unique(_face_codes(sf[:, 0], sf[:, 1], sf[:, 2], nn))
    nb = _neighbors(tets)
    rows, cols = [], []
    ar = np.arange(len(tets))
    for k, (i, j, l) in enumerate(_TET_FACES):
        other = nb[:, k]
        ok = other > ar
        code = _face_codes(tets[ok, i], tets[ok, j], tets[ok, l], nn)
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
    seed_tag = np.array([0] + [LAYER_TAG[k] for k in range(1, 6)])
    ttags = seed_tag[gl[ginv]]
    keep = ttags > 0
    tets, ttags = tets[keep], ttags[keep]
    info["timings_s"]["tags_s"] = time.perf_counter() - t0
    return nodes, tets, ttags, info
