"""The head/sphere mesh as a plain frozen dataclass.

Coordinates are in millimetres (the SimNIBS / Gmsh file convention); geometric helpers
that feed formulas say their unit in the name (``volumes_m3``, ``nodes_m``).
Tags follow SimNIBS: volumes 1..N, surfaces = volume tag + 1000.
Node indices are 0-based everywhere inside stimsim (files are 1-based).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

_TET_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])  # outward for positive tets


@dataclass(frozen=True, eq=False)
class Mesh:
    """Tetrahedral mesh with tissue tags and optional surface triangles.

    Parameters
    ----------
    nodes : (n, 3) float64 array, mm
    tets : (m, 4) int array of 0-based node indices
    tet_tags : (m,) int array, tissue tag of each tetrahedron (1 WM, 2 GM, 3 CSF, ...)
    tris : (k, 3) int array of 0-based node indices (may be empty)
    tri_tags : (k,) int array, surface tags (volume tag + 1000 by convention)
    """

    nodes: np.ndarray
    tets: np.ndarray
    tet_tags: np.ndarray
    tris: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    tri_tags: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __post_init__(self):
        # normalise dtypes once so that every consumer can rely on them
        object.__setattr__(self, "nodes", np.ascontiguousarray(self.nodes, dtype=np.float64).reshape(-1, 3))
        object.__setattr__(self, "tets", np.ascontiguousarray(self.tets, dtype=np.int32).reshape(-1, 4))
        object.__setattr__(self, "tet_tags", np.ascontiguousarray(self.tet_tags, dtype=np.int32).ravel())
        object.__setattr__(self, "tris", np.ascontiguousarray(self.tris, dtype=np.int32).reshape(-1, 3))
        object.__setattr__(self, "tri_tags", np.ascontiguousarray(self.tri_tags, dtype=np.int32).ravel())
        if len(self.tet_tags) != len(self.tets):
            from ..errors import MeshError

            raise MeshError(f"tet_tags has {len(self.tet_tags)} entries but there are {len(self.tets)} tetrahedra")
        if len(self.tri_tags) != len(self.tris):
            from ..errors import MeshError

            raise MeshError(f"tri_tags has {len(self.tri_tags)} entries but there are {len(self.tris)} triangles")

    # ---- sizes -----------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_tets(self) -> int:
        return len(self.tets)

    @property
    def tissue_tags(self) -> np.ndarray:
        """Sorted unique volume tags."""
        return np.unique(self.tet_tags)

    def __repr__(self) -> str:
        return (
            f"<Mesh | {self.n_nodes} nodes, {self.n_tets} tets (tags {self.tissue_tags.tolist()}), "
            f"{len(self.tris)} triangles>"
        )

    # ---- geometry --------------------------------------------------------------
    @cached_property
    def signed_volumes_mm3(self) -> np.ndarray:
        """Signed tetrahedron volumes in mm³ (positive = right-handed node order)."""
        p = self.nodes[self.tets]
        d = p[:, 1:] - p[:, :1]
        return np.einsum("ij,ij->i", d[:, 0], np.cross(d[:, 1], d[:, 2])) / 6.0

    @property
    def volumes_mm3(self) -> np.ndarray:
        return np.abs(self.signed_volumes_mm3)

    @cached_property
    def centroids(self) -> np.ndarray:
        """Tetrahedron centroids in mm, (m, 3)."""
        return self.nodes[self.tets].mean(axis=1)

    @cached_property
    def boundary_faces(self) -> np.ndarray:
        """Exterior triangles of the tetrahedral volume, (f, 3) 0-based, oriented outward.

        A face is exterior when exactly one tetrahedron owns it.  Orientation is outward
        whatever the node order of the tetrahedra (inverted tets are flipped here).
        """
        faces, _, counts, _ = self._face_table
        return faces[counts == 1]

    @cached_property
    def _face_table(self):
        tets = self.tets.copy()
        neg = self.signed_volumes_mm3 < 0
        tets[neg] = tets[neg][:, [0, 2, 1, 3]]
        faces = tets[:, _TET_FACES].reshape(-1, 3)
        key = np.sort(faces, axis=1).astype(np.int64)
        n = np.int64(self.n_nodes)
        code = (key[:, 0] * n + key[:, 1]) * n + key[:, 2]
        order = np.argsort(code, kind="stable")
        sc = code[order]
        first = np.ones(len(sc), bool)
        first[1:] = sc[1:] != sc[:-1]
        group = np.cumsum(first) - 1
        counts_u = np.bincount(group)
        counts = np.empty(len(code), np.int64)
        counts[order] = counts_u[group]
        owner = np.repeat(np.arange(self.n_tets), 4)
        return faces, owner, counts, code

    @cached_property
    def boundary_nodes(self) -> np.ndarray:
        """Sorted indices of nodes on the exterior surface (the scalp for a head)."""
        return np.unique(self.boundary_faces)

    def boundary_node_normals(self) -> tuple[np.ndarray, np.ndarray]:
        """Exterior nodes and their area-weighted outward unit normals."""
        f = self.boundary_faces
        p = self.nodes[f]
        fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])  # 2 * area * normal
        nn = np.zeros_like(self.nodes)
        for k in range(3):
            np.add.at(nn, f[:, k], fn)
        idx = self.boundary_nodes
        n = nn[idx]
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return idx, n

    def triangle_owner_tets(self) -> np.ndarray:
        """For each surface triangle, the index of an adjacent tetrahedron (-1 if none).

        Where a triangle separates two tissues, the tetrahedron whose tag equals
        ``tri_tag - 1000`` is preferred (SimNIBS convention: a surface belongs to the
        tissue it encloses).
        """
        if len(self.tris) == 0:
            return np.zeros(0, np.int64)
        faces, owner, _, code = self._face_table
        n = np.int64(self.n_nodes)
        key = np.sort(self.tris, axis=1).astype(np.int64)
        tcode = (key[:, 0] * n + key[:, 1]) * n + key[:, 2]
        order = np.argsort(code, kind="stable")
        sc = code[order]
        lo = np.searchsorted(sc, tcode, side="left")
        hi = np.searchsorted(sc, tcode, side="right")
        result = np.full(len(self.tris), -1, np.int64)
        found = hi > lo
        # first candidate
        result[found] = owner[order[lo[found]]]
        # prefer the second candidate where it matches the enclosed-tissue convention
        two = found & (hi - lo >= 2)
        if np.any(two):
            cand2 = owner[order[np.minimum(lo + 1, len(sc) - 1)]]
            want = self.tri_tags - 1000
            better = two & (self.tet_tags[cand2] == want) & (self.tet_tags[result] != want)
            result[better] = cand2[better]
        return result

    # ---- derived meshes ---------------------------------------------------------
    def with_tris(self, tris: np.ndarray, tri_tags: np.ndarray) -> "Mesh":
        return replace(self, tris=tris, tri_tags=tri_tags)

    def with_tet_tags(self, tet_tags: np.ndarray) -> "Mesh":
        return replace(self, tet_tags=tet_tags)
