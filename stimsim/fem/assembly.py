"""Vectorised P1 (linear tetrahedron) finite-element assembly.

Everything is computed for all elements at once with numpy (no Python loop over
elements).  Inputs are in mm (mesh files); outputs are SI: gradients in 1/m,
volumes in m³, stiffness in S (A/V).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import MeshError
from ..mesh.model import Mesh

# the 6 local edges (i < j) of a tetrahedron
_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])


@dataclass(frozen=True, eq=False)
class P1Geometry:
    """Per-element data every P1 operation needs.

    Attributes
    ----------
    tets : (m, 4) int32 node indices
    grads_kdm : (4, 3, m) float64, gradient component d of hat function k in 1/m; stored
        component-major so every per-element expression works on contiguous rows.  None in
        a :meth:`volumes_only` geometry (kernels that recompute gradients on the fly)
    volumes_m3 : (m,) float64, element volumes in m³
    n_nodes : number of mesh nodes
    """

    tets: np.ndarray
    grads_kdm: np.ndarray | None
    volumes_m3: np.ndarray
    n_nodes: int

    @property
    def grads(self) -> np.ndarray:
        """(m, 4, 3) view of the hat-function gradients (1/m)."""
        return self._require_grads().transpose(2, 0, 1)

    def _require_grads(self) -> np.ndarray:
        if self.grads_kdm is None:
            raise ValueError("this P1Geometry holds volumes only; build it with P1Geometry.from_mesh for gradients")
        return self.grads_kdm

    @classmethod
    def volumes_only(cls, mesh: Mesh) -> "P1Geometry":
        """Tets and volumes without the (4, 3, m) gradients, for code that needs no gradients
        (recovery) next to kernels that recompute them (:mod:`stimsim.fem.p1_numba`)."""
        return cls(mesh.tets, None, mesh.volumes_mm3 * 1e-9, mesh.n_nodes)

    @classmethod
    def from_mesh(cls, mesh: Mesh, chunk: int = 1 << 17) -> "P1Geometry":
        """Hat-function gradients from the closed-form cofactor expressions.

        With edge vectors a, b, c from node 0, grad(phi_1) = (b x c) / det, etc.; this is
        cheaper than a batched 3x3 inverse and exact up to round-off.  Elements are
        processed in chunks so the temporaries stay small next to the result.
        """
        m = mesh.n_tets
        grads = np.empty((4, 3, m))
        vol = np.empty(m)
        cols = [np.ascontiguousarray(mesh.nodes[:, k]) * 1e-3 for k in range(3)]  # mm -> m
        for s in range(0, m, chunk):
            tets = mesh.tets[s:s + chunk]
            # component-wise (c, 4) gathers keep every array contiguous: faster than np.cross
            # (measured: docs/solver.md)
            x, y, z = (col[tets] for col in cols)
            a = (x[:, 1] - x[:, 0], y[:, 1] - y[:, 0], z[:, 1] - z[:, 0])
            b = (x[:, 2] - x[:, 0], y[:, 2] - y[:, 0], z[:, 2] - z[:, 0])
            c = (x[:, 3] - x[:, 0], y[:, 3] - y[:, 0], z[:, 3] - z[:, 0])
            bc, ca, ab = _cross(b, c), _cross(c, a), _cross(a, b)
            det = a[0] * bc[0] + a[1] * bc[1] + a[2] * bc[2]
            if np.any(det == 0):
                bad = s + int(np.flatnonzero(det == 0)[0])
                raise MeshError(f"tetrahedron #{bad} has zero volume; repair or re-mesh the head model")
            inv = 1.0 / det
            g = grads[:, :, s:s + chunk]
            for d in range(3):
                g[1, d] = bc[d] * inv
                g[2, d] = ca[d] * inv
                g[3, d] = ab[d] * inv
                g[0, d] = -(g[1, d] + g[2, d] + g[3, d])
            vol[s:s + chunk] = np.abs(det) / 6.0
        return cls(mesh.tets, grads, vol, mesh.n_nodes)

    def gradient(self, nodal_values: np.ndarray) -> np.ndarray:
        """Element-wise gradient (m, 3) of a P1 field given at nodes (unit: value per metre)."""
        grads = self._require_grads()
        out = np.zeros((len(self.volumes_m3), 3))
        for k in range(4):
            vk = nodal_values[self.tets[:, k]]
            for d in range(3):
                out[:, d] += vk * grads[k, d]
        return out


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def assemble_stiffness(geometry: P1Geometry, sigma: np.ndarray, chunk: int = 1 << 18) -> sp.csr_matrix:
    r"""Global stiffness matrix :math:`K_{ij} = \sum_e \sigma_e V_e \nabla\phi_i\cdot\nabla\phi_j` (S).

    Only the 6 edge couplings per element are computed; the diagonal follows from the
    row sums being zero (constants are in the kernel of the Laplacian), which halves the
    work and memory of the assembly.

    Parameters
    ----------
    geometry : P1Geometry
    sigma : (m,) conductivity per element, S/m
    """
    n = geometry.n_nodes
    i, j = _EDGES[:, 0], _EDGES[:, 1]
    upper = sp.csr_matrix((n, n))
    g = geometry._require_grads()
    for s in range(0, len(sigma), chunk):
        w = sigma[s:s + chunk] * geometry.volumes_m3[s:s + chunk]
        off = np.empty((len(w), 6))
        for e, (a, b) in enumerate(_EDGES):
            ga, gb = g[a, :, s:s + chunk], g[b, :, s:s + chunk]
            off[:, e] = (ga[0] * gb[0] + ga[1] * gb[1] + ga[2] * gb[2]) * w
        tets = geometry.tets[s:s + chunk]
        upper = upper + sp.csr_matrix((off.ravel(), (tets[:, i].ravel(), tets[:, j].ravel())), shape=(n, n))
    k = upper + upper.T
    del upper
    diag = -np.asarray(k.sum(axis=1)).ravel()
    k = k + sp.diags(diag, format="csr")
    k.sum_duplicates()
    k.sort_indices()
    return k


def assemble_load_from_element_vectors(geometry: P1Geometry, element_vectors: np.ndarray) -> np.ndarray:
    r"""Right-hand side :math:`b_i = \sum_e V_e\, \mathbf{f}_e\cdot\nabla\phi_i` for a piecewise-constant vector field.

    Used for TMS, where ``f = -sigma dA/dt`` per element (unit of b: A when f is in A/m²).
    """
    f = [np.ascontiguousarray(element_vectors[:, d]) * geometry.volumes_m3 for d in range(3)]
    g = geometry._require_grads()
    b = np.zeros(geometry.n_nodes)
    for k in range(4):
        b += np.bincount(geometry.tets[:, k], weights=f[0] * g[k, 0] + f[1] * g[k, 1] + f[2] * g[k, 2],
                         minlength=geometry.n_nodes)
    return b
