"""Write tests/data/reference_fields.npz: fields of four fixed runs at fixed element/node samples.

Run once from a commit whose numbers are the reference (see tests/test_reference_fields.py);
the restructured core must reproduce them to 1e-10 (relative).  Usage:
``python tests/data/make_reference_fields.py``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CASES = {
    "sphere_tdcs": {"kind": "tdcs", "head": "sphere", "electrodes": [
        {"name": "a", "position": [0, 0, 95], "current_mA": 1.0, "shape": "disc", "diameter_mm": 25},
        {"name": "c", "position": [95, 0, 0], "current_mA": -1.0, "shape": "rect", "size_mm": [50, 50],
         "direction": [0, 1, 0]}]},
    "sphere_tms": {"kind": "tms", "head": "sphere", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                   "placement": {"center": [0, 0, 95], "direction": [0, 1, 0], "distance_mm": 4},
                   "stimulator": {"didt_A_per_us": 1.0}},
    "colin27_tdcs": {"kind": "tdcs", "head": "colin27", "electrodes": [
        {"name": "C3", "position": "C3", "current_mA": 1.0, "shape": "rect", "size_mm": [50, 50]},
        {"name": "Fp2", "position": "Fp2", "current_mA": -1.0, "shape": "rect", "size_mm": [50, 50]}]},
    "colin27_tms": {"kind": "tms", "head": "colin27", "coil": {"file": "MagVenture_MC_B70.ccd"},
                    "placement": {"center": "C3", "direction": [0, 1, 0], "distance_mm": 4},
                    "stimulator": {"didt_A_per_us": 100}},
}
SAMPLES = 3000


def compute(name: str):
    from stimsim.protocol import validate_protocol
    from stimsim.simulation import simulate

    r = simulate(validate_protocol(CASES[name]))
    rng = np.random.default_rng(7)
    tets = np.sort(rng.choice(r.mesh.n_tets, SAMPLES, replace=False))
    nodes = np.sort(rng.choice(r.mesh.n_nodes, SAMPLES, replace=False))
    return r, tets, nodes


if __name__ == "__main__":
    out = {}
    for name in CASES:
        r, tets, nodes = compute(name)
        out[f"{name}_tets"], out[f"{name}_nodes"] = tets, nodes
        out[f"{name}_E"] = r.E[tets]
        out[f"{name}_v"] = r.potential_V[nodes]
        if r.E_recovered is not None:
            out[f"{name}_E_recovered"] = r.E_recovered[tets]
        print(name, r.mesh.n_tets, float(np.abs(r.E).max()))
    np.savez_compressed(Path(__file__).with_name("reference_fields.npz"), **out)
