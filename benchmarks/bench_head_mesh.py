"""Colin27 1 mm labels -> tetrahedral mesh: time, peak memory, tets, volume errors, connectivity.

    python benchmarks/bench_head_mesh.py [ELEMENT_SIZE_MM ...]
"""

import resource
import sys
import time
from pathlib import Path

from stimsim.head.meshing import DEFAULT_ELEMENT_SIZE_MM, make_head_mesh, quality_summary

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27" / "labels.nii.gz"

import os

sizes = [float(a) for a in sys.argv[1:]] or [DEFAULT_ELEMENT_SIZE_MM]
print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
print("| h mm | time s | peak GB | nodes | tets | min dihedral | vol err % (WM GM CSF bone scalp) | pieces CSF / bone |")
print("|---|---|---|---|---|---|---|---|")
for h in sizes:
    t = time.perf_counter()
    mesh, info = make_head_mesh(LABELS, None, "colin27", element_size_mm=h, cache=False, progress=False,
                                return_info=True)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    q = quality_summary(mesh, info.voxel_volume_mm3)
    err = " ".join(f"{100 * q['volume_error_per_tag'][k]:+.1f}" for k in (1, 2, 3, 4, 5))
    c = q["connectivity"]
    print(f"| {h} | {dt:.1f} | {peak:.2f} | {mesh.n_nodes:,} | {mesh.n_tets:,} | {q['min_dihedral_deg']:.2f} | {err} | "
          f"{c[3]['pieces']} ({100 * c[3]['largest_fraction']:.2f} %) / {c[4]['pieces']} "
          f"({100 * c[4]['largest_fraction']:.2f} %) |")
print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
