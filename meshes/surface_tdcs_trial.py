"""tDCS check (C3 anode, Fp2 cathode, point electrodes, 1 mA) on a trial Colin27 mesh file."""
import json
import sys
import time

import numpy as np

from stimsim.head.eeg import project_to_scalp, read_positions
from stimsim.mesh import read_mesh
from stimsim.protocol import validate_protocol
from stimsim.simulation import simulate

mesh, _ = read_mesh(sys.argv[1])
pos = read_positions("/work/shared/data/heads/colin27/electrodes_1005_projected.tsv")
c3, fp2 = project_to_scalp(mesh, np.array([pos["C3"], pos["Fp2"]]))
p = validate_protocol({
    "kind": "tdcs", "head": "sphere",
    "electrodes": [
        {"name": "anode", "position": c3.tolist(), "current_mA": 1.0, "shape": "point"},
        {"name": "cathode", "position": fp2.tolist(), "current_mA": -1.0, "shape": "point"},
    ]})
t = time.perf_counter()
res = simulate(p, mesh=mesh)
wall = time.perf_counter() - t
gm = res.magnE[res.mesh.tet_tags == 2]
print(json.dumps({
    "finite": bool(np.isfinite(res.E).all() and np.isfinite(res.potential_V).all()),
    "currents_A": res.electrode_currents_A,
    "rel_err": {k: res.electrode_currents_A[k] / v - 1 for k, v in (("anode", 1e-3), ("cathode", -1e-3))},
    "iterations": int(res.solve_info.iterations), "timings": res.timings if hasattr(res, "timings") else None,
    "simulate_wall_s": wall, "gm_p99_V_per_m": float(np.percentile(gm, 99)),
    "shift_mm": [float(np.linalg.norm(c3 - pos["C3"])), float(np.linalg.norm(fp2 - pos["Fp2"]))]},
    indent=1, default=str))
