"""Many TMS coil placements on one head: assembly and AMG hierarchy built once, reused per placement.

Prints setup time, seconds per placement and the total for N placements (default 100)
on random centres and handle angles over the top of the ~665k-tet 3-layer sphere, then
times a coil-position search (``search_tms``) on the same model.

Usage::

    python benchmarks/bench_tms_placements.py [--size 2.8] [--n 100] [--rtol 1e-6] [--reuse 30] [--backend amg]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stimsim.protocol import validate_protocol
from stimsim.tms import TMSModel

try:
    from bench_run import sphere_file
except ImportError:  # run from the repo root
    from benchmarks.bench_run import sphere_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, default=2.8)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rtol", type=float, default=None, help="CG tolerance (default: TMSModel's, 1e-6)")
    ap.add_argument("--reuse", type=int, default=30, help="earlier solutions that seed CG (0: off)")
    ap.add_argument("--backend", default="auto", help="TMSModel backend: auto (PARDISO when installed), amg, ...")
    args = ap.parse_args()
    path = sphere_file(args.size)
    protocol = validate_protocol({
        "kind": "tms", "head": str(path), "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
        "coil": {"file": "Magstim_70mm_Fig8.ccd"},
        "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {"didt_A_per_us": 1.0}})
    t = time.perf_counter()
    model = TMSModel(protocol, rtol=args.rtol, reuse=args.reuse, backend=args.backend)
    model.efield(model.placement([0, 0, 95], [0, 1, 0]).matrix)  # warm-up (numba, caches)
    setup = time.perf_counter() - t
    rng = np.random.default_rng(0)
    placements = []
    for _ in range(args.n):
        theta, phi, angle = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        c = 95 * np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
        placements.append((c, [np.cos(angle), np.sin(angle), 0.0]))
    t = time.perf_counter()
    matrices = [model.placement(c, d).matrix for c, d in placements]
    peak = [float(np.linalg.norm(e, axis=1).max()) for e in model.sweep(matrices)]
    total = time.perf_counter() - t
    print(f"| mesh | {model.mesh.n_nodes} nodes, {model.mesh.n_tets} tets |")
    print(f"| setup (read, assembly, AMG hierarchy, first placement) | {setup:.2f} s |")
    print(f"| {args.n} placements (rtol {model.rtol:g}) | {total:.1f} s ({total / args.n:.2f} s each) |")
    its = model.iterations[1:]
    print(f"| CG iterations: first 10 / last 10 placements (reuse {args.reuse}) | "
          f"{np.mean(its[:10]):.1f} / {np.mean(its[-10:]):.1f} |")
    print(f"| peak |E| range | {min(peak):.1f} - {max(peak):.1f} V/m |")
    # the position search (issue: <= 0.5 s per placement): adjoint set-up, then dA/dt per placement
    from stimsim.planning import search_tms

    t = time.perf_counter()
    res = search_tms(model, [0.0, 20.0, 80.0], grid_radius_mm=20, grid_step_mm=10, angles=12, progress=False,
                     tags=[3])
    total = time.perf_counter() - t
    n = len(res.table)
    print(f"| TMS search: {n} placements (20 mm grid, 10 mm step, 12 angles), incl. 3 adjoint solves "
          f"and the final full solve | {total:.1f} s ({total / n:.3f} s per placement) |")


if __name__ == "__main__":
    main()
