"""Regenerate stimsim/data/colin27.msh.gz and stimsim/data/colin27_1005.tsv.

Run from the repository root (needs nibabel, scikit-image and the optional TetGen wheel
``pip install tetgen`` -- TetGen is AGPL-3.0 and only a build tool here -- and the shared data)::

    python meshes/build_colin27.py [--data ../shared/data/heads/colin27] [--force]

Mesher: :mod:`stimsim.head.meshers.surface` (nested smoothed signed-distance surfaces, marching
cubes on every 4th voxel, TetGen ``-pq2.5/5a60.34Y``).  It refuses to write unless every tissue is
present and within 5 % of its voxel volume, no tet is inverted or flat, every tissue (CSF and
skull included) is a single face-connected piece and the file is under 8 MB (issue 5
acceptance); --force writes anyway.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from stimsim.head.eeg import project_to_scalp, read_positions
from stimsim.head.meshers import print_summary, quality_summary
from stimsim.head.meshers import make_surface_head_mesh
from stimsim.head.meshers.surface import compact_for_shipping
from stimsim.mesh import check_mesh, write_msh

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--element-size", type=float, default=8.0, help="TetGen max volume h^3/(6 sqrt 2)")
    ap.add_argument("--surface-step", type=int, default=4, help="marching cubes on every n-th voxel")
    ap.add_argument("--thickness-scale", type=float, default=2.0, help="minimum layer thicknesses x this")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "heads" / "colin27")
    ap.add_argument("--out", type=Path, default=ROOT / "stimsim" / "data")
    ap.add_argument("--force", action="store_true", help="write even if the acceptance criteria fail")
    args = ap.parse_args()
    t = time.perf_counter()
    mesh, voxel_vol, info = make_surface_head_mesh(
        args.data / "labels.nii.gz", "colin27", element_size_mm=args.element_size, surface_step=args.surface_step,
        thickness_scale=args.thickness_scale)
    print(f"meshed in {time.perf_counter() - t:.1f} s ({info['tetgen_switches']}; {info['timings_s']})")
    mesh = compact_for_shipping(mesh)
    check_mesh(mesh, known_tags={1, 2, 3, 4, 5})  # flat / inverted tets, one connected piece
    q = quality_summary(mesh, voxel_vol)
    print_summary(q, voxel_vol)
    ok = (set(mesh.tissue_tags.tolist()) >= {1, 2, 3, 4, 5} and q["n_inverted"] == 0
          and all(abs(e) <= 0.05 for e in q["volume_error_per_tag"].values())
          and all(c["pieces"] == 1 for c in q["connectivity"].values()))
    if not ok and not args.force:
        raise SystemExit("not written: the mesh misses the acceptance criteria (volume within 5 %, "
                         "single pieces); --force to write anyway")
    out = args.out / "colin27.msh.gz"
    with tempfile.TemporaryDirectory() as tmp:  # gzip level 9 (write_msh uses level 1)
        raw = write_msh(Path(tmp) / "colin27.msh", mesh)
        with open(raw, "rb") as src, open(out, "wb") as fh, \
                gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=fh, mtime=0) as dst:
            shutil.copyfileobj(src, dst)  # no name / time in the header: byte-reproducible
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.2f} MB)")
    if size > 8.0 and not args.force:
        out.unlink()
        raise SystemExit(f"not written: {size:.1f} MB is over the 8 MB budget; use a larger --surface-step")
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
