"""The three-layer sphere meshed from a label volume against the analytic solution, next to the gmsh
sphere with the same number of nodes (issue 20's acceptance set-up).

Radii 85/90/95 mm, sigma 1.0 / 0.01 / 1.0 S/m (tags 3/4/5), +-1 mA point electrodes at the scalp
nodes nearest (95, 0, 0) and 95 (-cos 45, 0, sin 45) mm; error = relative L2 of E over the inner
ball's tetrahedra (element-wise and SPR-recovered).  A labelled sphere's surfaces lie up to ~0.5 mm
off the true radii, so each centroid of an inner-ball tetrahedron is compared with the analytic field
of the inner ball (moved radially onto r < 85 mm when it lies outside): a tetrahedron is compared
with its own tissue's field.  The error is also split by radius, to show where it comes from.

    python benchmarks/bench_label_sphere.py [--voxel 1 2] [--size 8] [--surface-size 4] [--exact-surfaces]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stimsim.analytic import rel_l2, tdcs_sphere_efield
from stimsim.head.meshers import make_head_mesh
from stimsim.mesh.sphere import make_sphere_mesh
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate

RADII = (85.0, 90.0, 95.0)
SIGMA = (1.0, 0.01, 1.0)
CATHODE = 95 * np.array([-np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4)])
BINS = ((0, 60), (60, 80), (80, 86))


def label_sphere(voxel_mm: float):
    """Tags 3 (r <= 85), 4 (<= 90), 5 (<= 95) on a grid centred on the origin; (labels, affine)."""
    n = int(np.ceil(2 * (RADII[2] + 4 * voxel_mm) / voxel_mm))
    c = (n - 1) / 2
    ax = (np.arange(n) - c) * voxel_mm
    r = np.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    vol = np.zeros((n, n, n), np.int16)
    for tag, radius in zip((5, 4, 3), RADII[::-1]):
        vol[r <= radius] = tag
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -c * voxel_mm
    return vol, affine


def errors(mesh) -> dict:
    p = validate_protocol({"kind": "tdcs", "conductivities": dict(zip((3, 4, 5), SIGMA)), "electrodes": [
        {"name": "a", "position": [95, 0, 0], "current_mA": 1.0},
        {"name": "c", "position": CATHODE.tolist(), "current_mA": -1.0}]})
    res = simulate(p, mesh=mesh)
    sel = mesh.tet_tags == 3
    pts = mesh.centroids[sel]
    r = np.linalg.norm(pts, axis=1)
    pts = pts * np.minimum(1.0, (RADII[0] - 1e-6) / r)[:, None]
    el = np.array([mesh.nodes[e.center_node] for e in res.electrodes])
    ref = tdcs_sphere_efield(pts, el, [1e-3, -1e-3], list(RADII), list(SIGMA))
    sq = np.linalg.norm(res.E[sel] - ref, axis=1) ** 2
    by_r = {f"{lo}-{hi}": float(np.sqrt(sq[(r >= lo) & (r < hi)].sum()
                                        / (np.linalg.norm(ref[(r >= lo) & (r < hi)], axis=1) ** 2).sum()))
            for lo, hi in BINS}
    # the L2 norm of the error as a function (each tetrahedron weighted by its volume): the plain sum
    # over tetrahedra weighs the small ones at the surfaces as much as the large ones inside, so it
    # depends on how a mesh grades its sizes
    w = mesh.volumes_mm3[sel]
    ref2 = (w * (ref * ref).sum(1)).sum()

    def weighted(E):
        return float(np.sqrt((w * ((E - ref) ** 2).sum(1)).sum() / ref2))

    u = pts / np.linalg.norm(pts, axis=1)[:, None]
    cos = u @ (el / np.linalg.norm(el, axis=1)[:, None]).T
    under = np.degrees(np.arccos(np.clip(cos.max(1), -1, 1))) < 10.0
    return {"elem": rel_l2(res.E[sel], ref), "rec": rel_l2(res.E_recovered[sel], ref), "by_r": by_r,
            "elem_vw": weighted(res.E[sel]), "rec_vw": weighted(res.E_recovered[sel]),
            "under_electrodes": float((w * sq)[under].sum() / (w * sq).sum()), "it": res.solve_info.iterations}


def exact_distances() -> None:
    """Make the surface mesher build its surfaces from the exact distances to the three spheres (after
    its own calibration, in place of its smoothed voxel distances): what is left of the error is the
    mesh's, not the labels' staircase."""
    import stimsim.head.meshers.surface as surface

    own = surface.nested_fields

    def exact(tags, cavity, zooms, **kw):
        phis, air, bone = own(tags, cavity, zooms, **kw)
        pad, vox = kw.get("pad", 3), float(zooms[0])
        centre = (np.array(tags.shape) - 1) / 2.0 + pad  # label_sphere's grid is centred on the origin
        ax = [(np.arange(n) - c) * vox for n, c in zip(phis[1].shape, centre)]
        r = np.sqrt(ax[0][:, None, None] ** 2 + ax[1][None, :, None] ** 2 + ax[2][None, None, :] ** 2)
        for layer, radius in zip((1, 2, 3), RADII[::-1]):
            phis[layer] = np.minimum(r - radius, surface.SDF_BAND_MM).astype(np.float32)
        return phis, air, bone

    surface.nested_fields = exact


def gmsh_like(n_nodes: int):
    """The gmsh sphere whose node count is within 5 % of ``n_nodes`` (element size by n ~ size^-3)."""
    size, mesh = 4.0, None
    for _ in range(4):
        mesh = make_sphere_mesh(RADII, element_size_mm=size)
        if abs(mesh.n_nodes / n_nodes - 1) < 0.05:
            break
        size *= (mesh.n_nodes / n_nodes) ** (1 / 3)
    return mesh, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxel", nargs="*", type=float, default=[1.0, 2.0])
    ap.add_argument("--size", type=float, default=None, help="element size, mm (default: the mesher's)")
    ap.add_argument("--surface-size", type=float, default=None,
                    help="surface sampling, mm (default: half the element size; = --size for uniform sizes)")
    ap.add_argument("--exact-surfaces", action="store_true",
                    help="diagnostic: the mesher's smoothed distances replaced by the exact distances to the "
                         "three spheres (the voxels' staircase out of the picture, everything else the same)")
    args = ap.parse_args()
    if args.exact_surfaces:
        exact_distances()
    print("| mesh | nodes | tets | time s | E error % (recovered) | volume-weighted (recovered) | share within 10 deg "
          "of the electrodes | error % by radius " + " / ".join(f"{lo}-{hi}" for lo, hi in BINS)
          + " mm | CG it |\n|---|---|---|---|---|---|---|---|---|")
    for vox in args.voxel:
        vol, affine = label_sphere(vox)
        t = time.perf_counter()
        mesh = make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=args.size, progress=False,
                              cache=False, surface_size_mm=args.surface_size)
        dt = time.perf_counter() - t
        for name, m, secs in ((f"labels {vox:g} mm, surface mesher", mesh, f"{dt:.1f}"),
                              *[(f"gmsh h={s:.2f} mm, same nodes", g, "") for g, s in [gmsh_like(mesh.n_nodes)]]):
            e = errors(m)
            by = " / ".join(f"{100 * v:.1f}" for v in e["by_r"].values())
            print(f"| {name} | {m.n_nodes:,} | {m.n_tets:,} | {secs} | {100 * e['elem']:.2f} ({100 * e['rec']:.2f}) "
                  f"| {100 * e['elem_vw']:.2f} ({100 * e['rec_vw']:.2f}) | {e['under_electrodes']:.2f} | {by} "
                  f"| {e['it']} |", flush=True)


if __name__ == "__main__":
    main()
