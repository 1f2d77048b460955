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

__all__ = ["check_mesh", "mesh_quality"]

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


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of (3, m) component-first arrays (faster than np.cross on (m, 3))."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])


def mesh_quality(mesh: Mesh) -> dict:
    """Size and shape statistics (vectorised).

    Returns a dict with ``n_nodes``, ``n_tets``, ``n_tris``, ``volume_mm3`` (total),
    ``volume_mm3_per_tag`` ({tag: mm³}), ``edge_length_mm`` ({min, median, max}),
    ``radius_ratio`` ({min, median}; 3·inradius/circumradius, 1 for a regular
    tetrahedron, 0 for a flat one), ``min_dihedral_deg`` and ``max_dihedral_deg``
    (interior dihedral angles; 70.5° for a regular tetrahedron).
    """
    vol = mesh.volumes_mm3
    tags, inv = np.unique(mesh.tet_tags, return_inverse=True)
    per_tag = np.bincount(inv.ravel(), weights=vol, minlength=len(tags))
    out = {
        "n_nodes": mesh.n_nodes,
        "n_tets": mesh.n_tets,
        "n_tris": len(mesh.tris),
        "volume_mm3": float(vol.sum()),
        "volume_mm3_per_tag": {int(t): float(v) for t, v in zip(tags, per_tag)},
    }
    if mesh.n_tets == 0:
        return out
    xyz = mesh.nodes.T  # (3, n): component-first arrays keep every operation contiguous
    p0, p1, p2, p3 = (xyz[:, mesh.tets[:, k]] for k in range(4))
    a, b, c = p1 - p0, p2 - p0, p3 - p0
    d, e, f = p2 - p1, p3 - p1, p3 - p2
    elen = np.stack([_norm(v) for v in (a, b, c, d, e, f)])  # edges 01 02 03 12 13 23
    out["edge_length_mm"] = {
        "min": float(elen.min()),
        "median": float(np.median(elen)),
        "max": float(elen.max()),
    }
    # face normals (length = 2 * area), face k opposite vertex k; the common sign does not
    # matter for the angles between them
    bc, ac, ab = _cross(b, c), _cross(a, c), _cross(a, b)
    n = [_cross(d, e), -bc, ac, -ab]
    area2 = [_norm(v) for v in n]
    with np.errstate(divide="ignore", invalid="ignore"):
        # circumradius R = | |a|²(b×c) + |b|²(c×a) + |c|²(a×b) | / (12 V); inradius r = 3V / area
        num = (a * a).sum(0) * bc - (b * b).sum(0) * ac + (c * c).sum(0) * ab
        r_circ = _norm(num) / (12.0 * vol)
        r_in = 3.0 * vol / (0.5 * (area2[0] + area2[1] + area2[2] + area2[3]))
        ratio = np.nan_to_num(3.0 * r_in / r_circ, nan=0.0)
        unit = [v / s for v, s in zip(n, area2)]
        # dihedral angle at edge (i, j) = 180° - angle between the normals of the two faces
        # opposite the other two vertices (k, l)
        cosines = np.stack([(unit[k] * unit[l]).sum(0) for k, l in ((2, 3), (1, 3), (1, 2), (0, 3), (0, 2), (0, 1))])
        dih = 180.0 - np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))
    out["radius_ratio"] = {"min": float(ratio.min()), "median": float(np.median(ratio))}
    out["min_dihedral_deg"] = float(np.nanmin(dih))
    out["max_dihedral_deg"] = float(np.nanmax(dih))
    return out
