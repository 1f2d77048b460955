"""The surface mesher on label volumes of known geometry (issue 20's acceptance set): nested ellipsoids
with 2-4 mm shells at 1 and 0.5 mm voxels, a skull with a hole (a craniectomy), and two pieces of one
tissue one voxel apart.  Volumes against the analytic ones, layer thicknesses against the voxel
model's, element shape bounds, pieces."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tetgen")
pytest.importorskip("skimage")

OUTER_MM = np.array([40.0, 34.0, 30.0])  # the scalp's semi-axes
SHELLS_MM = (3.0, 2.0, 2.5, 3.0)  # scalp, bone, CSF, GM thickness along the axes; WM inside
TAGS = (5, 4, 3, 2, 1)


def _grid(voxel_mm: float, pad: int = 4):
    n = (2 * OUTER_MM / voxel_mm).astype(int) + 2 * pad
    c = (n - 1) / 2 * voxel_mm
    return np.stack(np.meshgrid(*[np.arange(k) * voxel_mm - cc for k, cc in zip(n, c)], indexing="ij"), -1)


def nested_ellipsoids(voxel_mm: float):
    """SimNIBS tags on a grid centred on the ellipsoids; returns (labels, affine, analytic volume per tag)."""
    g = _grid(voxel_mm)
    vol = np.zeros(g.shape[:3], np.int16)
    axes, inner = OUTER_MM.copy(), {}
    for i, tag in enumerate(TAGS):
        if i:
            axes = axes - SHELLS_MM[i - 1]
        vol[((g / axes) ** 2).sum(-1) <= 1] = tag
        inner[tag] = 4 / 3 * np.pi * np.prod(axes)
    analytic = {t: inner[t] - (inner[TAGS[i + 1]] if i + 1 < len(TAGS) else 0.0) for i, t in enumerate(TAGS)}
    return vol, np.diag([voxel_mm] * 3 + [1.0]), analytic


def _mesh(vol, affine, h=4.0):
    from stimsim.head.meshers import make_head_mesh

    return make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=h, progress=False, cache=False,
                          return_info=True)


def _interface_mesh(mesh, a: int, b: int) -> np.ndarray:
    """Centroids (mm) of the faces between a tet of tag a and one of tag b."""
    from stimsim.head.meshers.topology import tet_neighbors
    from stimsim.mesh.model import TET_FACES

    nb = tet_neighbors(mesh.tets)
    out = []
    for k, face in enumerate(TET_FACES):
        sel = (mesh.tet_tags == a) & (nb[:, k] >= 0)
        sel[sel] = mesh.tet_tags[nb[sel, k]] == b
        out.append(mesh.nodes[mesh.tets[sel][:, list(face)]].mean(axis=1))
    return np.concatenate(out)


def _interface_voxels(vol, voxel_mm: float, a: int, b: int) -> np.ndarray:
    """Centres (mm, the grid's frame) of the voxel faces between a voxel of tag a and one of tag b."""
    out = []
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        for p, q in ((tuple(lo), tuple(hi)), (tuple(hi), tuple(lo))):
            idx = np.argwhere((vol[p] == a) & (vol[q] == b)).astype(float)
            if p[ax] == slice(1, None):
                idx[:, ax] += 1.0
            idx[:, ax] += 0.5 if p[ax] == slice(0, -1) else -0.5
            out.append(idx * voxel_mm)
    return np.concatenate(out)


def _thickness(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """For each point of the outer boundary, the distance to the closest point of the inner one."""
    from scipy.spatial import cKDTree

    return cKDTree(inner).query(outer)[0]


def _check_shapes(mesh):
    from stimsim.mesh.checks import element_quality

    e = element_quality(mesh)
    assert e["min_dihedral_deg"].min() >= 5.0 - 1e-9, int(np.sum(e["min_dihedral_deg"] < 5))
    assert e["radius_ratio"].min() >= 0.1 - 1e-9, int(np.sum(e["radius_ratio"] < 0.1))


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_nested_ellipsoids(voxel_mm):
    from stimsim.head.meshers import tissue_connectivity

    vol, affine, analytic = nested_ellipsoids(voxel_mm)
    mesh, info = _mesh(vol, affine)
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    for tag in TAGS:
        assert abs(v[tag] / analytic[tag] - 1) < 0.01, (tag, v[tag] / analytic[tag] - 1)
    _check_shapes(mesh)
    conn = tissue_connectivity(mesh)
    assert all(conn[t]["pieces"] == 1 for t in TAGS), conn
    # the grid's frame: the affine is a pure scaling, so mesh mm = voxel index * voxel_mm
    for inner_tag, tag, outer_tag in ((3, 4, 5), (2, 3, 4)):  # the skull and the CSF layer
        t_mesh = _thickness(_interface_mesh(mesh, tag, outer_tag), _interface_mesh(mesh, tag, inner_tag))
        t_vox = _thickness(_interface_voxels(vol, voxel_mm, tag, outer_tag),
                           _interface_voxels(vol, voxel_mm, tag, inner_tag))
        for q in (10, 50, 90):
            a, b = np.percentile(t_mesh, q), np.percentile(t_vox, q)
            assert abs(a - b) <= 0.5, (tag, q, a, b)


@pytest.mark.xfail(strict=True, reason="known gap: the nested layers close a skull defect with a 0.75 mm bone "
                   "sheet (minimum thickness between the bone and CSF surfaces); docs/meshing.md")
def test_skull_with_a_hole_keeps_the_hole():
    """A 12 mm craniectomy on top (bone -> scalp): the hole stays open and the bone one piece.
    Today the mesh puts ~60 mm^3 of bone across it."""
    from stimsim.head.meshers import tissue_connectivity

    vox = 1.0
    vol, affine, _ = nested_ellipsoids(vox)
    g = _grid(vox)
    hole = (np.hypot(g[..., 0], g[..., 1]) < 6.0) & (g[..., 2] > 0)
    vol[hole & (vol == 4)] = 5
    mesh, _ = _mesh(vol, affine)
    c = mesh.centroids - (np.array(vol.shape) - 1) / 2 * vox
    bone = mesh.tet_tags == 4
    assert not np.any(bone & (np.hypot(c[:, 0], c[:, 1]) < 5.0) & (c[:, 2] > 0)), "bone across the hole"
    assert tissue_connectivity(mesh)[4]["pieces"] == 1
    vv = np.bincount(vol.ravel(), minlength=6) * vox ** 3
    v = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)
    assert abs(v[4] / vv[4] - 1) < 0.02
    _check_shapes(mesh)


def test_pieces_one_voxel_apart_stay_apart():
    """Two grey-matter balls in CSF with a one-voxel gap between them: two pieces, not bridged."""
    from stimsim.head.meshers import tissue_connectivity

    n = 56
    x, y, z = np.mgrid[:n, :n, :n] - (n - 1) / 2
    vol = np.zeros((n, n, n), np.int16)
    vol[np.sqrt(x * x + y * y + z * z) <= 26] = 5
    vol[np.sqrt(x * x + y * y + z * z) <= 23] = 4
    vol[np.sqrt(x * x + y * y + z * z) <= 21] = 3
    left, right = (x < -0.5) & (x > -15.5), (x > 0.5) & (x < 15.5)
    vol[left & (np.abs(y) < 8) & (np.abs(z) < 8)] = 2  # boxes 15 voxels long, gap: the voxel plane x ~ 0
    vol[right & (np.abs(y) < 8) & (np.abs(z) < 8)] = 2
    assert not np.any(vol[(np.abs(x) < 0.5)] == 2)
    mesh, _ = _mesh(vol, np.eye(4), h=3.0)
    conn = tissue_connectivity(mesh)
    assert conn[2]["pieces"] == 2, conn
    assert conn[3]["pieces"] == 1, conn
