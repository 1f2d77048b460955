"""Regenerate stimsim/data/colin27.msh.gz and stimsim/data/colin27_1005.tsv.

Run from the repository root (needs nibabel and the shared reference data)::

    python meshes/build_colin27.py [--element-size 4.0] [--data ../shared/data/heads/colin27]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stimsim.head.eeg import project_to_scalp, read_positions
from stimsim.head.meshing import make_head_mesh, print_summary, quality_summary
from stimsim.mesh import write_msh

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--element-size", type=float, default=4.0)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "heads" / "colin27")
    ap.add_argument("--out", type=Path, default=ROOT / "stimsim" / "data")
    args = ap.parse_args()
    t = time.perf_counter()
    mesh, info = make_head_mesh(args.data / "labels.nii.gz", None, "colin27", element_size_mm=args.element_size,
                                cache=False, progress=True, return_info=True)
    print(f"meshed in {time.perf_counter() - t:.1f} s")
    print_summary(quality_summary(mesh, info.voxel_volume_mm3), info.voxel_volume_mm3)
    out = args.out / "colin27.msh.gz"
    write_msh(out, mesh)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    pos = read_positions(args.data / "electrodes_1005.elc")
    names = list(pos)
    proj = project_to_scalp(mesh, np.array([pos[n] for n in names]))
    shift = np.linalg.norm(proj - np.array([pos[n] for n in names]), axis=1)
    tsv = args.out / "colin27_1005.tsv"
    with open(tsv, "w", encoding="utf-8") as fh:
        fh.write("name\tx_mm\ty_mm\tz_mm\n")
        for n, p in zip(names, proj):
            fh.write(f"{n}\t{p[0]:.3f}\t{p[1]:.3f}\t{p[2]:.3f}\n")
    print(f"wrote {tsv}: {len(names)} positions projected onto the mesh scalp, shift median "
          f"{np.median(shift):.2f} mm, max {shift.max():.2f} mm")


if __name__ == "__main__":
    main()
