"""What the mesh does to the field in folded grey matter: the random-folds phantom of
tests/test_sulcal_csf.py (sulci about 1.5 mm wide, narrower than the 4 mm surface cells), meshed with
and without free vertices on the folds' walls (surf-6.19) and at two element sizes, each field against
that of the labels' own voxel model (six tetrahedra per voxel; there is no analytic solution for folds).

    python benchmarks/bench_fold_field.py [--voxel-mm 1.0]

Prints, per mesh: tetrahedra, seconds to mesh, the grey matter's relative L2 error of E and its mean
|E| ratio against the voxel model (whose staircase reads about 10 % high on a labelled sphere).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from test_sulcal_csf import folded_field_errors

    ap = argparse.ArgumentParser()
    ap.add_argument("--voxel-mm", type=float, default=1.0)
    args = ap.parse_args()
    off = {"surface_options": {"fold_point_cell": 0.0}}
    variants = {"8 mm (default)": {}, "8 mm, no fold vertices": off,
                "4 mm": {"element_size_mm": 4.0}, "4 mm, no fold vertices": {"element_size_mm": 4.0, **off}}
    got = folded_field_errors(args.voxel_mm, variants)
    print("| mesh | tetrahedra | mesh s | grey matter E, relative L2 error | mean \\|E\\| / voxel model's |")
    print("|---|---|---|---|---|")
    for name, (err, ratio, n, s) in got.items():
        print(f"| {name} | {n:,} | {s:.1f} | {err:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
