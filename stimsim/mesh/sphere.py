"""Concentric multi-layer sphere meshes (the standard validation geometry).

Meshing needs the optional ``gmsh`` wheel (``pip install stimsim[mesh]``); it is
imported only when called.  Tags follow SimNIBS: with three layers the innermost ball is
tag ``first_tag`` (3 = CSF in the SimNIBS validation set-up), then 4, 5; the surfaces
at each radius are tagged volume tag + 1000.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MeshError
from .model import Mesh


def make_sphere_mesh(
    radii_mm: Sequence[float] = (85.0, 90.0, 95.0),
    element_size_mm: float = 2.7,
    *,
    first_tag: int = 3,
    threads: int = 2,
) -> Mesh:
    """Mesh concentric spheres with gmsh (Delaunay/HXT), conforming at every interface.

    Parameters
    ----------
    radii_mm : ascending radii in mm
    element_size_mm : target edge length in mm (2.7 mm gives ~665k tets for 85/90/95 mm)
    first_tag : tag of the innermost ball; layer k gets ``first_tag + k``
    threads : gmsh threads
    """
    try:
        import gmsh
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise MeshError(
            f"make_sphere_mesh needs the optional 'gmsh' package ({exc}); install it with "
            "pip install 'stimsim[mesh]'"
        ) from None
    radii = [float(r) for r in radii_mm]
    if any(b <= a for a, b in zip(radii, radii[1:])) or radii[0] <= 0:
        raise MeshError(f"radii_mm must be positive and strictly ascending, got {radii}")
    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", threads)
        gmsh.model.add("spheres")
        balls = [gmsh.model.occ.addSphere(0, 0, 0, r) for r in radii]
        gmsh.model.occ.fragment([(3, balls[-1])], [(3, b) for b in balls[:-1]])
        gmsh.model.occ.synchronize()
        # classify the fragmented volumes by their bounding radius
        vols = gmsh.model.getEntities(3)
        for dim, tag in vols:
            xmin, ymin, zmin, xmax, ymax, zmax = gmsh.model.getBoundingBox(dim, tag)
            r_out = 0.5 * (xmax - xmin)
            layer = int(np.argmin([abs(r_out - r) for r in radii]))
            gmsh.model.addPhysicalGroup(3, [tag], first_tag + layer)
        for dim, tag in gmsh.model.getEntities(2):
            xmin, ymin, zmin, xmax, ymax, zmax = gmsh.model.getBoundingBox(dim, tag)
            r = 0.5 * (xmax - xmin)
            layer = int(np.argmin([abs(r - rr) for rr in radii]))
            gmsh.model.addPhysicalGroup(2, [tag], 1000 + first_tag + layer)
        gmsh.option.setNumber("Mesh.MeshSizeMin", element_size_mm)
        gmsh.option.setNumber("Mesh.MeshSizeMax", element_size_mm)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
        gmsh.option.setNumber("Mesh.Algorithm3D", 10)  # HXT: parallel Delaunay
        gmsh.model.mesh.generate(3)
        node_tags, coords, _ = gmsh.model.mesh.getNodes()
        lookup = np.zeros(int(node_tags.max()) + 1, np.int64)
        lookup[node_tags.astype(np.int64)] = np.arange(len(node_tags))
        nodes = coords.reshape(-1, 3)
        parts = {2: ([], []), 3: ([], [])}
        for dim, phys in gmsh.model.getPhysicalGroups():
            for ent in gmsh.model.getEntitiesForPhysicalGroup(dim, phys):
                etypes, _, enodes = gmsh.model.mesh.getElements(dim, ent)
                for et, en in zip(etypes, enodes):
                    k = 3 if dim == 2 else 4
                    if (dim, et) not in ((2, 2), (3, 4)):
                        continue
                    conn = lookup[en.astype(np.int64)].reshape(-1, k)
                    parts[dim][0].append(conn)
                    parts[dim][1].append(np.full(len(conn), phys))
    finally:
        gmsh.finalize()
    tets = np.concatenate(parts[3][0])
    tris = np.concatenate(parts[2][0])
    mesh = Mesh(nodes, tets, np.concatenate(parts[3][1]), tris, np.concatenate(parts[2][1]))
    # drop nodes gmsh keeps for geometry only (e.g. sphere poles on the seam), orient tets
    used = np.zeros(mesh.n_nodes, bool)
    used[mesh.tets.ravel()] = True
    remap = np.cumsum(used) - 1
    tets = remap[mesh.tets]
    neg = mesh.signed_volumes_mm3 < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    return Mesh(mesh.nodes[used], tets, mesh.tet_tags, remap[mesh.tris], mesh.tri_tags)
