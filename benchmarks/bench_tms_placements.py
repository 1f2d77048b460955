"""Many TMS coil placements on one head: assembly and AMG hierarchy built once, reused per placement.

Prints setup time, seconds per placement and the total for N placements (default 100)
on a grid of centres and handle angles over the top of the ~665k-tet 3-layer sphere.

Usage::

    python benchmarks/bench_tms_placements.py [--size 2.8] [--n 100] [--rtol 1e-10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.progress import track

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
    ap.add_argument("--rtol", type=float, default=1e-10)
    args = ap.parse_args()
    path = sphere_file(args.size)
    protocol = validate_protocol({
        "kind": "tms", "head": str(path), "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
        "coil": {"file": "Magstim_70mm_Fig8.ccd"},
        "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {"didt_A_per_us": 1.0}})
    t = time.perf_counter()
    model = TMSModel(protocol, rtol=args.rtol)
    model.efield(model.placement([0, 0, 95], [0, 1, 0]).matrix)  # warm-up (numba, caches)
    setup = time.perf_counter() - t
    rng = np.random.default_rng(0)
    placements = []
    for _ in range(args.n):
        theta, phi, angle = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        c = 95 * np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
        placements.append((c, [np.cos(angle), np.sin(angle), 0.0]))
    t = time.perf_counter()
    peak = []
    for c, d in track(placements, description=f"{args.n} placements"):
        e = model.efield(model.placement(c, d).matrix)
        peak.append(float(np.linalg.norm(e, axis=1).max()))
    total = time.perf_counter() - t
    print(f"| mesh | {model.mesh.n_nodes} nodes, {model.mesh.n_tets} tets |")
    print(f"| setup (read, assembly, AMG hierarchy, first placement) | {setup:.2f} s |")
    print(f"| {args.n} placements (rtol {args.rtol:g}) | {total:.1f} s ({total / args.n:.2f} s each) |")
    print(f"| peak |E| range | {min(peak):.1f} - {max(peak):.1f} V/m |")


if __name__ == "__main__":
    main()
