"""Accuracy and stage timings per mesh against the analytic 3-layer sphere (the acceptance set-ups).

Prints one row per (mesh, modality): nodes, tets, read/assembly/setup+solve s, error %
(element-wise and recovered) of E in the inner ball.  Large-mesh TMS errors use a fixed
random 60k-element sample of the inner ball to keep the analytic evaluation short.

Usage::

    python benchmarks/bench_accuracy.py [--size 2.83]
"""

from __future__ import annotations

import argparse
import resource

import numpy as np

from stimsim.analytic import rel_l2, tdcs_sphere_efield, tms_sphere_efield
from stimsim.coils import load_coil
from stimsim.mesh import read_mesh
from stimsim.protocol import validate_protocol
from stimsim.simulation import resolve_head, simulate

try:
    from bench_run import sphere_file
except ImportError:
    from benchmarks.bench_run import sphere_file

COND = {3: 1.0, 4: 0.01, 5: 1.0}
CATHODE = (95 * np.array([-np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4)])).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, default=2.83)
    args = ap.parse_args()
    meshes = {"sphere3.msh": resolve_head("sphere"), f"gmsh h={args.size:g} mm": sphere_file(args.size)}
    print("| mesh | modality | nodes | tets | read s | assembly s | setup+solve s | CG it | E error % | "
          "recovered % |\n|---|---|---|---|---|---|---|---|---|---|")
    for label, path in meshes.items():
        mesh, _ = read_mesh(path)
        inner = np.flatnonzero(mesh.tet_tags == 3)
        sample = np.sort(np.random.default_rng(0).choice(inner, min(len(inner), 60_000), replace=False))
        tdcs = validate_protocol({"kind": "tdcs", "conductivities": COND, "electrodes": [
            {"name": "a", "position": [95, 0, 0], "current_mA": 1.0},
            {"name": "c", "position": CATHODE, "current_mA": -1.0}]})
        tms = validate_protocol({"kind": "tms", "conductivities": COND, "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                                 "placement": {"center": [0, 0, 95], "direction": [0, 1, 0], "distance_mm": 4},
                                 "stimulator": {"didt_A_per_us": 1.0}})
        for name, p in (("tDCS", tdcs), ("TMS", tms)):
            r = simulate(p, mesh=mesh)
            if name == "tDCS":
                sel = inner
                el = np.array([mesh.nodes[e.center_node] for e in r.electrodes])
                ref = tdcs_sphere_efield(mesh.centroids[sel], el, [1e-3, -1e-3], [85, 90, 95], [1.0, 0.01, 1.0])
            else:
                sel = sample
                pos, mom = load_coil(p.coil).transformed(np.array(r.placement.matrix))
                ref = tms_sphere_efield(mesh.centroids[sel], pos, mom, r.didt_A_per_s)
            t = r.timings_s
            print(f"| {label} | {name} | {mesh.n_nodes} | {mesh.n_tets} | {t['read_s']:.2f} | {t['assembly_s']:.2f} "
                  f"| {t['setup_s'] + t['solve_s']:.2f} | {r.solve_info.iterations} | {100 * rel_l2(r.E[sel], ref):.2f} "
                  f"| {100 * rel_l2(r.E_recovered[sel], ref):.2f} |")
    print(f"\npeak RSS of this script: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
