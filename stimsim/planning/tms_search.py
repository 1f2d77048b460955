r"""Coil placement search by reciprocity: a million placements in minutes (design: docs/tms_search.md).

The ROI-mean E of a placement is linear in the coil's nodal dA/dt (three adjoint solves,
:meth:`stimsim.tms.TMSModel.target_functional`, give ``q`` with
``mean E_c = sum_n q[c, n] . dA/dt(r_n)``).  With the dipole formula for dA/dt and
``q . (m x d) = m . (d x q)`` this becomes a sum over the coil's dipoles,

.. math:: \bar E_c = \frac{\mu_0}{4\pi}\frac{dI}{dt}\sum_k \mathbf m_k\cdot\mathbf H_c(\mathbf r_k),
          \qquad \mathbf H_c(\mathbf r) = \sum_n \mathbf q_{cn}\times
          \frac{\mathbf r-\mathbf r_n}{|\mathbf r-\mathbf r_n|^3},

the Biot-Savart field of "effective currents" ``q`` at the mesh nodes (positions in m).  ``H``
is a property of the head and target only.  It is evaluated once on a regular grid covering
every point the coil's windings can occupy, and each placement then costs an interpolation at
its dipoles: the reciprocity idea behind the auxiliary dipole method (Gomez et al. 2021,
NeuroImage 228:117696, doi:10.1016/j.neuroimage.2020.117696), here with the grid in the head
frame so that one grid serves every position and orientation.  The best placements by the
interpolated objective are re-scored without interpolation (``q . dA/dt`` at the nodes, equal to
the FEM objective up to the adjoint solves' tolerance), and the best is reported.
:func:`effective_field` at a placement's dipoles gives the same value (the identity the tests check).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ProtocolError
from ..fem.primary import MU0

try:
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _effective_field_kernel(points, nodes, q, out):  # pragma: no cover - compiled
        # points (P, 3) m, nodes (3, n) m, q (9, n) [c*3 + j], out (P, 9): H_c (3 components each).
        # Structure-of-arrays inputs and scalar accumulators let LLVM vectorise the sum over nodes.
        n = nodes.shape[1]
        for i in numba.prange(points.shape[0]):
            x, y, z = points[i, 0], points[i, 1], points[i, 2]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = 0.0
            for j in range(n):
                rx = x - nodes[0, j]
                ry = y - nodes[1, j]
                rz = z - nodes[2, j]
                r2 = rx * rx + ry * ry + rz * rz
                inv3 = 1.0 / (r2 * math.sqrt(r2))
                rx *= inv3
                ry *= inv3
                rz *= inv3
                a0 += q[1, j] * rz - q[2, j] * ry
                a1 += q[2, j] * rx - q[0, j] * rz
                a2 += q[0, j] * ry - q[1, j] * rx
                a3 += q[4, j] * rz - q[5, j] * ry
                a4 += q[5, j] * rx - q[3, j] * rz
                a5 += q[3, j] * ry - q[4, j] * rx
                a6 += q[7, j] * rz - q[8, j] * ry
                a7 += q[8, j] * rx - q[6, j] * rz
                a8 += q[6, j] * ry - q[7, j] * rx
            out[i, 0], out[i, 1], out[i, 2] = a0, a1, a2
            out[i, 3], out[i, 4], out[i, 5] = a3, a4, a5
            out[i, 6], out[i, 7], out[i, 8] = a6, a7, a8

    @numba.njit(parallel=True, cache=True)
    def _grid_mask_kernel(origin, step, shape, centers, axes, radius, zlo, zhi, mask):  # pragma: no cover
        # a grid point is needed if some coil frame (centre, z axis) has it within the coil's
        # cylinder: lateral distance <= radius and height along z in [zlo, zhi] (mm)
        nx, ny, nz = shape[0], shape[1], shape[2]
        for ix in numba.prange(nx):
            for iy in range(ny):
                for iz in range(nz):
                    gx = origin[0] + ix * step
                    gy = origin[1] + iy * step
                    gz = origin[2] + iz * step
                    for p in range(centers.shape[0]):
                        dx = gx - centers[p, 0]
                        dy = gy - centers[p, 1]
                        dz = gz - centers[p, 2]
                        h = dx * axes[p, 0] + dy * axes[p, 1] + dz * axes[p, 2]
                        if h < zlo or h > zhi:
                            continue
                        lat2 = dx * dx + dy * dy + dz * dz - h * h
                        if lat2 <= radius * radius:
                            mask[ix, iy, iz] = True
                            break

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _score_kernel(grid, origin, step, frames, cos_t, sin_t, dpos, dmom, direction, signed, out):  # pragma: no cover
        # grid (nx, ny, nz, 9) float32; frames (P, 4, 4) coil-to-head at angle 0 (mm);
        # dpos (K, 3) coil frame mm, dmom (K, 3); out (P, A): |mean E| or mean E . direction
        nx, ny, nz = grid.shape[0], grid.shape[1], grid.shape[2]
        n_angles = cos_t.shape[0]
        inv = 1.0 / step
        for t in numba.prange(frames.shape[0] * n_angles):
            p = t // n_angles
            a = t % n_angles
            c, s = cos_t[a], sin_t[a]
            # rotation of the coil frame about its z axis by the angle: columns x', y', z
            r = np.empty((3, 3))
            for i in range(3):
                r[i, 0] = c * frames[p, i, 0] + s * frames[p, i, 1]
                r[i, 1] = -s * frames[p, i, 0] + c * frames[p, i, 1]
                r[i, 2] = frames[p, i, 2]
            e0 = 0.0
            e1 = 0.0
            e2 = 0.0
            for k in range(dpos.shape[0]):
                fx = (r[0, 0] * dpos[k, 0] + r[0, 1] * dpos[k, 1] + r[0, 2] * dpos[k, 2] + frames[p, 0, 3]
                      - origin[0]) * inv
                fy = (r[1, 0] * dpos[k, 0] + r[1, 1] * dpos[k, 1] + r[1, 2] * dpos[k, 2] + frames[p, 1, 3]
                      - origin[1]) * inv
                fz = (r[2, 0] * dpos[k, 0] + r[2, 1] * dpos[k, 1] + r[2, 2] * dpos[k, 2] + frames[p, 2, 3]
                      - origin[2]) * inv
                ix = min(max(int(math.floor(fx)), 0), nx - 2)
                iy = min(max(int(math.floor(fy)), 0), ny - 2)
                iz = min(max(int(math.floor(fz)), 0), nz - 2)
                wx, wy, wz = fx - ix, fy - iy, fz - iz
                mx = r[0, 0] * dmom[k, 0] + r[0, 1] * dmom[k, 1] + r[0, 2] * dmom[k, 2]
                my = r[1, 0] * dmom[k, 0] + r[1, 1] * dmom[k, 1] + r[1, 2] * dmom[k, 2]
                mz = r[2, 0] * dmom[k, 0] + r[2, 1] * dmom[k, 1] + r[2, 2] * dmom[k, 2]
                h = np.zeros(9)
                for cx in range(2):
                    w1 = wx if cx else 1.0 - wx
                    for cy in range(2):
                        w2 = w1 * (wy if cy else 1.0 - wy)
                        for cz in range(2):
                            w = w2 * (wz if cz else 1.0 - wz)
                            for j in range(9):
                                h[j] += w * grid[ix + cx, iy + cy, iz + cz, j]
                e0 += mx * h[0] + my * h[1] + mz * h[2]
                e1 += mx * h[3] + my * h[4] + mz * h[5]
                e2 += mx * h[6] + my * h[7] + mz * h[8]
            if signed:
                out[p, a] = e0 * direction[0] + e1 * direction[1] + e2 * direction[2]
            else:
                out[p, a] = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)

    _COMPILED = True
except Exception:  # pragma: no cover - numba is a dependency; this guards broken installs
    _COMPILED = False


def effective_field(q: np.ndarray, nodes_mm: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """``H_c`` (1/m², shape (P, 3, 3): point, ROI-mean component c, vector) at points (mm) from the
    adjoint map ``q`` (3, n, 3) of :meth:`~stimsim.tms.TMSModel.target_functional` (direct sum)."""
    if not _COMPILED:
        raise ProtocolError("the TMS reciprocity search needs numba (pip install numba)")
    qn = np.ascontiguousarray(np.transpose(q, (0, 2, 1)).reshape(9, -1), float)
    out = np.empty((len(points_mm), 9))
    _effective_field_kernel(np.ascontiguousarray(points_mm, float) * 1e-3,
                            np.ascontiguousarray(np.asarray(nodes_mm, float).T) * 1e-3, qn, out)
    return out.reshape(-1, 3, 3)


def exact_mean_e(h_at_dipoles: np.ndarray, moments_m2: np.ndarray, didt_A_per_s: float) -> np.ndarray:
    """ROI-mean E vector (V/m) from ``H`` at a placement's dipoles (P, 3, 3) and their head-frame moments."""
    return MU0 / (4 * np.pi) * didt_A_per_s * np.einsum("kj,kcj->c", moments_m2, h_at_dipoles)


@dataclass(frozen=True)
class ScalpPositions:
    """Coil centres for a search: scalp points, their coil frames at angle 0 and the tangent-plane grid."""

    frames: np.ndarray  # (P, 4, 4) coil-to-head matrices, handle along the grid's first axis
    scalp_mm: np.ndarray  # (P, 3)
    plane_mm: np.ndarray  # (P, 2) offsets in the tangent plane at the target's scalp point
    axes: np.ndarray  # (2, 3) the plane's unit axes u, v (angle 0 = handle along u)
    origin_mm: np.ndarray  # the target's scalp point


def plane_grid(radius_mm: float, step_mm: float) -> np.ndarray:
    """Offsets (mm, (P, 2)) of the coil centres in the tangent plane: a ``step_mm`` grid within ``radius_mm``."""
    steps = np.arange(-radius_mm, radius_mm + 1e-9, step_mm)
    a, b = np.meshgrid(steps, steps, indexing="ij")
    keep = a**2 + b**2 <= radius_mm**2 + 1e-9
    return np.column_stack([a[keep], b[keep]])


def scalp_positions(mesh, target_mm, radius_mm: float, step_mm: float, distance_mm: float) -> ScalpPositions:
    """Coil centres on a ``step_mm`` grid in the scalp's tangent plane at the target, within ``radius_mm``.

    Each grid point is carried along the target's scalp normal onto the scalp surface (a ray
    cast on the exterior triangles, so centres move continuously however coarse the mesh), and
    its coil frame's z axis is the inward scalp normal there: nodal normals smoothed over 10 mm,
    as :func:`~stimsim.coils.place_coil` uses, interpolated across the triangle hit.
    """
    from scipy.spatial import cKDTree

    nodes, normals = mesh.boundary_node_normals()
    faces = mesh.outer_boundary_faces  # the scalp: not the walls of an internal cavity
    outer = np.isin(nodes, faces)
    nodes, normals = nodes[outer], normals[outer]
    target = np.asarray(target_mm, float)
    k = int(np.argmin(np.linalg.norm(mesh.nodes[nodes] - target, axis=1)))
    tree = cKDTree(mesh.nodes[nodes])
    smooth = _smoothed_normals(tree, mesh.nodes[nodes], normals, 10.0)
    origin, n0 = mesh.nodes[nodes[k]], smooth[k]
    u = np.cross(n0, [0.0, 0.0, 1.0] if abs(n0[2]) < 0.9 else [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(n0, u)
    plane = plane_grid(radius_mm, step_mm)
    guess = origin + plane[:, :1] * u + plane[:, 1:] * v
    scalp, outward = _cast_on_scalp(mesh, faces, tree, nodes, smooth, guess, n0)
    z = -outward
    y = u - (z @ u)[:, None] * z  # handle along u at angle 0, in each position's tangent plane
    bad = np.linalg.norm(y, axis=1) < 0.1
    y[bad] = v - (z[bad] @ v)[:, None] * z[bad]
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x = np.cross(y, z)
    frames = np.zeros((len(scalp), 4, 4))
    frames[:, :3, 0], frames[:, :3, 1], frames[:, :3, 2] = x, y, z
    frames[:, :3, 3] = scalp + distance_mm * outward
    frames[:, 3, 3] = 1.0
    return ScalpPositions(frames, scalp, plane, np.array([u, v]), origin)


def _smoothed_normals(tree, points, normals, radius_mm):
    """Each point's outward normal: the sum of the normals within ``radius_mm``, normalised (one sparse
    product over the neighbour lists)."""
    import scipy.sparse as sp

    near = tree.query_ball_point(points, r=radius_mm)
    counts = np.fromiter((len(nb) for nb in near), np.int64, len(near))
    adjacency = sp.csr_matrix((np.ones(counts.sum()), np.concatenate(near), np.concatenate([[0], np.cumsum(counts)])),
                              shape=(len(points), len(normals)))
    out = adjacency @ normals
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _cast_on_scalp(mesh, faces, tree, nodes, smooth, points, direction):
    """Where the lines through ``points`` along ``direction`` meet the surface ``faces`` (the hit nearest
    each point), and the smoothed normal interpolated there.  The faces around each point's nearest
    surface nodes are tried first, more of them for lines that miss; the nearest node where none hits."""
    local = np.searchsorted(nodes, faces)  # face corners as indices into ``nodes``
    # the faces of each node, in face order, padded with -1: a (nodes x most faces per node) table
    corner = local.ravel()
    order = np.argsort(corner, kind="stable")
    counts = np.bincount(corner, minlength=len(nodes))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(corner)) - np.repeat(start, counts)
    table = np.full((len(nodes), counts.max()), -1)
    table[corner[order], slot] = order // 3
    p = mesh.nodes[nodes]
    hit = p[tree.query(points)[1]].copy()
    normal = smooth[tree.query(points)[1]].copy()
    todo = np.arange(len(points))
    for k in (24, 256, 2048):
        k = min(k, len(nodes))
        _, near = tree.query(points[todo], k=k)
        found, h, n = _ray_hits(p, local, smooth, table[near.reshape(len(todo), -1)].reshape(len(todo), -1),
                                points[todo], direction)
        hit[todo[found]], normal[todo[found]] = h[found], n[found]
        todo = todo[~found]
        if len(todo) == 0 or k == len(nodes):
            break
    return hit, normal / np.linalg.norm(normal, axis=1, keepdims=True)


def _ray_hits(p, faces, smooth, cand, points, direction):
    """Moller-Trumbore, vectorised over the points: the hit nearest each point among its candidate faces."""
    best_t = np.full(len(points), np.inf)
    hit = np.zeros((len(points), 3))
    bary = np.zeros((len(points), 3))
    tri_of = np.full(len(points), -1)
    for j in range(cand.shape[1]):
        f = cand[:, j]
        ok = f >= 0
        tri = faces[np.where(ok, f, 0)]
        a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
        e1, e2 = b - a, c - a
        h = np.cross(direction, e2)
        det = np.einsum("ij,ij->i", e1, h)
        ok &= np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = points - a
        bu = inv * np.einsum("ij,ij->i", s, h)
        qv = np.cross(s, e1)
        bv = inv * (qv @ direction)
        t = inv * np.einsum("ij,ij->i", e2, qv)
        ok &= (bu >= -1e-9) & (bv >= -1e-9) & (bu + bv <= 1 + 1e-9) & (np.abs(t) < np.abs(best_t))
        best_t[ok] = t[ok]
        hit[ok] = points[ok] + t[ok, None] * direction
        bary[ok] = np.column_stack([1 - bu - bv, bu, bv])[ok]
        tri_of[ok] = f[ok]
    found = tri_of >= 0
    normal = np.zeros_like(points)
    normal[found] = np.einsum("pk,pkj->pj", bary[found], smooth[faces[tri_of[found]]])
    return found, hit, normal


@dataclass(frozen=True)
class EffectiveFieldGrid:
    """``H`` (float32, (nx, ny, nz, 9)) on a regular grid (origin and step in mm) over the coil's reach."""

    origin_mm: np.ndarray
    step_mm: float
    values: np.ndarray
    n_points: int  # grid points evaluated (inside the coil's reach)
    seconds: float


def effective_field_grid(q, nodes_mm, frames, coil_positions_mm, step_mm: float = 2.0) -> EffectiveFieldGrid:
    """``H`` on a grid covering every point a coil's dipoles reach at any centre in ``frames`` and any
    rotation about the coil's z axis (a cylinder per centre, one cell of margin); zero elsewhere."""
    t = time.perf_counter()
    lateral = float(np.linalg.norm(coil_positions_mm[:, :2], axis=1).max())
    zlo, zhi = float(coil_positions_mm[:, 2].min()), float(coil_positions_mm[:, 2].max())
    margin = 2.0 * step_mm
    # the grid's box: the cylinders' extreme points (rims at both heights) around every centre
    phi = np.linspace(0, 2 * np.pi, 73)
    rim = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=1) * lateral
    ends = np.concatenate([rim + [0, 0, zlo], rim + [0, 0, zhi]])
    pts = np.einsum("pij,kj->pki", frames[:, :3, :3], ends) + frames[:, None, :3, 3]
    lo = pts.reshape(-1, 3).min(axis=0) - margin
    hi = pts.reshape(-1, 3).max(axis=0) + margin
    shape = np.maximum(np.ceil((hi - lo) / step_mm).astype(np.int64) + 1, 2)
    mask = np.zeros(tuple(shape), dtype=np.bool_)
    _grid_mask_kernel(lo, float(step_mm), shape, np.ascontiguousarray(frames[:, :3, 3]),
                      np.ascontiguousarray(frames[:, :3, 2]), lateral + margin, zlo - margin, zhi + margin, mask)
    idx = np.argwhere(mask)
    values = np.zeros(tuple(shape) + (9,), np.float32)
    points = lo + idx * step_mm
    values[tuple(idx.T)] = effective_field(q, nodes_mm, points).reshape(-1, 9)
    return EffectiveFieldGrid(lo, float(step_mm), values, len(idx), time.perf_counter() - t)


def score_placements(grid: EffectiveFieldGrid, frames, angles_rad, coil, didt_A_per_s: float,
                     direction=None) -> np.ndarray:
    """Objective (V/m) of every centre x angle, (P, A) float32: |mean E| in the ROI, or mean E . direction.

    Angle t turns the handle from the frame's y axis towards its -x axis (about z, into the head)."""
    dpos = np.ascontiguousarray(coil.positions_m * 1e3, np.float64)
    dmom = np.ascontiguousarray(coil.moments_m2, np.float64)
    d = np.zeros(3) if direction is None else np.asarray(direction, float)
    out = np.empty((len(frames), len(angles_rad)), np.float32)
    _score_kernel(grid.values, grid.origin_mm, grid.step_mm, np.ascontiguousarray(frames, float),
                  np.cos(angles_rad), np.sin(angles_rad), dpos, dmom, d, direction is not None, out)
    return out * np.float32(MU0 / (4 * np.pi) * didt_A_per_s)


def rotated_frame(frame: np.ndarray, angle_rad: float) -> np.ndarray:
    """The coil frame turned by ``angle_rad`` about its z axis (as :func:`score_placements` does)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    out = frame.copy()
    out[:3, 0] = c * frame[:3, 0] + s * frame[:3, 1]
    out[:3, 1] = -s * frame[:3, 0] + c * frame[:3, 1]
    return out


#: a coil given as an A-field grid has no dipoles for the effective field: each placement is scored at
#: every node (~20 ms on Colin27), so a search is capped at this many placements
MAX_GRID_COIL_PLACEMENTS = 20_000


@dataclass(frozen=True)
class CoilSearchResult:
    """The best coil placement of a search, and the search itself.

    ``objective_V_per_m`` is the exact reciprocity objective at the best placement (equal to
    the FEM value up to the adjoint solves' tolerance); ``fem_objective_V_per_m`` the same
    quantity from a full FEM solve there; ``objective_map`` the interpolated objective of every
    evaluated placement (centre x angle).
    """

    matrix: np.ndarray
    center_mm: np.ndarray  # scalp point under the coil centre
    direction: np.ndarray  # handle direction
    objective_V_per_m: float
    roi_mean_magnE_V_per_m: float  # mean |E| in the ROI, full solve at the best placement
    objective: str  # "|mean E|" or "mean E . d"
    fem_objective_V_per_m: float = float("nan")
    positions: ScalpPositions | None = None
    angles_rad: np.ndarray | None = None  # handle angles (turn about the coil's z axis)
    objective_map: np.ndarray | None = None  # (positions, angles) float32, interpolated
    roi_elements: int = 0
    timings_s: dict = field(default_factory=dict)
    grid_points: int = 0
    best_interpolated_V_per_m: float = float("nan")
    rejected_inside: int = 0  # placements among the best that put the coil's windings inside the head

    @property
    def evaluated(self) -> int:
        return 0 if self.objective_map is None else int(self.objective_map.size)

    def summary(self) -> dict:
        """JSON-ready facts of the search (no per-placement arrays)."""
        return {"objective": self.objective, "objective_V_per_m": self.objective_V_per_m,
                "fem_objective_V_per_m": self.fem_objective_V_per_m,
                "interpolated_objective_V_per_m": self.best_interpolated_V_per_m,
                "roi_mean_magnE_V_per_m": self.roi_mean_magnE_V_per_m, "roi_elements": self.roi_elements,
                "center_mm": np.round(self.center_mm, 3).tolist(), "direction": np.round(self.direction, 6).tolist(),
                "matrix": np.round(self.matrix, 6).tolist(), "evaluated": self.evaluated,
                "positions": 0 if self.positions is None else len(self.positions.frames),
                "angles": 0 if self.angles_rad is None else len(self.angles_rad),
                "field_grid_points": self.grid_points, "rejected_inside": self.rejected_inside,
                "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()}}


def search_tms(model, target_mm, *, grid_radius_mm: float = 30.0, grid_step_mm: float = 1.0, angles: int = 360,
               roi_radius_mm: float = 5.0, distance_mm: float = 4.0, tags=None, direction=None,
               field_step_mm: float = 2.0, refine: int = 32, progress: bool = True) -> CoilSearchResult:
    """Best coil centre x handle direction for a target, by reciprocity (module docstring).

    Centres: a ``grid_step_mm`` grid in the scalp's tangent plane at the target, within
    ``grid_radius_mm``, projected on the scalp; ``angles`` handle directions over 360 degrees.
    Maximises |mean E| in the ROI (elements within ``roi_radius_mm`` of the target, of ``tags``),
    or with ``direction`` (a 3-vector, or "normal": into the head) the mean E along it.
    ``field_step_mm``: spacing of the grid that holds the effective field (2 mm: interpolation
    error ~2e-5 of the objective on the sphere and on Colin27; measured: docs/tms_search.md).
    The ``refine`` best placements by the interpolated objective are scored exactly, and the best
    of them is solved in full once (``fem_objective_V_per_m``, ``roi_mean_magnE_V_per_m``).
    A coil given as an A-field grid (no dipoles) is scored exactly at every node instead, placement
    by placement, up to :data:`MAX_GRID_COIL_PLACEMENTS`.
    """
    from .optimize import roi_elements, target_direction

    for name, value in (("grid_radius_mm", grid_radius_mm), ("grid_step_mm", grid_step_mm),
                        ("field_step_mm", field_step_mm), ("roi_radius_mm", roi_radius_mm)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)) or value < 0 or (
                value == 0 and name != "grid_radius_mm"):
            raise ProtocolError(f"{name}: {value!r} must be a finite number > 0")
    if not isinstance(angles, (int, np.integer)) or angles < 1:
        raise ProtocolError(f"angles: {angles!r} must be an integer >= 1 (handle directions over 360 degrees)")
    timings = {}
    t = time.perf_counter()
    mesh = model.mesh
    idx = roi_elements(mesh, target_mm, roi_radius_mm, tags)
    d_target = None if direction is None else target_direction(mesh, target_mm, direction)
    q = model.target_functional(idx)
    timings["adjoint_s"] = time.perf_counter() - t
    t = time.perf_counter()
    positions = scalp_positions(mesh, target_mm, grid_radius_mm, grid_step_mm, distance_mm)
    thetas = np.arange(angles) * (2 * np.pi / angles)
    frames = positions.frames
    dipoles = hasattr(model.coil, "positions_m")  # an A-field grid coil (.nii) has none

    def exact(matrix):
        # the objective by reciprocity, without interpolation: q . dA/dt at the nodes (dA/dt summed in
        # float32, 1e-7: 3.5x cheaper on Colin27 than summing H directly at 2,712 dipoles; any coil)
        mean_e = np.einsum("cnk,nk->c", q, model.coil.dadt(mesh.nodes, matrix, model.didt, precision="fast"))
        return float(np.linalg.norm(mean_e) if d_target is None else mean_e @ d_target)

    n_placements = len(frames) * angles
    if not dipoles and n_placements > MAX_GRID_COIL_PLACEMENTS:
        raise ProtocolError(
            f"coil {model.coil.name!r} is an A-field grid, not dipoles: each placement costs a field evaluation "
            f"at every node, and {n_placements:,} placements were asked for (limit {MAX_GRID_COIL_PLACEMENTS:,}); "
            "use a larger grid step, a smaller radius or fewer angles (e.g. --grid-step 2 --grid-radius 20 "
            "--angles 36), or a dipole (.ccd) model of the coil")
    grid = None
    if dipoles:
        grid = effective_field_grid(q, mesh.nodes, frames, model.coil.positions_m * 1e3, field_step_mm)
    timings["field_grid_s"] = time.perf_counter() - t
    t = time.perf_counter()
    chunk = max(1, 20000 // angles) if dipoles else 1
    parts = range(0, len(frames), chunk)
    if progress:
        from rich.progress import track

        parts = track(parts, description=f"TMS search ({n_placements:,} placements)", transient=True)
    if dipoles:
        scores = np.concatenate([score_placements(grid, frames[s:s + chunk], thetas, model.coil, model.didt,
                                                  d_target) for s in parts])
    else:
        import logging

        from .._logging import logger

        # a grid coil warns when a placement leaves head nodes outside its grid: once (at the full solve
        # of the best placement below), not once per searched placement
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            scores = np.array([[exact(rotated_frame(frames[s], th)) for th in thetas] for s in parts], np.float32)
        finally:
            logger.setLevel(level)
    timings["score_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # the best by interpolation, re-scored exactly (for a grid coil the scores are exact already);
    # placements whose windings would cut into the head are passed over, down the ranking
    scores = np.nan_to_num(scores, nan=-np.inf)
    order = np.argsort(scores, axis=None)[::-1][:20 * max(1, refine)]
    best, inside, scored = None, 0, 0
    for f in order:
        if scored == max(1, refine):
            break
        p, a = np.unravel_index(f, scores.shape)
        matrix = rotated_frame(frames[p], thetas[a])
        try:  # a coil that would cut into the head (a concave scalp, a curved coil) is no candidate
            model.coil.check_outside(mesh, matrix)
        except ProtocolError:
            inside += 1
            continue
        scored += 1
        value = exact(matrix)
        if best is None or value > best[0]:
            best = (value, p, a, matrix)
    flat = order
    if best is None:
        raise ProtocolError(f"every one of the {len(flat)} best placements puts the coil's windings inside the head; "
                            "increase the scalp distance or search elsewhere")
    value, p, a, matrix = best
    timings["refine_s"] = time.perf_counter() - t
    t = time.perf_counter()
    e = model.efield(matrix, elements=idx)
    w = mesh.volumes_mm3[idx]
    fem_mean = np.average(e, axis=0, weights=w)
    fem_value = float(np.linalg.norm(fem_mean) if d_target is None else fem_mean @ d_target)
    roi_mean = float(np.average(np.linalg.norm(e, axis=1), weights=w))
    timings["full_solve_s"] = time.perf_counter() - t
    objective = "|mean E|" if d_target is None else f"mean E . {np.round(d_target, 4).tolist()}"
    return CoilSearchResult(matrix, positions.scalp_mm[p], matrix[:3, 1].copy(), value, roi_mean, objective,
                            fem_value, positions, thetas, scores, len(idx), timings, 0 if grid is None else grid.n_points,
                            float(scores[p, a]), inside)


def plot_hotspot(result: CoilSearchResult, path, *, title: str | None = None) -> None:
    """The "hot spot" map: the best objective over handle directions at each coil centre, in the
    scalp's tangent plane at the target, with the best placement's handle drawn; a PNG at ``path``."""
    # a Figure of its own (no pyplot): the caller's matplotlib backend and figures are left alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.tri import Triangulation

    pos = result.positions
    best_per_centre = result.objective_map.max(axis=1)
    fig = Figure(figsize=(6.4, 5.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    uv = pos.plane_mm
    if len(uv) >= 3 and np.linalg.matrix_rank(uv - uv.mean(axis=0)) == 2:
        art = ax.tripcolor(Triangulation(uv[:, 0], uv[:, 1]), best_per_centre, shading="gouraud", cmap="viridis")
    else:
        art = ax.scatter(uv[:, 0], uv[:, 1], c=best_per_centre, cmap="viridis", s=40)
    fig.colorbar(art, ax=ax, label=f"best {result.objective} over handle directions (V/m)")
    rel = result.center_mm - pos.origin_mm
    b = np.array([rel @ pos.axes[0], rel @ pos.axes[1]])
    h = np.array([result.direction @ pos.axes[0], result.direction @ pos.axes[1]])
    scale = 0.25 * max(float(np.ptp(uv[:, 0])) if len(uv) > 1 else 10.0, 10.0)
    ax.annotate("", xy=b + scale * h / max(np.linalg.norm(h), 1e-9), xytext=b,
                arrowprops=dict(arrowstyle="->", color="red", lw=2))
    ax.plot(*b, "o", color="red", label=f"best: {result.objective_V_per_m:.3g} V/m (handle: arrow)")
    ax.plot(0, 0, "P", color="white", mec="black", ms=11, label="above the target")
    ax.set_xlabel("u (mm, tangent plane at the target)")
    ax.set_ylabel("v (mm)")
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    ax.set_title(title or f"TMS hot spot: {result.evaluated:,} placements")
    fig.tight_layout()
    from .. import __version__
    from ..outputs import atomic_file

    with atomic_file(path, suffix=".png") as tmp:  # marked as stimsim's (PNG Software text): a rerun may replace it
        fig.savefig(tmp, format="png", metadata={"Software": f"stimsim {__version__}"})
