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

TET_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])  # outward for positive tets


def face_codes(a: np.ndarray, b: np.ndarray, c: np.ndarray, n: np.int64) -> np.ndarray:
    """Order-independent int64 key of triangles (a, b, c): sorted triple packed in base n."""
    lo = np.minimum(np.minimum(a, b), c).astype(np.int64)
    hi = np.maximum(np.maximum(a, b), c).astype(np.int64)
    mid = a.astype(np.int64) + b + c - lo - hi
    return (lo * n + mid) * n + hi


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
        out = np.empty(self.n_tets)
        cols = [np.ascontiguousarray(self.nodes[:, k]) for k in range(3)]
        chunk = 1 << 17  # bounded temporaries; contiguous per-component gathers are fast
        for s in range(0, self.n_tets, chunk):
            t = self.tets[s:s + chunk]
            x, y, z = (c[t] for c in cols)
            a = (x[:, 1] - x[:, 0], y[:, 1] - y[:, 0], z[:, 1] - z[:, 0])
            b = (x[:, 2] - x[:, 0], y[:, 2] - y[:, 0], z[:, 2] - z[:, 0])
            c = (x[:, 3] - x[:, 0], y[:, 3] - y[:, 0], z[:, 3] - z[:, 0])
            out[s:s + chunk] = (a[0] * (b[1] * c[2] - b[2] * c[1]) + a[1] * (b[2] * c[0] - b[0] * c[2])
                                + a[2] * (b[0] * c[1] - b[1] * c[0])) / 6.0
        return out

    @property
    def volumes_mm3(self) -> np.ndarray:
        return np.abs(self.signed_volumes_mm3)

    @cached_property
    def centroids(self) -> np.ndarray:
        """Tetrahedron centroids in mm, (m, 3)."""
        out = np.empty((self.n_tets, 3))
        for k in range(3):
            out[:, k] = np.ascontiguousarray(self.nodes[:, k])[self.tets].mean(axis=1)
        return out

    def _sortedface_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every tetrahedron face packed into one int64 (its sorted node triple), sorted.

        Returns ``(sorted_codes, order)`` where ``order[i] = 4 * tet + local_face``.  Nothing
        here is cached: the arrays are 4 x n_tets long and only needed briefly.
        """
        n = np.int64(self.n_nodes)
        t = self.tets
        code = np.empty((self.n_tets, 4), np.int64)
        for k, (i, j, l) in enumerate(TET_FACES):
            code[:, k] = face_codes(t[:, i], t[:, j], t[:, l], n)
        code = code.ravel()
        order = np.argsort(code)
        return code[order], order

    @property
    def boundary_faces(self) -> np.ndarray:
        """Exterior triangles of the tetrahedral volume, (f, 3) 0-based, oriented outward.

        A face is exterior when exactly one tetrahedron owns it.  Orientation is outward
        whatever the node order of the tetrahedra (inverted tets are flipped here).
        """
        return self._boundary[0]

    @property
    def boundary_face_tets(self) -> np.ndarray:
        """Index of the tetrahedron that owns each of :attr:`boundary_faces`."""
        return self._boundary[1]

    @cached_property
    def _boundary(self):
        sc, order = self._sortedface_codes()
        single = np.ones(len(sc), bool)
        same = sc[1:] == sc[:-1]
        single[1:] &= ~same
        single[:-1] &= ~same
        idx = order[single]
        tet, local = idx // 4, idx % 4
        t = self.tets[tet]
        neg = self.signed_volumes_mm3[tet] < 0
        t[neg] = t[neg][:, [0, 2, 1, 3]]
        return np.ascontiguousarray(t[np.arange(len(t))[:, None], TET_FACES[local]]), tet

    def _adopt_boundary(self, faces: np.ndarray, face_tets: np.ndarray) -> None:
        """Take :attr:`boundary_faces` / :attr:`boundary_face_tets` computed earlier for the same
        tetrahedra (a parsed copy, :mod:`stimsim.mesh.read_cache`); ValueError when they cannot be."""
        faces = np.ascontiguousarray(faces, dtype=np.int32)
        face_tets = np.ascontiguousarray(face_tets, dtype=np.int64)
        if (faces.ndim != 2 or faces.shape[1] != 3 or face_tets.shape != (len(faces),)
                or (len(faces) and (faces.min() < 0 or faces.max() >= self.n_nodes
                                    or face_tets.min() < 0 or face_tets.max() >= self.n_tets))):
            raise ValueError("stored boundary does not fit this mesh")
        self.__dict__["_boundary"] = (faces, face_tets)

    @cached_property
    def boundary_nodes(self) -> np.ndarray:
        """Sorted indices of nodes on the exterior surface (the scalp for a head)."""
        return np.unique(self.boundary_faces)

    @cached_property
    def _boundary_normals(self) -> np.ndarray:
        f = self.boundary_faces
        p = self.nodes[f]
        fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])  # 2 * area * normal
        idx = self.boundary_nodes
        nn = np.empty((len(idx), 3))
        local = np.searchsorted(idx, f)
        for d in range(3):
            nn[:, d] = np.bincount(local.ravel(), weights=np.repeat(fn[:, d], 3), minlength=len(idx))
        nn /= np.linalg.norm(nn, axis=1, keepdims=True)
        return nn

    @cached_property
    def outer_boundary_faces(self) -> np.ndarray:
        """The exterior triangles of the outer surface (a head's scalp): the connected piece of
        :attr:`boundary_faces` with the largest area, so the walls of an internal cavity (unmeshed
        air) or a loose fragment are left out."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        f = self.boundary_faces
        if len(f) == 0:
            return f
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(self.n_nodes,) * 2)
        _, label = connected_components(graph, directed=False)
        p = self.nodes[f]
        area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
        face_label = label[f[:, 0]]
        totals = np.bincount(face_label, weights=area)
        return f[face_label == int(np.argmax(totals))]

    @cached_property
    def boundary_tree(self):
        """A k-d tree (scipy ``cKDTree``) of the exterior nodes, in :attr:`boundary_nodes` order: built once
        per mesh for the coil placement and scalp-depth queries of many placements."""
        from scipy.spatial import cKDTree

        return cKDTree(self.nodes[self.boundary_nodes])

    def boundary_node_normals(self) -> tuple[np.ndarray, np.ndarray]:
        """Exterior nodes and their area-weighted outward unit normals."""
        return self.boundary_nodes, self._boundary_normals

    def triangle_owner_tets(self) -> np.ndarray:
        """For each surface triangle, the index of an adjacent tetrahedron (-1 if none).

        Where a triangle separates two tissues, the tetrahedron whose tag equals
        ``tri_tag - 1000`` is preferred (SimNIBS convention: a surface belongs to the
        tissue it encloses).  Cached: every write of element data needs it.
        """
        return self._triangle_owner

    @cached_property
    def _triangle_owner(self) -> np.ndarray:
        if len(self.tris) == 0:
            return np.zeros(0, np.int64)
        n = np.int64(self.n_nodes)

        # look tet faces up among the (few) triangles: no sort of all 4m faces needed, and
        # only tets with at least 3 nodes on triangles can own one
        tcode = face_codes(self.tris[:, 0], self.tris[:, 1], self.tris[:, 2], n)
        torder = np.argsort(tcode)
        tsorted = tcode[torder]
        on_tri = np.zeros(self.n_nodes, np.int8)
        on_tri[self.tris.ravel()] = 1
        cand = np.flatnonzero(on_tri[self.tets].sum(axis=1, dtype=np.int8) >= 3)
        t = self.tets[cand]
        fcode = np.empty((len(cand), 4), np.int64)
        for k, (i, j, l) in enumerate(TET_FACES):
            fcode[:, k] = face_codes(t[:, i], t[:, j], t[:, l], n)
        fcode = fcode.ravel()
        pos = np.minimum(np.searchsorted(tsorted, fcode), len(tsorted) - 1)
        hit = np.flatnonzero(tsorted[pos] == fcode)
        tri = torder[pos[hit]]
        tet = cand[hit // 4]
        result = np.full(len(self.tris), -1, np.int64)
        result[tri] = tet
        # where a triangle has two tets, prefer the one of the tissue it encloses (tag - 1000)
        want = self.tet_tags[tet] == self.tri_tags[tri] - 1000
        result[tri[want]] = tet[want]
        return result

    # ---- derived meshes ---------------------------------------------------------
    def with_tris(self, tris: np.ndarray, tri_tags: np.ndarray) -> "Mesh":
        return replace(self, tris=tris, tri_tags=tri_tags)

    def with_tet_tags(self, tet_tags: np.ndarray) -> "Mesh":
        return replace(self, tet_tags=tet_tags)
