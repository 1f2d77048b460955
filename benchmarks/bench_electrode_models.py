"""Equipotential patch against the layered (sponge) electrode model, on one head.

tDCS C3-Fp2 with 5 x 5 cm pads (2 mA) on the embedded Colin27 head by default: once with the
pads as equipotential patches on the skin (``model: patch``) and once with a saline sponge of
``--thickness`` mm (``model: sponge``; conductivity ``--sponge`` S/m, SimNIBS's saline 1.0 by
default) meshed under each pad.  Prints per model: the solve, grey-matter |E| (p50, p99, max),
the relative L2 difference of E in the brain against the patch model, and per pad the skin
current density (mean, p95, max, rim mean) with the mean over the nominal area beside it.

Usage::

    python benchmarks/bench_electrode_models.py [--head colin27] [--thickness 5] [--sponge 1.0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def protocol(head: str, model: str, thickness: float, sponge: float, a: str, b: str):
    from stimsim.protocol import validate_protocol

    pad = {"shape": "rect", "size_mm": [50, 50], "model": model}
    if model == "sponge":
        pad["thickness_mm"] = thickness
    return validate_protocol({
        "kind": "tdcs", "head": head, "conductivities": {"saline": sponge},
        "electrodes": [dict(pad, name=a, position=a, current_mA=2.0),
                       dict(pad, name=b, position=b, current_mA=-2.0)]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", default="colin27")
    ap.add_argument("--pads", default="C3,Fp2", help="two EEG names: anode,cathode")
    ap.add_argument("--thickness", type=float, default=5.0, help="sponge thickness, mm")
    ap.add_argument("--sponge", type=float, default=1.0, help="sponge conductivity, S/m")
    args = ap.parse_args()
    from stimsim.stats import weighted_percentiles
    from stimsim.simulation import simulate

    a, b = args.pads.split(",")
    rows, ref = [], None
    for model in ("patch", "sponge"):
        t = time.perf_counter()
        r = simulate(protocol(args.head, model, args.thickness, args.sponge, a, b))
        wall = time.perf_counter() - t
        n = r.mesh.n_tets if ref is None else ref.mesh.n_tets
        brain = np.isin(r.mesh.tet_tags[:n], [1, 2]) if np.isin(r.mesh.tet_tags, [1, 2]).any() \
            else r.mesh.tet_tags[:n] == 3
        gm = r.mesh.tet_tags[:n] == (2 if (r.mesh.tet_tags == 2).any() else 3)
        e = np.linalg.norm(r.E[:n], axis=1)
        p50, p99 = weighted_percentiles(e[gm], r.mesh.volumes_mm3[:n][gm], [50, 99])
        diff = float("nan") if ref is None else float(
            np.linalg.norm(r.E[:n][brain] - ref.E[brain]) / np.linalg.norm(ref.E[brain]))
        rows.append((model, r.mesh.n_tets, r.solve_info.iterations, wall, p50, p99, float(e[gm].max()), diff,
                     r.skin_current_density, {el.name: el.current_density_A_per_m2 for el in r.electrodes}))
        ref = ref or r
    print(f"head {args.head}, pads {a}(+2 mA) {b}(-2 mA), 5 x 5 cm; sponge {args.thickness:g} mm, "
          f"{args.sponge:g} S/m")
    print(f"{'model':7} {'tets':>8} {'CG it':>5} {'run s':>6} {'GM|E| p50':>9} {'p99':>6} {'max':>6} "
          f"{'brain E diff':>12}")
    for model, tets, it, wall, p50, p99, mx, diff, _, _ in rows:
        print(f"{model:7} {tets:8d} {it:5d} {wall:6.2f} {p50:9.4f} {p99:6.4f} {mx:6.3f} {diff:12.2%}")
    print("\nskin current density under each pad, A/m^2 (nominal: 2 mA over 25 cm^2 = 0.8)")
    print(f"{'model':7} {'pad':5} {'nominal':>8} {'mean':>7} {'p95':>7} {'max':>7} {'rim mean':>8} {'max on rim':>10}")
    for model, *_, skin, nominal in rows:
        for name, s in skin.items():
            print(f"{model:7} {name:5} {nominal[name]:8.3f} {s['mean']:7.3f} {s['p95']:7.3f} {s['max']:7.3f} "
                  f"{s['rim_mean']:8.3f} {str(s['max_on_rim']):>10}")


if __name__ == "__main__":
    main()
