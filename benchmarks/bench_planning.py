"""Leadfield and montage timings: set-up, seconds per electrode, milliseconds per extra montage.

Usage::

    python benchmarks/bench_planning.py [--head sphere|colin27|FILE] [--n 64] [--size 2.8]

``--head sphere`` uses the ~665k-tet gmsh sphere of bench_run.py with N electrodes on the upper
hemisphere; a head with shipped 10-10 positions uses those.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from stimsim.mesh import read_mesh
from stimsim.planning import compute_leadfield, optimize_tdcs

try:
    from bench_run import sphere_file
except ImportError:
    from benchmarks.bench_run import sphere_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--head", default="sphere")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=float, default=2.8)
    args = ap.parse_args()
    if args.head == "sphere":
        mesh, _ = read_mesh(sphere_file(args.size))
        i = np.arange(args.n) + 0.5
        z = 1 - i / args.n
        phi = np.pi * (1 + 5**0.5) * i
        r = np.sqrt(1 - z**2)
        pos = {f"E{k}": tuple(p) for k, p in enumerate(95 * np.column_stack([r * np.cos(phi), r * np.sin(phi), z]))}
        pos["REF"] = (0.0, 0.0, -95.0)
        cond, tags, target = {3: 1.0, 4: 0.01, 5: 1.0}, [3], [30.0, 20.0, 70.0]
    else:
        import re

        from stimsim.head.eeg import head_positions
        from stimsim.simulation import resolve_head

        mesh, _ = read_mesh(resolve_head(args.head))
        # the 10-10 subset of the 10-05 file: single-letter-pair prefixes, no half ('h') positions
        ten_ten = re.compile(r"^(Fp|AF|F|FC|FT|C|T|CP|TP|P|PO|O|I)(\d+|z)$")
        aliases = {"T3", "T4", "T5", "T6"}  # old names of T7, T8, P7, P8
        pos = {k: tuple(v) for k, v in head_positions(args.head).items() if ten_ten.match(k) and k not in aliases}
        pos = dict(list(pos.items())[: args.n])
        pos.pop("Iz", None)
        pos["Iz"] = tuple(head_positions(args.head)["Iz"])  # reference at the inion
        cond, tags, target = None, [1, 2], [-40.0, -20.0, 60.0]
    ref = list(pos)[-1]
    t = time.perf_counter()
    lf = compute_leadfield(mesh, pos, ref, conductivities=cond, progress=True)
    total = time.perf_counter() - t
    k = len(lf.names) - 1
    rng = np.random.default_rng(0)
    montages = [dict(zip(rng.choice(lf.names[:-1], 4, replace=False), [1.0, -0.5, 0.25, -0.75])) for _ in range(20)]
    t = time.perf_counter()
    for m in montages:
        lf.field(m)
    per_montage = (time.perf_counter() - t) / len(montages)
    t = time.perf_counter()
    sol = optimize_tdcs(lf, mesh, target, 10.0, "normal", tags=tags)
    t_opt = time.perf_counter() - t
    print(f"| mesh | {mesh.n_nodes} nodes, {mesh.n_tets} tets |")
    print(f"| leadfield, {k} electrodes | {total:.1f} s total, {total / k:.2f} s per electrode |")
    print(f"| leadfield memory (float32) | {lf.fields.nbytes / 2**20:.0f} MiB |")
    print(f"| one extra montage from the leadfield | {per_montage * 1e3:.1f} ms |")
    print(f"| LP optimisation | {t_opt:.2f} s ({len(sol.currents_mA)} electrodes active) |")
    print(f"| peak RSS | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
