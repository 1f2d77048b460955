"""Whole `stimsim run` on the shipped Colin27 head and the ~665k-tet 3-layer sphere: wall time, peak memory, stage timings.

Prints one table per case (Colin27 tDCS C3-Fp2 with 5 x 5 cm pads, the solver issue's case; on the
sphere tDCS with two 15 mm discs and TMS with the 2712-dipole figure-8), each `stimsim run` a fresh
process measured with getrusage (peak RSS of the child).  The sphere's accuracy against the
analytic solution is benchmarks/bench_accuracy.py.

Usage::

    python benchmarks/bench_run.py [--size 2.8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

CACHE = Path(__file__).resolve().parent / "_cache"


def sphere_file(size: float) -> Path:
    from stimsim.mesh import write_msh
    from stimsim.mesh.sphere import make_sphere_mesh

    path = CACHE / f"sphere3_h{size:g}.msh"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        write_msh(path, make_sphere_mesh((85, 90, 95), element_size_mm=size))
    return path


def run_child(protocol: dict, workdir: Path) -> dict:
    """Run `stimsim run` in a fresh process; return wall time, peak RSS and the summary."""
    p = workdir / "p.yaml"
    p.write_text(yaml.safe_dump(protocol))
    # a new results folder each run, as a user's run usually writes; the previous run's folder
    # is deleted before the clock starts (replacing an existing one adds ~0.1 s of unlinking)
    import shutil

    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    # what the `stimsim` console script runs (stimsim.cli:main), timed from the first import
    code = ("import sys, time; t=time.perf_counter(); from stimsim.cli import main\n"
            "sys.argv = ['stimsim', '-q', sys.argv[1], sys.argv[2], '--out', sys.argv[3]]\n"
            "try:\n    main()\n"
            "finally:\n    print('WALL', time.perf_counter()-t, flush=True)\n")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = r0.ru_maxrss
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "run", str(p), str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode:
        raise RuntimeError(res.stderr)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = r1.ru_maxrss
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    inner = float([ln for ln in res.stdout.splitlines() if ln.startswith("WALL")][0].split()[1])
    return {"wall_s": wall, "in_process_s": inner, "cpu_s": cpu, "peak_MiB": max(peak, before) / 1024,
            "summary": json.loads((out / "summary.json").read_text())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, default=2.83, help="gmsh element size, mm (2.83 -> ~670k tets)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    mesh_path = sphere_file(args.size)
    # byte-compile the package, as `pip install` of a wheel does: with PYTHONDONTWRITEBYTECODE
    # set (as on CI machines) an editable install would otherwise recompile every module per run
    import compileall

    import stimsim

    compileall.compile_dir(Path(stimsim.__file__).parent, quiet=1)
    cases = {
        "Colin27 tDCS C3-Fp2 5x5 cm pads": {
            "kind": "tdcs", "head": "colin27",
            "electrodes": [
                {"name": "C3", "position": "C3", "current_mA": 1.0, "shape": "rect", "size_mm": [50, 50]},
                {"name": "Fp2", "position": "Fp2", "current_mA": -1.0, "shape": "rect", "size_mm": [50, 50]}]},
        "sphere tDCS 2x15 mm discs": {
            "kind": "tdcs", "head": str(mesh_path), "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
            "electrodes": [
                {"name": "a", "position": [95, 0, 0], "current_mA": 1.0, "shape": "disc", "diameter_mm": 15},
                {"name": "c", "position": (95 * np.array([-0.5**0.5, 0, 0.5**0.5])).tolist(),
                 "current_mA": -1.0, "shape": "disc", "diameter_mm": 15}]},
        "sphere TMS Magstim fig-8": {
            "kind": "tms", "head": str(mesh_path), "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
            "coil": {"file": "Magstim_70mm_Fig8.ccd"},
            "placement": {"center": [0, 0, 95], "direction": [0, 1, 0], "distance_mm": 4},
            "stimulator": {"didt_A_per_us": 1.0}},
    }
    print(f"mesh: {mesh_path.name} ({mesh_path.stat().st_size / 2**20:.0f} MiB, MSH 2.2 binary); "
          f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}\n")
    for name, protocol in cases.items():
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            run_child(protocol, Path(tmp))  # warm-up: numba cache, page cache
            for _ in range(args.repeat):
                runs.append(run_child(protocol, Path(tmp)))
        best = min(runs, key=lambda r: r["wall_s"])
        s = best["summary"]
        print(f"## {name}: {s['mesh']['nodes']} nodes, {s['mesh']['tetrahedra']} tets")
        print("| stage | seconds |\n|---|---|")
        for k, v in s["timings_s"].items():
            print(f"| {k} | {v:.3f} |")
        print(f"| CG iterations | {s['solver']['iterations']} |")
        print(f"| **whole `stimsim run` (process wall, incl. imports)** | **{best['wall_s']:.2f}** "
              f"(median {np.median([r['wall_s'] for r in runs]):.2f}) |")
        print(f"| in-process (after interpreter start) | {best['in_process_s']:.2f} |")
        print(f"| CPU time (user + sys; > wall when threads run, a guide when the machine is shared) "
              f"| {min(r['cpu_s'] for r in runs):.2f} |")
        print(f"| **peak RSS** | **{max(r['peak_MiB'] for r in runs):.0f} MiB** |\n")


if __name__ == "__main__":
    main()
