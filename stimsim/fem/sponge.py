"""The layered electrode model: a sponge (or gel) layer meshed onto the scalp under a pad.

The default electrode is an equipotential patch on the skin (:mod:`stimsim.fem.electrodes`).
The layered model adds what lies between the rubber electrode and the skin: a layer of given
thickness and conductivity (saline-soaked sponge or gel, SimNIBS tag 500), extruded from the
skin triangles under the pad along the surface normals, with the rubber electrode as the
equipotential top of the layer.  The layer spreads the current over the pad, so the current
density at the rim of the skin contact is lower than under an equipotential patch.

Each extruded triangle is a prism per layer, cut into three tetrahedra.  The cut of each side
face runs from the lower-numbered node at the bottom to the other node at the top, so two
prisms that share a side face cut it the same way and the mesh is conforming.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MeshError
from ..mesh.model import Mesh
from .electrodes import PlacedElectrode

#: SimNIBS's tag for saline (sponges); its default conductivity is in :data:`stimsim.tissues.TISSUES`
SPONGE_TAG = 500


def add_sponges(mesh: Mesh, placed: Sequence[PlacedElectrode], thickness_mm: Sequence[float | None], *,
                tag: int = SPONGE_TAG, max_layers: int = 6) -> tuple[Mesh, list[PlacedElectrode]]:
    """Mesh a layer of ``thickness_mm[k]`` under pad ``k`` (None or 0: keep the patch on the skin).

    Returns the mesh with the layers appended (the head's nodes and elements keep their numbers)
    and the electrodes moved onto the top of their layers (nodes, centre node; ``faces`` and
    ``face_tets`` then describe the top).  Layers are about as thick as the pad's triangles are
    wide (at most ``max_layers``), so the new elements are not flat.
    """
    surf_nodes, surf_normals = mesh.boundary_node_normals()
    normal_of = np.zeros((mesh.n_nodes, 3))
    normal_of[surf_nodes] = surf_normals
    nodes, tets, tags = [mesh.nodes], [mesh.tets], [mesh.tet_tags]
    n_next, m_next = mesh.n_nodes, mesh.n_tets
    out = []
    for e, t in zip(placed, thickness_mm):
        if not t or e.faces is None or len(e.faces) == 0:
            out.append(e)
            continue
        faces = np.sort(e.faces, axis=1)  # each prism's nodes in increasing number: the conforming cut
        base = np.unique(faces)
        edge = np.linalg.norm(mesh.nodes[faces] - mesh.nodes[np.roll(faces, 1, axis=1)], axis=2).mean()
        n_layers = int(min(max_layers, max(1, np.ceil(t / edge))))
        local = np.full(mesh.n_nodes, -1, np.int64)
        local[base] = np.arange(len(base))
        # node ids per layer (layer 0: the skin); numbering keeps each layer in the skin's order
        ids = [base] + [n_next + (k - 1) * len(base) + np.arange(len(base)) for k in range(1, n_layers + 1)]
        for k in range(1, n_layers + 1):
            nodes.append(mesh.nodes[base] + normal_of[base] * (t * k / n_layers))
        for k in range(n_layers):
            a, b, c = (ids[k][local[faces[:, i]]] for i in range(3))
            a1, b1, c1 = (ids[k + 1][local[faces[:, i]]] for i in range(3))
            tets.append(np.concatenate([np.stack([a, b, c, c1], 1), np.stack([a, b, b1, c1], 1),
                                        np.stack([a, a1, b1, c1], 1)]))
            tags.append(np.full(3 * len(faces), tag, np.int32))
        n_next += n_layers * len(base)
        top = ids[-1]
        top_faces = top[local[e.faces]]
        top_tets = m_next + (n_layers - 1) * 3 * len(faces) + 2 * len(faces) + np.arange(len(faces))
        m_next += n_layers * 3 * len(faces)
        centre = int(top[local[e.center_node]]) if local[e.center_node] >= 0 else int(top[0])
        out.append(PlacedElectrode(e.name, e.current_A, top, centre, e.distance_mm, e.area_mm2, e.shape,
                                   e.nominal_area_mm2, top_faces, top_tets))
    all_nodes = np.concatenate(nodes)
    all_tets = np.concatenate(tets).astype(mesh.tets.dtype)
    # orient every new element positively (the cut above fixes the shape, not the sign)
    new = slice(mesh.n_tets, None)
    p = all_nodes[all_tets[new]]
    vol = np.einsum("ij,ij->i", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), p[:, 3] - p[:, 0])
    if np.any(np.abs(vol) < 1e-12):
        raise MeshError("sponge: a layer element has no volume; the scalp under the pad folds too sharply "
                        "for this thickness (use a thinner layer or model: patch)")
    flip = np.flatnonzero(vol < 0) + mesh.n_tets
    all_tets[flip] = all_tets[flip][:, [0, 2, 1, 3]]
    return Mesh(all_nodes, all_tets, np.concatenate(tags), mesh.tris, mesh.tri_tags), out
