"""Two grey-matter pieces a small gap apart, through the surface mesher: are they kept apart, and at what
volume cost?  Random gaps, orientations, voxel sizes and element sizes (issue 20: "no tissue bridged
where the voxels do not touch"); the cases of tests/test_mesh_acceptance.py's two-box test, drawn at random.

    python benchmarks/bench_separated_pieces.py [--cases 16] [--seed 11] [--gap 0.4 8.0]

Prints one row per case (cases whose voxels touch at a corner are skipped: those are one piece) and the
number bridged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from scipy import ndimage as ndi

    from stimsim.head.meshers import make_head_mesh, tissue_connectivity
    from stimsim.mesh.checks import element_quality
    from test_mesh_acceptance import _two_boxes

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--gap", type=float, nargs=2, default=(0.4, 8.0), help="gap range, mm")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| voxel mm | element mm | gap mm | angles deg | GM pieces | volume error % GM CSF bone scalp "
          "| tets below 5 deg / 0.1 | s |\n|---|---|---|---|---|---|---|---|")
    bridged = worst = 0
    for _ in range(args.cases):
        vox, h = float(rng.choice([1.0, 0.5])), float(rng.choice([8.0, 6.0, 4.0]))
        gap, angles = float(rng.uniform(*args.gap)), tuple(float(a) for a in rng.uniform(0, 90, 2))
        try:
            vol, affine = _two_boxes(vox, gap, angles)
        except AssertionError:  # the voxels touch at a corner: one piece
            continue
        t = time.perf_counter()
        mesh = make_head_mesh(vol, affine, "simnibs", method="surface", element_size_mm=h, progress=False,
                              cache=False)
        pieces = tissue_connectivity(mesh)[2]["pieces"]
        vv = np.bincount(vol.ravel(), minlength=6)[2:6] * vox ** 3
        err = (np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=6)[2:6] / vv - 1) * 100
        q = element_quality(mesh)
        poor = int(np.sum((q["min_dihedral_deg"] < 5) | (q["radius_ratio"] < 0.1)))
        bridged += pieces != 2
        worst = max(worst, float(np.abs(err).max()))
        print(f"| {vox:g} | {h:g} | {gap:.2f} | {angles[0]:.0f}, {angles[1]:.0f} | {pieces} | "
              f"{' '.join(f'{e:+.2f}' for e in err)} | {poor} | {time.perf_counter() - t:.1f} |")
    print(f"\nbridged: {bridged}; largest volume error {worst:.2f} %")


if __name__ == "__main__":
    main()
