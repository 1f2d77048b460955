"""Where the coil sits: centre, handle direction, distance <-> the 4x4 coil-to-head matrix.

The matrix uses the same convention as SimNIBS's ``matsimnibs`` so users can move
positions between tools::

      head_point_mm = M[:3, :3] @ coil_point_mm + M[:3, 3]

    columns:  x = y × z  |  y = handle direction  |  z = into the head  |  coil centre (mm)

The coil centre is the centre of the coil's bottom face; it sits ``distance_mm`` above the
scalp point along the scalp's outward normal, so z is the inward normal there.

::

              y (handle)
              ^
              |      coil seen from above (z points away from you, into the head)
        +-----+-----+
        |  (  |  )  |  --> x
        +-----------+
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ProtocolError
from ..mesh.model import Mesh


@dataclass(frozen=True)
class CoilPlacement:
    """Coil centre on the scalp, handle direction and scalp-to-coil distance, plus the matrix."""

    matrix: np.ndarray  # (4, 4), mm
    scalp_point_mm: np.ndarray
    distance_mm: float

    @property
    def center_mm(self) -> np.ndarray:
        return self.matrix[:3, 3]

    @property
    def handle_direction(self) -> np.ndarray:
        return self.matrix[:3, 1]

    @property
    def normal_into_head(self) -> np.ndarray:
        return self.matrix[:3, 2]


def _scalp_normal(mesh: Mesh, point_mm, radius_mm: float = 10.0):
    nodes, normals = mesh.boundary_node_normals()
    tree = mesh.boundary_tree
    dist, i = tree.query(point_mm)
    near = tree.query_ball_point(mesh.nodes[nodes[i]], r=radius_mm)
    n = normals[near].sum(axis=0)
    return mesh.nodes[nodes[i]], n / np.linalg.norm(n), float(dist)


def scalp_depth(mesh: Mesh, points_mm: np.ndarray) -> np.ndarray:
    """Signed height (mm) of points above the scalp: along the outward normal of the nearest
    surface node, so negative means inside the head."""
    nodes, normals = mesh.boundary_node_normals()
    _, idx = mesh.boundary_tree.query(points_mm)
    return np.einsum("ij,ij->i", points_mm - mesh.nodes[nodes[idx]], normals[idx])


def place_coil(mesh: Mesh, center_mm, direction, distance_mm: float = 4.0, *,
               max_distance_mm: float = 30.0) -> CoilPlacement:
    """Placement from a scalp position (mm), a handle direction and a scalp-to-coil distance (mm).

    The centre is projected on the scalp (nearest surface node); z is the inward normal
    (smoothed over ~10 mm); y is ``direction`` projected on the tangent plane.
    """
    center_mm = np.asarray(center_mm, float)
    if distance_mm < 0:
        raise ProtocolError(f"placement.distance_mm: {distance_mm} mm is negative; the coil cannot sit in the scalp")
    scalp, n_out, d = _scalp_normal(mesh, center_mm)
    if d > max_distance_mm:
        raise ProtocolError(
            f"placement.center: {center_mm.tolist()} mm is {d:.1f} mm from the scalp (limit {max_distance_mm:g} mm); "
            "give a point on or near the scalp in the head's frame (mm)"
        )
    z = -n_out
    y = np.asarray(direction, float)
    if not np.all(np.isfinite(y)) or np.linalg.norm(y) == 0:
        raise ProtocolError(f"placement.direction: {y.tolist()} is not a direction")
    y = y / np.linalg.norm(y)
    y = y - y.dot(z) * z
    if np.linalg.norm(y) < 0.1:  # within ~6 degrees of the normal: surely a mistake
        raise ProtocolError(
            "placement.direction: the handle direction is (nearly) parallel to the scalp normal; "
            "give a direction along the scalp"
        )
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = x, y, z
    m[:3, 3] = scalp + distance_mm * n_out
    return CoilPlacement(m, scalp, float(distance_mm))


def placement_from_matrix(matrix, mesh: Mesh | None = None) -> CoilPlacement:
    """Validate a 4x4 coil-to-head matrix (orthonormal, right-handed) and recover scalp point/distance."""
    m = np.asarray(matrix, float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ProtocolError("placement.matrix: must be a finite 4x4 matrix (rows of 4 numbers)")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise ProtocolError("placement.matrix: the 3x3 block must be a rotation (orthonormal, right-handed)")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise ProtocolError("placement.matrix: the last row must be [0, 0, 0, 1]")
    scalp, distance = m[:3, 3].copy(), 0.0
    if mesh is not None:
        # walk along z from the coil centre to the scalp: nearest surface node on that ray
        nodes = mesh.nodes[mesh.boundary_nodes]
        rel = nodes - m[:3, 3]
        t = rel @ m[:3, 2]
        perp = np.linalg.norm(rel - t[:, None] * m[:3, 2], axis=1)
        cand = np.flatnonzero(t > -1e-9)
        if len(cand):
            k = cand[np.argmin(perp[cand] + 1e-3 * t[cand])]
            scalp, distance = nodes[k], float(t[k])
    return CoilPlacement(m, scalp, distance)
