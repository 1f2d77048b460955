"""Linear solvers per head: AMG-CG variants and factorisations, then the leadfield of the 10-10 electrodes.

For each head (``--heads colin27,sphere,thin``; ``sphere`` is the ~665k-tet gmsh sphere of
bench_run.py, ``thin`` a synthetic head with a 3 mm skull and 2 mm CSF meshed from a label volume) it builds the tDCS system (C3-Fp2 5 x 5 cm pads on Colin27, a 25 mm disc and a
5 x 5 cm pad on the sphere) and prints one table: set-up seconds, seconds per solve (rtol 1e-10
for CG), CG iterations and memory.  Memory is the rise of the process's peak resident set
(VmHWM in /proc/self/status) over the set-up and solves, each candidate in a fresh child
process whose peak is reset (``/proc/self/clear_refs``) after the system is built, so neither
the assembly nor another candidate hides it.  Then, for Colin27, the leadfield
of the 10-10 electrodes (reference Iz) with each available backend.

Usage::

    python benchmarks/bench_solver.py [--heads colin27,sphere] [--leadfield] [--splu-timeout 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np

def hwm():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0

head, candidate = sys.argv[1], sys.argv[2]
sys.path.insert(0, "benchmarks")
from bench_solver import build_system
a, b, rtol = build_system(head)
import gc
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak to the current resident set (Linux)
    fh.write("5")
base = hwm()
from stimsim.fem.linear import FactorizedSolver, amg_hierarchy, amg_preconditioner, pcg, single_threaded_blas
out = {"n": a.shape[0], "nnz": a.nnz}
if candidate.startswith("amg"):  # numba and the kernels loaded before the clock starts, as in `stimsim run`
    from stimsim.fem import amg_kernels
    amg_kernels.warm_up()
t0 = time.perf_counter()
if candidate.startswith("amg"):
    if candidate in ("amg", "amg-numpy", "amg-pyamg-cycle"):
        # amg: the default (parallel hierarchy products, numba V-cycle); amg-numpy: the fallback without
        # numba (SciPy products, pyamg's sequential Gauss-Seidel in a lean cycle); amg-pyamg-cycle: the
        # same hierarchy applied through pyamg's MultilevelSolver.aspreconditioner (the old default)
        ml = amg_hierarchy(a, "numpy" if candidate == "amg-numpy" else "auto")
        precond = (ml.aspreconditioner(cycle="V") if candidate == "amg-pyamg-cycle"
                   else amg_preconditioner(ml, "numpy" if candidate == "amg-numpy" else "auto"))
    else:  # pyamg's own driver with other strength / smoother choices
        import pyamg
        strength = {"amg-sym0.05": ("symmetric", {"theta": 0.05}),
                    "amg-classical0.25": ("classical", {"theta": 0.25, "norm": "min"}),
                    "amg-evolution": "evolution", "amg-symgs": ("symmetric", {"theta": 0.02})}[candidate]
        sweep = "symmetric" if candidate == "amg-symgs" else None
        with single_threaded_blas():
            ml = pyamg.smoothed_aggregation_solver(
                a, B=np.ones((a.shape[0], 1)), symmetry="hermitian", strength=strength, max_coarse=500,
                presmoother=("gauss_seidel", {"sweep": sweep or "forward"}),
                postsmoother=("gauss_seidel", {"sweep": sweep or "backward"}))
        precond = ml.aspreconditioner(cycle="V")
    out["setup_s"] = time.perf_counter() - t0
    times, its = [], []
    for _ in range(3):
        t = time.perf_counter()
        x, it = pcg(a, b, precond, rtol, 1000)
        times.append(time.perf_counter() - t)
        its.append(it)
    out["solve_s"], out["iterations"] = min(times), its[0]
else:
    solver = FactorizedSolver(a, backend=candidate)
    out["setup_s"] = time.perf_counter() - t0
    out["stated_MiB"] = solver.memory_bytes / 2**20
    times = []
    for _ in range(3):
        t = time.perf_counter()
        x = solver.solve(b)
        times.append(time.perf_counter() - t)
    out["solve_s"], out["iterations"] = min(times), 0
    block = np.column_stack([b] * 16)
    t = time.perf_counter()
    solver.solve(block)
    out["per_column_16_s"] = (time.perf_counter() - t) / 16
out["relres"] = float(np.linalg.norm(b - a @ x) / np.linalg.norm(b))
out["peak_rise_MiB"] = (hwm() - base) / 2**20
print("RESULT " + json.dumps(out))
"""


def thin_skull_head() -> "Path":
    """A synthetic head meshed from a label volume, cached in benchmarks/_cache: nested ellipsoids
    (1 mm voxels; scalp 5 mm, skull 3 mm, CSF 2 mm, grey matter 3 mm thick, white matter inside; semi-axes
    of the scalp 72 x 90 x 78 mm), meshed by the default surface mesher (SimNIBS tags)."""
    from pathlib import Path

    from stimsim.head.meshers import make_head_mesh
    from stimsim.mesh import write_mesh

    path = Path(__file__).with_name("_cache") / "thin_skull_head.msh"
    if path.exists():
        return path
    n = np.array([170, 206, 182])
    x, y, z = [(g - (m - 1) / 2) for g, m in zip(np.mgrid[:n[0], :n[1], :n[2]], n)]
    semi = np.array([72.0, 90.0, 78.0])
    labels = np.zeros(tuple(n), np.uint8)
    # SimNIBS tags, outermost first: scalp 5, bone 4, CSF 3, GM 2, WM 1; each shell's depth in mm
    for tag, depth in ((5, 0.0), (4, 5.0), (3, 8.0), (2, 10.0), (1, 13.0)):
        a = semi - depth
        labels[(x / a[0]) ** 2 + (y / a[1]) ** 2 + (z / a[2]) ** 2 <= 1.0] = tag
    affine = np.eye(4)
    affine[:3, 3] = -(n - 1) / 2  # the head's centre at the origin
    mesh = make_head_mesh(labels, affine, "simnibs", progress=False)
    path.parent.mkdir(exist_ok=True)
    write_mesh(path, mesh)
    return path


def build_system(head: str):
    """The tDCS system (matrix, right-hand side, rtol) of a head, as `stimsim run` builds it."""
    from stimsim.fem import ElectrodeSpec, electrode_system, place_electrodes
    from stimsim.head_model import HeadModel, named_position
    from stimsim.protocol import validate_protocol

    if head == "thin":  # 5 x 5 cm pads on the left and right of the synthetic head's top
        hm = HeadModel.load(str(thin_skull_head()))
        specs = [ElectrodeSpec("L", (-50, 0, 60), 1e-3, "rect", size_mm=(50, 50), direction=(0, 1, 0)),
                 ElectrodeSpec("R", (50, 0, 60), -1e-3, "rect", size_mm=(50, 50), direction=(0, 1, 0))]
    elif head == "colin27":
        hm = HeadModel.load("colin27")
        proto = validate_protocol({"kind": "tdcs", "head": "colin27", "electrodes": [
            {"name": "C3", "position": "C3", "current_mA": 1.0, "shape": "rect", "size_mm": [50, 50]},
            {"name": "Fp2", "position": "Fp2", "current_mA": -1.0, "shape": "rect", "size_mm": [50, 50]}]})
        specs = [ElectrodeSpec(n, named_position(n, proto), c, "rect", size_mm=(50, 50))
                 for n, c in (("C3", 1e-3), ("Fp2", -1e-3))]
    else:
        try:
            from bench_run import sphere_file
        except ImportError:
            from benchmarks.bench_run import sphere_file
        hm = HeadModel.load(str(sphere_file(2.83)), {3: 0.33, 4: 0.0041, 5: 0.465})
        specs = [ElectrodeSpec("a", (0, 0, 95), 1e-3, "disc", diameter_mm=25),
                 ElectrodeSpec("c", (95, 0, 0), -1e-3, "rect", size_mm=(50, 50), direction=(0, 1, 0))]
    system = electrode_system(hm.stiffness, place_electrodes(hm.mesh, specs))
    return system.matrix, system.rhs([s.current_A for s in specs]), 1e-10


def run_candidate(head: str, candidate: str, timeout: float) -> dict:
    try:
        res = subprocess.run([sys.executable, "-c", CHILD, head, candidate], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:g} s"}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1][:80]}


def leadfield_table(backends):
    import re

    from stimsim.head.eeg import head_positions
    from stimsim.head_model import HeadModel
    from stimsim.planning import compute_leadfield

    head = HeadModel.load("colin27")
    ten_ten = re.compile(r"^(Fp|AF|F|FC|FT|C|T|CP|TP|P|PO|O|I)(\d+|z)$")
    all_pos = head_positions("colin27")
    pos = {k: tuple(v) for k, v in all_pos.items() if ten_ten.match(k) and k not in {"T3", "T4", "T5", "T6", "Iz"}}
    pos["Iz"] = tuple(all_pos["Iz"])
    print(f"\n### Colin27 leadfield, {len(pos) - 1} electrodes of the 10-10 system (point electrodes), reference Iz\n")
    print("| backend | solver set-up | total | per electrode | solver memory (stated) | peak RSS rise |")
    print("|---|---|---|---|---|---|")
    for backend in backends:
        before = _hwm()
        t = time.perf_counter()
        lf = compute_leadfield(head, pos, "Iz", backend=backend, progress=False)
        total = time.perf_counter() - t
        k = len(lf.names) - 1
        print(f"| {lf.meta['backend']} | {lf.meta['solver_setup_s']:.2f} s | {total:.1f} s | {total / k:.3f} s | "
              f"{lf.meta['solver_memory_MiB']:.0f} MiB | {(_hwm() - before) / 2**20:.0f} MiB (fields "
              f"{lf.fields.nbytes / 2**20:.0f} MiB) |", flush=True)
        del lf


def _hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", default="colin27,sphere")
    ap.add_argument("--candidates", default="amg,amg-numpy,amg-pyamg-cycle,amg-sym0.05,amg-classical0.25,"
                                            "amg-evolution,amg-symgs,pardiso,splu")
    ap.add_argument("--splu-timeout", type=float, default=60.0, help="SuperLU rarely finishes on 3-D heads")
    ap.add_argument("--leadfield", action="store_true", help="also the Colin27 10-10 leadfield per backend")
    args = ap.parse_args()
    from stimsim.fem.linear import backend_available

    for head in args.heads.split(","):
        print(f"\n### {head}: tDCS system, rtol 1e-10\n")
        print("| solver | set-up | solve | CG iterations | per column, blocks of 16 | memory: peak RSS rise "
              "(stated) | relative residual |")
        print("|---|---|---|---|---|---|---|")
        for cand in args.candidates.split(","):
            if not cand.startswith("amg") and not backend_available(cand):
                print(f"| {cand} | not installed | | | | | |")
                continue
            r = run_candidate(head, cand, args.splu_timeout + 60 if cand == "splu" else 600)
            if "error" in r:
                print(f"| {cand} | {r['error']} | | | | | |", flush=True)
                continue
            col = f"{r['per_column_16_s']:.3f} s" if "per_column_16_s" in r else "-"
            stated = f" ({r['stated_MiB']:.0f})" if "stated_MiB" in r else ""
            print(f"| {cand} | {r['setup_s']:.2f} s | {r['solve_s']:.3f} s | {r['iterations']} | {col} | "
                  f"{r['peak_rise_MiB']:.0f} MiB{stated} | {r['relres']:.1e} |", flush=True)
    if args.leadfield:
        leadfield_table([b for b in ("pardiso", "amg") if backend_available(b)])


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
