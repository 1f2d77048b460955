"""The reciprocity coil search (``stimsim optimize tms``) on the sphere and on Colin27: placements per
second, time per stage, and accuracy next to each number.

For each head: the default search (centres on a 1 mm grid within 30 mm of the target's scalp point x
360 handle directions), then
- the interpolated objective against the exact one at 50 random searched placements,
- the reported optimum against a full FEM solve there,
- the reported optimum against the best of the earlier grid search (10 mm grid within 20 mm x 15 degree
  steps, every placement scored exactly).

Usage::

    python benchmarks/bench_tms_search.py [--heads sphere,colin27] [--angles 360] [--step 1]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from stimsim.planning import search_tms
from stimsim.planning.optimize import roi_elements
from stimsim.planning.tms_search import effective_field, exact_mean_e, rotated_frame
from stimsim.protocol import validate_protocol
from stimsim.tms import TMSModel

CASES = {  # target (mm, head frame), ROI tags
    "sphere": ([25.0, 10.0, 75.0], [3]),
    "colin27": ([-37.0, -21.0, 58.0], [2]),  # left hand knob (MNI ~ -37, -21, 58)
}


def coarse_grid_best(model, q, target):
    mesh = model.mesh
    nodes, normals = mesh.boundary_node_normals()
    k = np.argmin(np.linalg.norm(mesh.nodes[nodes] - np.asarray(target), axis=1))
    n0 = normals[k]
    u = np.cross(n0, [0, 0, 1.0] if abs(n0[2]) < 0.9 else [1.0, 0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(n0, u)
    best = 0.0
    for a in (-20, -10, 0, 10, 20):
        for b in (-20, -10, 0, 10, 20):
            if a * a + b * b > 400:
                continue
            for t in np.deg2rad(np.arange(0, 180, 15.0)):
                pl = model.placement(mesh.nodes[nodes[k]] + a * u + b * v, np.cos(t) * u + np.sin(t) * v)
                best = max(best, float(np.linalg.norm(np.einsum("cnk,nk->c", q, model.dadt(pl.matrix)))))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", default="sphere,colin27")
    ap.add_argument("--angles", type=int, default=360)
    ap.add_argument("--step", type=float, default=1.0)
    args = ap.parse_args()
    print("| head | nodes | placements | set-up (model + 3 adjoint) | effective field grid | search | "
          "placements/s (search only / whole) | interp. vs exact (max, 50 random) | optimum: exact vs FEM | "
          "vs earlier grid best | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for head in args.heads.split(","):
        target, tags = CASES[head]
        p = validate_protocol({"kind": "tms", "head": head, "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                               "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]},
                               "stimulator": {"didt_A_per_us": 1.0}})
        t0 = time.perf_counter()
        model = TMSModel(p)
        setup = time.perf_counter() - t0
        res = search_tms(model, target, grid_step_mm=args.step, angles=args.angles, tags=tags, progress=False)
        whole = time.perf_counter() - t0
        tm = res.timings_s
        idx = roi_elements(model.mesh, target, 5.0, tags)
        q = model.target_functional(idx)
        rng = np.random.default_rng(0)
        errs = []
        for _ in range(50):
            i, a = rng.integers(res.objective_map.shape[0]), rng.integers(res.objective_map.shape[1])
            pos, mom = model.coil.transformed(rotated_frame(res.positions.frames[i], res.angles_rad[a]))
            exact = np.linalg.norm(exact_mean_e(effective_field(q, model.mesh.nodes, pos), mom, model.didt))
            errs.append(abs(res.objective_map[i, a] - exact) / exact)
        coarse = coarse_grid_best(model, q, target)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {head} | {model.mesh.n_nodes:,} | {len(res.positions.frames):,} x {len(res.angles_rad)} = "
              f"{res.evaluated:,} | {setup:.1f} + {tm['adjoint_s']:.1f} s | {tm['field_grid_s']:.1f} s "
              f"({res.grid_points:,} points) | {tm['score_s']:.1f} s | "
              f"{res.evaluated / tm['score_s']:,.0f} / {res.evaluated / whole:,.0f} | {max(errs):.1e} | "
              f"{res.objective_V_per_m:.5g} vs {res.fem_objective_V_per_m:.5g} V/m "
              f"({abs(res.objective_V_per_m / res.fem_objective_V_per_m - 1):.1e}) | "
              f"{res.objective_V_per_m:.5g} vs {coarse:.5g} V/m ({100 * (res.objective_V_per_m / coarse - 1):+.2f} %) "
              f"| {rss:.0f} MiB |", flush=True)
        print(f"|   total wall time {head}: {whole:.1f} s (model {setup:.1f} s, refine + full solve "
              f"{tm['refine_s'] + tm['full_solve_s']:.1f} s) |", flush=True)


if __name__ == "__main__":
    main()
