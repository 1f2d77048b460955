"""Regenerate stimsim/data/colin27.msh.gz and stimsim/data/colin27_1005.tsv.

Run from the repository root (needs nibabel and the shared reference data)::

    python meshes/build_colin27.py [--element-size 4.0] [--data ../shared/data/heads/colin27] [--force]

It refuses to write unless every tissue is present and within 5 % of its voxel volume, no tet is
inverted and CSF and skull are single pieces (issue 5 acceptance); --force writes anyway.
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
    ap.add_argument("--element-size", type=float, default=4.0)  # see meshes/README.md
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "heads" / "colin27")
    ap.add_argument("--out", type=Path, default=ROOT / "stimsim" / "data")
    ap.add_argument("--force", action="store_true", help="write even if the acceptance criteria fail")
    args = ap.parse_args()
    t = time.perf_counter()
    mesh, info = make_head_mesh(args.data / "labels.nii.gz", None, "colin27", element_size_mm=args.element_size,
                                cache=False, progress=True, return_info=True)
    print(f"meshed in {time.perf_counter() - t:.1f} s")
    q = quality_summary(mesh, info.voxel_volume_mm3)
    print_summary(q, info.voxel_volume_mm3)
    ok = (set(mesh.tissue_tags.tolist()) >= {1, 2, 3, 4, 5} and q["n_inverted"] == 0
          and all(abs(e) <= 0.05 for e in q["volume_error_per_tag"].values())
          and q["connectivity"][3]["pieces"] == 1 and q["connectivity"][4]["pieces"] == 1)
    if not ok and not args.force:
        raise SystemExit("not written: the mesh misses the acceptance criteria (volume within 5 %, "
                         "single CSF and skull pieces); --force to write anyway")
    out = args.out / "colin27.msh.gz"
    import gzip
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # gzip level 9 (write_msh uses level 1)
        raw = write_msh(Path(tmp) / "colin27.msh", mesh)
        with open(raw, "rb") as src, gzip.open(out, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    pos = read_positions(args.data / "electrodes_1005_projected.tsv")
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
