"""Electrodes on the outer surface and the boundary conditions they impose.

Electrode model (chosen and documented here): every electrode is an **equipotential
patch carrying a set total current**.  All scalp nodes under the patch share a single
unknown potential (their degrees of freedom are merged), and the electrode current is
injected into that one unknown.  This is the "shunt" electrode model, the limit of the
complete electrode model for zero contact impedance: the potential is constant under
the pad and current is free to concentrate at its rim, as it does under a real saline
sponge.  A point electrode is the degenerate patch of one node (the nearest scalp node).

Because the merged unknowns make the system a Galerkin projection of the original one,
current conservation is exact up to the linear-solver tolerance: the net current that
leaves each patch equals its set current.

One electrode (the last one) is the potential reference (0 V); its current is implied
by the others because all currents must sum to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .._logging import logger
from ..errors import ProtocolError, check_option
from ..mesh.model import Mesh

#: an electrode farther than this from the scalp is almost certainly a unit or space mistake
MAX_DISTANCE_MM = 10.0
#: relative tolerance on the sum of currents
CURRENT_SUM_RTOL = 1e-9


@dataclass(frozen=True)
class ElectrodeSpec:
    """What the user asked for (solver-side, SI currents; positions in mm).

    shape is ``"point"``, ``"disc"`` (``diameter_mm``) or ``"rect"`` (``size_mm`` = (a, b):
    a along ``direction`` projected on the scalp, b across it).
    """

    name: str
    position_mm: tuple[float, float, float]
    current_A: float
    shape: str = "point"
    diameter_mm: float | None = None
    size_mm: tuple[float, float] | None = None
    direction: tuple[float, float, float] | None = None


@dataclass(frozen=True, eq=False)
class PlacedElectrode:
    """An electrode mapped onto the mesh."""

    name: str
    current_A: float
    nodes: np.ndarray  # scalp nodes under the patch (0-based)
    center_node: int
    distance_mm: float  # from the requested position to the nearest scalp node
    area_mm2: float  # meshed area: the scalp triangles entirely under the patch (0 for points)
    shape: str
    nominal_area_mm2: float = 0.0  # the pad's own area: pi d^2 / 4 or a b (0 for points)
    faces: np.ndarray | None = None  # (k, 3) the scalp triangles under the pad (node indices)
    face_tets: np.ndarray | None = None  # (k,) the scalp element under each of them

    @property
    def current_density_A_per_m2(self) -> float:
        """Mean current density under the pad, |I| / nominal area (what the cited electrode limits
        divide by); inf for a point electrode."""
        return abs(self.current_A) / (self.nominal_area_mm2 * 1e-6) if self.nominal_area_mm2 > 0 else float("inf")

    @property
    def meshed_current_density_A_per_m2(self) -> float:
        """|I| / meshed area: the mean over the triangles that carry the current in the model."""
        return abs(self.current_A) / (self.area_mm2 * 1e-6) if self.area_mm2 > 0 else float("inf")


def _frame(normal: np.ndarray, direction) -> tuple[np.ndarray, np.ndarray]:
    """Two unit tangents (u along ``direction`` projected on the tangent plane, w = n x u)."""
    if direction is not None:
        d = np.asarray(direction, float)
        u = d - d.dot(normal) * normal
        if np.linalg.norm(u) < 1e-6 * max(np.linalg.norm(d), 1e-300):
            raise ProtocolError(
                f"electrode direction {list(d)} is perpendicular to the scalp here; give a direction "
                "that lies along the scalp surface"
            )
    else:
        # any tangent: the global axis least aligned with the normal
        axis = np.eye(3)[np.argmin(np.abs(normal))]
        u = axis - axis.dot(normal) * normal
    u = u / np.linalg.norm(u)
    return u, np.cross(normal, u)


def place_electrodes(
    mesh: Mesh, specs: Sequence[ElectrodeSpec], *, max_distance_mm: float = MAX_DISTANCE_MM
) -> list[PlacedElectrode]:
    """Map electrode specifications onto the exterior surface of ``mesh``.

    Patch nodes are the scalp nodes whose projection on the tangent plane at the centre
    falls inside the disc/rectangle, that face the same way as the centre, and that are
    connected to the centre over the surface (so a pad never jumps onto a fold or an ear).

    Raises
    ------
    ProtocolError
        If currents do not sum to zero, an electrode lies more than ``max_distance_mm``
        from the scalp, or two electrodes overlap.
    """
    if len(specs) < 2:
        raise ProtocolError(f"electrodes: at least 2 are needed for a closed circuit, got {len(specs)}")
    currents = np.array([s.current_A for s in specs])
    if abs(currents.sum()) > CURRENT_SUM_RTOL * max(np.abs(currents).max(), 1e-12):
        raise ProtocolError(
            f"electrodes: currents must sum to zero, they sum to {currents.sum() * 1e3:.6g} mA "
            f"({', '.join(f'{s.name}={s.current_A * 1e3:g}' for s in specs)}); adjust the return electrode(s)"
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"electrodes: names must be unique, got {names}")

    surf_nodes, surf_normals = mesh.boundary_node_normals()
    # distances to all scalp nodes, not a k-d tree: a few queries over ~30k nodes take well under a
    # millisecond each, while importing scipy.spatial costs a run 0.05-0.13 s
    surf_xyz = mesh.nodes[surf_nodes]
    faces = mesh.boundary_faces
    placed: list[PlacedElectrode] = []
    owner = np.full(mesh.n_nodes, -1)
    for k, spec in enumerate(specs):
        pos = np.asarray(spec.position_mm, float)
        if pos.shape != (3,) or not np.isfinite(pos).all():
            raise ProtocolError(f"electrodes[{k}] ({spec.name}): position {pos.tolist()} is not three finite "
                                "numbers (mm)")
        # equidistant scalp nodes: the lowest index wins
        d2 = _squared_distances(surf_xyz, pos)
        i0 = int(np.argmin(d2))
        dist = float(np.sqrt(d2[i0]))
        if dist > max_distance_mm:
            raise ProtocolError(
                f"electrodes[{k}] ({spec.name}): position {pos.tolist()} mm is {dist:.1f} mm from the scalp "
                f"(limit {max_distance_mm:g} mm); positions are in mm in the head's coordinate frame"
            )
        center = int(surf_nodes[i0])
        if spec.shape == "point":
            nodes, face_ids, area, nominal = np.array([center]), np.zeros(0, np.int64), 0.0, 0.0
        else:
            nodes, face_ids, area = _patch_nodes(mesh, spec, center, surf_nodes, surf_normals, surf_xyz, faces)
            face_ids = np.asarray(face_ids, np.int64)
            nominal = (np.pi * spec.diameter_mm ** 2 / 4 if spec.shape == "disc"
                       else float(spec.size_mm[0] * spec.size_mm[1]))
        clash = owner[nodes]
        if np.any(clash >= 0):
            other = specs[int(clash[clash >= 0][0])].name
            raise ProtocolError(
                f"electrodes: {spec.name!r} overlaps {other!r} on the scalp; move them apart or make them smaller"
            )
        owner[nodes] = k
        placed.append(PlacedElectrode(spec.name, spec.current_A, nodes, center, float(dist), area, spec.shape,
                                      nominal, faces[face_ids], mesh.boundary_face_tets[face_ids]))
        logger.info("electrode %s: %d scalp nodes, %.1f mm², %.2f mm from the requested position",
                    spec.name, len(nodes), area, dist)
    return placed


def _squared_distances(points: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = points - p
    return np.einsum("ij,ij->i", d, d)


def _patch_nodes(mesh, spec, center, surf_nodes, surf_normals, surf_xyz, faces):
    c = mesh.nodes[center]
    if spec.shape == "disc":
        if not spec.diameter_mm or spec.diameter_mm <= 0:
            raise ProtocolError(f"electrode {spec.name!r}: a disc needs diameter_mm > 0")
        half_extent = spec.diameter_mm / 2
    elif spec.shape == "rect":
        if not spec.size_mm or min(spec.size_mm) <= 0:
            raise ProtocolError(f"electrode {spec.name!r}: a rect needs size_mm [a, b] with a, b > 0")
        half_extent = 0.5 * float(np.hypot(*spec.size_mm))
    else:
        check_option(f"electrode {spec.name!r}: shape", spec.shape, ("point", "disc", "rect"))
    # the normal at the pad centre, smoothed over a few mm so one odd triangle cannot tilt the pad
    d2 = _squared_distances(surf_xyz, c)
    near = np.flatnonzero(d2 <= min(half_extent, 10.0) ** 2)
    n = surf_normals[near].sum(axis=0)
    n /= np.linalg.norm(n)
    cand = np.flatnonzero(d2 <= (half_extent * 1.5 + 1e-9) ** 2)
    rel = mesh.nodes[surf_nodes[cand]] - c
    u, w = _frame(n, spec.direction)
    x, y = rel @ u, rel @ w
    if spec.shape == "disc":
        inside = x**2 + y**2 <= (spec.diameter_mm / 2) ** 2 * (1 + 1e-9)
    else:
        a, b = spec.size_mm
        inside = (np.abs(x) <= a / 2 * (1 + 1e-9)) & (np.abs(y) <= b / 2 * (1 + 1e-9))
    inside &= surf_normals[cand] @ n > 0.0
    sel = surf_nodes[cand[inside]]
    # keep the piece of surface connected to the centre node
    mask = np.zeros(mesh.n_nodes, bool)
    mask[sel] = True
    mask[center] = True
    face_ids = np.flatnonzero(mask[faces].all(axis=1))
    f = faces[face_ids]
    if len(f):
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        g = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(mesh.n_nodes,) * 2)
        _, labels = connected_components(g, directed=False)
        sel = np.flatnonzero(mask & (labels == labels[center]))
        keep = labels[f[:, 0]] == labels[center]
        f, face_ids = f[keep], face_ids[keep]
    else:
        sel = np.array([center])
    if len(sel) < 3:
        logger.warning("electrode %s covers only %d scalp node(s); the mesh is coarse for this pad size",
                       spec.name, len(sel))
    p = mesh.nodes[f]
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1).sum() if len(f) else 0.0
    return sel, face_ids, float(area)


def boundary_node_areas(mesh: Mesh) -> np.ndarray:
    """(n,) each node's share of the exterior surface, mm²: a third of the area of every exterior
    triangle it belongs to (0 inside the volume)."""
    faces = mesh.boundary_faces
    p = mesh.nodes[faces]
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    return np.bincount(faces.ravel(), weights=np.repeat(area / 3.0, 3), minlength=mesh.n_nodes)


def skin_current_density(electrode: PlacedElectrode, skin_flux_A: np.ndarray, node_area_mm2: np.ndarray
                         ) -> dict | None:
    """Current density (A/m²) entering the skin under a pad, node by node: the discrete current
    through each skin node (``skin_flux_A``: the head's stiffness times the potential, which sums to
    the pad's current over its nodes) over the node's share of the surface (:func:`boundary_node_areas`).

    Returns the mean (|I| over the pads nodes' surface), the 95th percentile (by area) and the
    maximum, the mean over the rim (nodes on the pad's boundary) and whether the maximum lies on the
    rim; None for a point electrode.  An equipotential pad drives its current in at the rim, as the
    edge of a real sponge does (skin burns start at edges); the rim value depends on the element
    size, so compare models on one mesh rather than a single value with a limit.
    """
    if electrode.faces is None or len(electrode.faces) == 0:
        return None
    from ..stats import weighted_percentiles

    nodes = np.asarray(electrode.nodes)
    area = node_area_mm2[nodes]
    density = np.abs(skin_flux_A[nodes]) / np.maximum(area * 1e-6, 1e-300)
    # rim: nodes on an edge that only one of the pad's triangles has
    faces = electrode.faces
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    rim = np.isin(nodes, uniq[count == 1])
    i_max = int(np.argmax(density))
    return {"mean": float(np.abs(skin_flux_A[nodes].sum()) / (area.sum() * 1e-6)),
            "p95": weighted_percentiles(density, area, [95.0])[0],
            "max": float(density[i_max]),
            "rim_mean": float(np.average(density[rim], weights=area[rim])) if rim.any() else float("nan"),
            "max_on_rim": bool(rim[i_max])}


@dataclass(frozen=True, eq=False)
class ElectrodeSystem:
    """Reduced linear system after merging patch nodes and grounding the reference electrode.

    ``dof[i]`` is the unknown of mesh node ``i`` (-1 for reference-electrode nodes, 0 V).
    """

    matrix: sp.csr_matrix
    dof: np.ndarray
    electrode_dofs: np.ndarray  # one per electrode, -1 for the reference

    def rhs(self, currents_A: Sequence[float]) -> np.ndarray:
        """Right-hand side for a set of electrode currents (A), reference current implied."""
        b = np.zeros(self.matrix.shape[0])
        for d, i in zip(self.electrode_dofs, currents_A):
            if d >= 0:
                b[d] += i
        return b

    def rhs_from_nodal(self, nodal_rhs: np.ndarray) -> np.ndarray:
        """Restrict a nodal right-hand side (e.g. TMS) to the reduced unknowns."""
        keep = self.dof >= 0
        return np.bincount(self.dof[keep], weights=nodal_rhs[keep], minlength=self.matrix.shape[0])

    def expand(self, reduced: np.ndarray) -> np.ndarray:
        """Nodal potential from the reduced solution (reference nodes at 0 V)."""
        return np.where(self.dof >= 0, reduced[np.maximum(self.dof, 0)], 0.0)


def electrode_system(stiffness: sp.csr_matrix, electrodes: Sequence[PlacedElectrode], *,
                     reference: int = -1) -> ElectrodeSystem:
    """Merge each electrode's nodes into one unknown and ground the ``reference`` electrode.

    ``P.T @ K @ P`` with the 0/1 prolongation ``P`` (node -> unknown; the reference electrode's
    nodes have none): two sparse products, 16x faster than relabelling the entries through COO
    (measured: docs/solver.md).
    """
    n = stiffness.shape[0]
    ref = range(len(electrodes))[reference]
    in_patch = np.zeros(n, bool)
    for e in electrodes:
        in_patch[e.nodes] = True
    dof = np.full(n, -1, np.int64)
    free = ~in_patch
    dof[free] = np.arange(int(free.sum()))
    next_dof = int(free.sum())
    electrode_dofs = np.full(len(electrodes), -1, np.int64)
    for k, e in enumerate(electrodes):
        if k == ref:
            continue
        dof[e.nodes] = next_dof
        electrode_dofs[k] = next_dof
        next_dof += 1
    kept = np.flatnonzero(dof >= 0)
    p = sp.csr_matrix((np.ones(len(kept)), (kept, dof[kept])), shape=(n, next_dof))
    a = (p.T.tocsr() @ (sp.csr_matrix(stiffness) @ p)).tocsr()
    a.sum_duplicates()
    return ElectrodeSystem(a, dof, electrode_dofs)


@dataclass(frozen=True, eq=False)
class GroundedSystem:
    """The full nodal system with one node held at 0 V (its row and column replaced by identity).

    Used when there are no electrodes (TMS): cheaper than relabelling unknowns, and the
    potential keeps the mesh's node numbering.
    """

    matrix: sp.csr_matrix
    ground: int

    def rhs_from_nodal(self, nodal_rhs: np.ndarray) -> np.ndarray:
        b = np.array(nodal_rhs, dtype=float)
        b[self.ground] = 0.0
        return b

    def expand(self, reduced: np.ndarray) -> np.ndarray:
        return reduced


def grounded_system(stiffness: sp.csr_matrix, node: int = 0, *, inplace: bool = False) -> GroundedSystem:
    """System with only ``node`` held at 0 V (TMS: no electrodes, the potential floats).

    ``inplace=True`` overwrites ``stiffness`` (a canonical CSR matrix with a stored diagonal,
    as :func:`~stimsim.fem.assembly.assemble_stiffness` returns) instead of copying it:
    a single TMS run does not need the ungrounded matrix again, and a copy plus its temporaries
    would raise the memory peak (measured: docs/solver.md).
    """
    if inplace:
        a = stiffness
        a.data[a.indptr[node]:a.indptr[node + 1]] = 0.0
        a.data[a.indices == node] = 0.0
        diag = a.indptr[node] + np.searchsorted(a.indices[a.indptr[node]:a.indptr[node + 1]], node)
        a.data[diag] = 1.0
        return GroundedSystem(a, node)
    keep = np.ones(stiffness.shape[0])
    keep[node] = 0.0
    d = sp.diags(keep, format="csr")
    a = (d @ stiffness @ d).tocsr()
    a = a + sp.csr_matrix(([1.0], ([node], [node])), shape=a.shape)
    a.eliminate_zeros()
    return GroundedSystem(a, node)
