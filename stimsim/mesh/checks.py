"""Mesh sanity checks (run before assembling a FEM system) and quality statistics.

:func:`check_mesh` decisions
----------------------------
* **Errors** (:class:`~stimsim.errors.MeshError`, one line: problem + fix): empty mesh,
  non-finite coordinates, node indices out of range, degenerate tetrahedra, a *mix* of
  positively and negatively oriented tetrahedra, several disconnected pieces, tissue tags
  without a conductivity.
* **Orientation**: SimNIBS/Gmsh meshes are positively oriented (right-handed node order).
  When *all* tetrahedra are negative the node order was simply mirrored by the exporter:
  with ``fix_orientation=True`` (default) they are flipped (nodes 1 and 2 swapped) and an
  INFO message is logged; with ``fix_orientation=False`` it is an error.  A mix of signs
  means tangled or inconsistently exported elements and is always an error.
* **Unused nodes** (not referenced by any tetrahedron) are *dropped* with a logged
  warning and the connectivity renumbered: they carry no equation and would make the
  stiffness matrix singular, but they do not make the mesh wrong.  Triangles that use a
  dropped node (so are not on the tetrahedral mesh) are dropped too.  Node-indexed data
  read from the same file no longer line up after this: renumber it with the kept-node
  list (``np.unique(mesh.tets)`` of the original mesh).
* **Connectivity** is checked on the node graph of the tetrahedra (tetrahedra sharing a
  node are connected), which is exactly the condition for a non-singular P1 system with
  one reference node.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .._logging import logger
from ..errors import MeshError
from .model import Mesh

__all__ = ["check_mesh", "mesh_quality", "element_quality", "element_quality_report",
           "SLIVER_DIHEDRAL_DEG", "SLIVER_RADIUS_RATIO"]

_DEGENERATE_RTOL = 1e-12


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_connectivity(mesh: Mesh, graph: sp.spmatrix | None = None) -> None:
    """Raise MeshError when the tetrahedra form more than one connected piece.

    ``graph`` may be any (n, n) sparse matrix with the mesh's node adjacency pattern, such as
    the assembled stiffness matrix (then no graph has to be built).
    """
    n = mesh.n_nodes
    if graph is None:
        t = mesh.tets
        rows = np.repeat(t[:, 0], 3)
        cols = t[:, 1:].ravel()
        graph = sp.coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n))
        ncomp, labels = connected_components(graph, directed=False)
    else:
        # symmetric pattern: weak connectivity needs no symmetrised copy
        ncomp, labels = connected_components(graph, directed=True, connection="weak")
    if ncomp > 1:
        t = mesh.tets
        sizes = np.bincount(labels[t[:, 0]], minlength=ncomp)
        sizes = np.sort(sizes)[::-1]
        shown = ", ".join(str(int(s)) for s in sizes[:8]) + (", ..." if ncomp > 8 else "")
        raise MeshError(
            f"mesh has {ncomp} disconnected pieces (tetrahedra per piece: {shown}); "
            "remove the stray pieces or re-mesh so the volume is connected"
        )


def check_mesh(mesh: Mesh, known_tags=None, *, fix_orientation: bool = True, connectivity: bool = True) -> Mesh:
    """Validate ``mesh`` for FEM use; return it (or a repaired copy, see module docstring).

    Parameters
    ----------
    mesh : Mesh
    known_tags : iterable of int, optional
        Tags that have a conductivity.  Tetrahedron tags outside it raise MeshError.
    fix_orientation : bool
        Flip an entirely negatively oriented mesh instead of raising.
    connectivity : bool
        Check for disconnected pieces (callers that assemble a stiffness matrix anyway can
        pass False and call :func:`check_connectivity` with it, which is cheaper).

    Raises
    ------
    MeshError
        With a one-line message naming the problem and the fix.
    """
    if not isinstance(mesh, Mesh):
        raise MeshError(f"check_mesh needs a stimsim Mesh, got {type(mesh).__name__}")
    n, m = mesh.n_nodes, mesh.n_tets
    if m == 0 or n == 0:
        raise MeshError(
            f"mesh is empty ({n} nodes, {m} tetrahedra); give a volume mesh with tetrahedra (Gmsh element type 4)"
        )
    bad = ~np.isfinite(mesh.nodes).all(axis=1)
    if bad.any():
        raise MeshError(
            f"{int(bad.sum())} nodes have non-finite coordinates (first: node #{_first(bad)}); "
            "repair or re-export the mesh"
        )
    for what, conn in (("tetrahedra", mesh.tets), ("triangles", mesh.tris)):
        if conn.size:
            out = ((conn < 0) | (conn >= n)).any(axis=1)
            if out.any():
                raise MeshError(
                    f"{int(out.sum())} {what} refer to node indices outside 0..{n - 1} "
                    f"(first: #{_first(out)}); the file's node and element sections do not match, re-export the mesh"
                )

    if known_tags is not None:
        known = {int(t) for t in known_tags}
        unknown = sorted(set(np.unique(mesh.tet_tags).tolist()) - known)
        if unknown:
            counts = {t: int(np.count_nonzero(mesh.tet_tags == t)) for t in unknown[:10]}
            raise MeshError(
                f"tissue tags {unknown} ({', '.join(f'{t}: {c} tets' for t, c in counts.items())}) have no "
                f"conductivity; give conductivities for them (known tags: {sorted(known)})"
            )

    # unused nodes --------------------------------------------------------------------
    used = np.zeros(n, bool)
    used[mesh.tets.ravel()] = True
    if not used.all():
        n_unused = int(n - used.sum())
        new_index = np.cumsum(used) - 1
        tris, tri_tags = mesh.tris, mesh.tri_tags
        if tris.size:
            keep = used[tris].all(axis=1)
            if not keep.all():
                logger.warning("dropping %d triangles that are not on the tetrahedral mesh", int((~keep).sum()))
            tris, tri_tags = tris[keep], tri_tags[keep]
        logger.warning(
            "mesh has %d nodes not used by any tetrahedron (first: #%d); dropped them and renumbered the nodes",
            n_unused,
            _first(~used),
        )
        mesh = Mesh(
            nodes=mesh.nodes[used],
            tets=new_index[mesh.tets],
            tet_tags=mesh.tet_tags,
            tris=new_index[tris] if tris.size else tris,
            tri_tags=tri_tags,
        )
        n = mesh.n_nodes

    # degenerate / inverted ---------------------------------------------------------------
    vol = mesh.signed_volumes_mm3
    avol = np.abs(vol)
    med = float(np.median(avol))
    degen = avol <= _DEGENERATE_RTOL * med if med > 0 else np.ones(m, bool)
    if degen.any():
        raise MeshError(
            f"{int(degen.sum())} of {m} tetrahedra are degenerate (zero volume; first: #{_first(degen)}); "
            "re-mesh or remove them"
        )
    neg = vol < 0
    n_neg = int(neg.sum())
    if n_neg == m:
        if not fix_orientation:
            raise MeshError(
                "all tetrahedra are negatively oriented; call check_mesh(..., fix_orientation=True) "
                "or swap two nodes of every tetrahedron"
            )
        logger.info("all %d tetrahedra were negatively oriented; flipped them (swapped nodes 1 and 2)", m)
        mesh = Mesh(
            nodes=mesh.nodes,
            tets=mesh.tets[:, [0, 2, 1, 3]],
            tet_tags=mesh.tet_tags,
            tris=mesh.tris,
            tri_tags=mesh.tri_tags,
        )
    elif n_neg:
        raise MeshError(f"{n_neg} of {m} tetrahedra are inverted (first: #{_first(neg)}); re-orient or re-mesh")

    if connectivity:
        check_connectivity(mesh)
    return mesh


#: how many of the poorly shaped tetrahedra :func:`element_quality_report` lists (worst first): every one
#: on the heads measured (427 at most, on 0.8 x 0.8 x 1.6 mm voxels; 100 listed their worst only), while
#: a mesh's summary stays under ~150 kB
POOR_LISTED = 1000
#: element-shape warning thresholds (:func:`element_quality_report`): the targets of the mesh-quality
#: work; a tetrahedron below either is a sliver / needle that slows the iterative solver and
#: spoils the field locally, but it is still a valid element (only zero volume is an error)
SLIVER_DIHEDRAL_DEG = 5.0
SLIVER_RADIUS_RATIO = 0.1
_CHUNK = 65_536  # tetrahedra per block: the temporaries stay in cache, memory stays flat


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of (3, m) component-first arrays (faster than np.cross on (m, 3))."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])


# the two faces that meet at edge (i, j) = 01 02 03 12 13 23 are the ones opposite the other two
# vertices (k, l)
_OTHER = ((2, 3), (1, 3), (1, 2), (0, 3), (0, 2), (0, 1))


def _tet_block(xyz: np.ndarray, tets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Signed volume, radius ratio, min / max interior dihedral angle (deg) and the six edge
    lengths (6, m) of a block of tetrahedra; ``xyz`` is the (3, n) node array."""
    p0, p1, p2, p3 = (xyz[:, tets[:, k]] for k in range(4))
    a, b, c = p1 - p0, p2 - p0, p3 - p0
    d, e = p2 - p1, p3 - p1
    elen = np.stack([_norm(v) for v in (a, b, c, d, e, p3 - p2)])  # edges 01 02 03 12 13 23
    bc, ac, ab = _cross(b, c), _cross(a, c), _cross(a, b)
    vol = (a * bc).sum(0) / 6.0
    avol = np.abs(vol)
    # face normals, face k opposite vertex k, all outward for a positive tet (all inward for a
    # negative one, which leaves the angles between them unchanged); length = 2 * face area
    normals = (_cross(d, e), -bc, ac, -ab)
    area2 = np.stack([_norm(v) for v in normals])
    flat_face = (area2 == 0).any(0)  # three collinear nodes: no normal, the tet counts as flat
    with np.errstate(divide="ignore", invalid="ignore"):
        # circumradius R = | |a|^2 (b x c) + |b|^2 (c x a) + |c|^2 (a x b) | / (12 V); inradius r = 3 V / area
        num = (a * a).sum(0) * bc - (b * b).sum(0) * ac + (c * c).sum(0) * ab
        r_circ = _norm(num) / (12.0 * avol)
        r_in = 6.0 * avol / area2.sum(0)
        ratio = np.nan_to_num(3.0 * r_in / r_circ, nan=0.0, posinf=0.0)
        inv = 1.0 / area2
        # interior dihedral angle at an edge = 180 deg - angle between the outward normals of the two
        # faces that meet there: cos(dihedral) = -n_k . n_l / (|n_k| |n_l|); the smallest angle has
        # the largest cosine, so only two arccos per tetrahedron
        cos = np.stack([-(normals[k] * normals[l]).sum(0) * (inv[k] * inv[l]) for k, l in _OTHER])
        cmax, cmin = cos.max(0), cos.min(0)
    dmin = np.degrees(np.arccos(np.clip(cmax, -1.0, 1.0)))
    dmax = np.degrees(np.arccos(np.clip(cmin, -1.0, 1.0)))
    dmin[flat_face] = 0.0
    dmax[flat_face] = 180.0
    return vol, ratio, dmin, dmax, elen


def element_quality(mesh: Mesh, *, edges: bool = False) -> dict:
    """Per-tetrahedron shape measures, vectorised (blocks of 65,536 tetrahedra).

    Returns a dict of (m,) arrays: ``volume_mm3`` (signed: > 0 for the positive, right-handed node
    order), ``radius_ratio`` (3 * inradius / circumradius: 1 for a regular tetrahedron, 0 for a
    flat one), ``min_dihedral_deg`` and ``max_dihedral_deg`` (interior dihedral angles: 70.53 deg
    for a regular tetrahedron; a sliver has one near 0 and one near 180); with ``edges=True`` also
    ``edge_length_mm`` (6, m).  Timing: docs/meshing.md.
    """
    m = mesh.n_tets
    out = {k: np.empty(m) for k in ("volume_mm3", "radius_ratio", "min_dihedral_deg", "max_dihedral_deg")}
    elen = np.empty((6, m)) if edges else None
    xyz = np.ascontiguousarray(mesh.nodes.T)  # component-first arrays keep every operation contiguous
    for s in range(0, m, _CHUNK):
        sl = slice(s, min(s + _CHUNK, m))
        vol, ratio, dmin, dmax, el = _tet_block(xyz, mesh.tets[sl])
        out["volume_mm3"][sl], out["radius_ratio"][sl] = vol, ratio
        out["min_dihedral_deg"][sl], out["max_dihedral_deg"][sl] = dmin, dmax
        if edges:
            elen[:, sl] = el
    if edges:
        out["edge_length_mm"] = elen
    return out


def _worst(mesh: Mesh, values: np.ndarray) -> dict:
    i = int(np.argmin(values))
    return {"worst": float(values[i]), "worst_tet": i,
            "worst_at_mm": [round(float(x), 3) for x in mesh.nodes[mesh.tets[i]].mean(0)],
            "worst_tag": int(mesh.tet_tags[i])}


def element_quality_report(mesh: Mesh, quality: dict | None = None, *, min_dihedral_deg: float = SLIVER_DIHEDRAL_DEG,
                           min_radius_ratio: float = SLIVER_RADIUS_RATIO, degenerate_rtol: float = _DEGENERATE_RTOL
                           ) -> dict:
    """Which tetrahedra are poorly shaped or degenerate, with numbers for a report.

    ``quality``: :func:`element_quality` of ``mesh`` when already computed.  Returns a dict with
    ``dihedral`` (tetrahedra with a dihedral angle below ``min_dihedral_deg``) and
    ``radius_ratio`` (radius ratio below ``min_radius_ratio``), each ``{"threshold", "count",
    "fraction", "worst", "worst_tet", "worst_at_mm", "worst_tag"}`` (the worst over the whole
    mesh, location = its centroid in mesh coordinates, mm), and ``degenerate``: ``{"count", "flat",
    "inverted", ...}``, the tetrahedra with an absolute volume at or below ``degenerate_rtol`` x the
    median volume (``flat``) or oriented against the majority (``inverted``): what :func:`check_mesh`
    refuses; ``worst`` is then the most negative signed volume relative to the majority orientation.
    ``poor`` lists the tetrahedra below either shape bound, worst first (up to ``POOR_LISTED``), each
    ``{"tet", "tag", "at_mm", "min_dihedral_deg", "radius_ratio"}``, and ``poor_count`` counts them all.
    """
    q = element_quality(mesh) if quality is None else quality
    m = mesh.n_tets
    out = {"n_tets": m}
    for key, values, thr in (("dihedral", q["min_dihedral_deg"], min_dihedral_deg),
                             ("radius_ratio", q["radius_ratio"], min_radius_ratio)):
        n = int(np.count_nonzero(values < thr))
        out[key] = {"threshold": float(thr), "count": n, "fraction": n / m if m else 0.0,
                    **(_worst(mesh, values) if m else {})}
    shape = np.minimum(q["min_dihedral_deg"] / min_dihedral_deg, q["radius_ratio"] / min_radius_ratio)
    poor = np.flatnonzero(shape < 1.0)
    out["poor_count"] = int(len(poor))
    listed = poor[np.argsort(shape[poor], kind="stable")[:POOR_LISTED]]
    cen = mesh.nodes[mesh.tets[listed]].mean(axis=1)
    out["poor"] = [{"tet": int(i), "tag": int(mesh.tet_tags[i]), "at_mm": [round(float(c), 2) for c in xyz],
                    "min_dihedral_deg": round(float(q["min_dihedral_deg"][i]), 3),
                    "radius_ratio": round(float(q["radius_ratio"][i]), 4)} for i, xyz in zip(listed, cen)]
    vol = q["volume_mm3"]
    # orientation: the majority sign (an all-negative mesh is a mirrored export, not inverted)
    sign = -1.0 if np.count_nonzero(vol < 0) > m // 2 else 1.0
    rel = sign * vol
    med = float(np.median(np.abs(vol))) if m else 0.0
    flat = np.abs(vol) <= degenerate_rtol * med
    inverted = (rel < 0) & ~flat
    bad = flat | inverted
    out["degenerate"] = {"count": int(bad.sum()), "flat": int(flat.sum()), "inverted": int(inverted.sum())}
    if bad.any():
        out["degenerate"].update(_worst(mesh, np.where(bad, rel, np.inf)))
    return out


def mesh_quality(mesh: Mesh, *, elements: bool = False) -> dict:
    """Size and shape statistics (vectorised; timing: docs/meshing.md).

    Returns a dict with ``n_nodes``, ``n_tets``, ``n_tris``, ``volume_mm3`` (total),
    ``volume_mm3_per_tag`` ({tag: mm³}), ``edge_length_mm`` ({min, median, max}),
    ``radius_ratio`` ({min, median}; 3·inradius/circumradius, 1 for a regular
    tetrahedron, 0 for a flat one), ``min_dihedral_deg`` and ``max_dihedral_deg``
    (interior dihedral angles; 70.5° for a regular tetrahedron); with ``elements=True`` also
    ``elements``, the :func:`element_quality_report` (slivers, worst element and where it is).
    """
    tags, inv = np.unique(mesh.tet_tags, return_inverse=True)
    out = {
        "n_nodes": mesh.n_nodes,
        "n_tets": mesh.n_tets,
        "n_tris": len(mesh.tris),
    }
    if mesh.n_tets == 0:
        return {**out, "volume_mm3": 0.0, "volume_mm3_per_tag": {}}
    q = element_quality(mesh, edges=True)
    vol = np.abs(q["volume_mm3"])
    per_tag = np.bincount(inv.ravel(), weights=vol, minlength=len(tags))
    out["volume_mm3"] = float(vol.sum())
    out["volume_mm3_per_tag"] = {int(t): float(v) for t, v in zip(tags, per_tag)}
    elen = q.pop("edge_length_mm")
    out["edge_length_mm"] = {
        "min": float(elen.min()),
        "median": float(np.median(elen)),
        "max": float(elen.max()),
    }
    del elen
    ratio = q["radius_ratio"]
    out["radius_ratio"] = {"min": float(ratio.min()), "median": float(np.median(ratio))}
    out["min_dihedral_deg"] = float(q["min_dihedral_deg"].min())
    out["max_dihedral_deg"] = float(q["max_dihedral_deg"].max())
    if elements:
        out["elements"] = element_quality_report(mesh, q)
    return out
