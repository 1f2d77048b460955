"""T1 MRI -> head folder (``stimsim head``): time and peak memory per stage, Dice per tissue, the
subject -> MNI affine.

    python benchmarks/bench_mri.py [T1] [--labels LABELS --labels-map colin27] [--out DIR] [--fast]
                                   [--threads 2] [--voxel-mm 3] [--mni-space]

Defaults: the shared Colin27 1 mm T1 against its shared label volume (MCX labels, map ``colin27``),
``--mni-space`` on (Colin27 is in MNI space, so the affine should be near the identity).  A rerun
with the same ``--out`` resumes from its ``stimsim-cache/`` (the table then says "cache").
Targets (issue 15): 1 mm T1 <= 20 min wall, <= 8 GB; Dice WM >= 0.82, GM >= 0.76, bone >= 0.74,
scalp >= 0.90.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27"
NAMES = {1: "WM", 2: "GM", 3: "CSF", 4: "bone", 5: "scalp"}


def dice_table(labels_path, ref_path, ref_map, grid_img) -> dict:
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from stimsim.head.labels import apply_label_map, label_map

    ours = np.asarray(resample_from_to(nib.load(str(labels_path)), grid_img, order=0).dataobj).astype(np.int64)
    ours[ours == 6] = 5  # eyes count as scalp when the reference has no eyes
    ref = apply_label_map(np.asarray(resample_from_to(nib.load(str(ref_path)), grid_img, order=0).dataobj)
                          .astype(np.int64), label_map(ref_map))
    from stimsim.head.meshers.thickness import tag_dice

    return tag_dice(ours, ref, NAMES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("t1", nargs="?", default=str(SHARED / "ch2.nii.gz"))
    ap.add_argument("--labels", default=str(SHARED / "labels.nii.gz"), help="reference label volume ('' = none)")
    ap.add_argument("--labels-map", default="colin27")
    ap.add_argument("--out", default=None, help="head folder (default: a temporary folder)")
    ap.add_argument("--fast", action="store_true", help="SAMSEG coarse level only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--voxel-mm", type=float, default=None, help="resample the T1 first (e.g. 3)")
    ap.add_argument("--element-size", type=float, default=None)
    ap.add_argument("--no-mni-space", dest="mni_space", action="store_false",
                    help="the T1 is not in MNI space (skip the identity check)")
    args = ap.parse_args()

    import nibabel as nib

    from stimsim.head.folder import read_head_folder
    from stimsim.head.subject import make_head_folder

    tmp = tempfile.TemporaryDirectory(prefix="bench_mri_")
    t1 = Path(args.t1)
    grid = nib.load(str(t1))
    if args.voxel_mm:
        from nibabel.processing import resample_to_output

        grid = resample_to_output(grid, voxel_sizes=args.voxel_mm, order=1)
        t1 = Path(tmp.name) / f"t1_{args.voxel_mm:g}mm.nii.gz"
        nib.save(grid, str(t1))
    out = Path(args.out) if args.out else Path(tmp.name) / "subj"
    t0 = time.perf_counter()
    info = make_head_folder(t1, out, threads=args.threads, fast=args.fast, overwrite=True,
                            element_size_mm=args.element_size, progress=lambda s: print(s, file=sys.stderr))
    wall = time.perf_counter() - t0

    print(f"\n{t1.name}: {'x'.join(map(str, grid.shape[:3]))} voxels, "
          f"{'fast' if args.fast else 'standard'} SAMSEG, {args.threads} threads, wall {wall / 60:.1f} min")
    print(f"{'stage':<10} {'time s':>8} {'peak GB':>8}  note")
    for name, rec in info["stages"].items():
        peak = max(rec.get("peak_rss_mb") or 0, rec.get("child_peak_rss_mb") or 0) / 1024
        note = "cache" if rec.get("cached") else ""
        if rec.get("samseg_time_s"):
            note += f" SAMSEG child {rec['samseg_time_s']:.0f} s"
        print(f"{name:<10} {rec['time_s']:>8.1f} {peak:>8.2f}  {note}")
    vol = info["tissue_volume_cm3"]
    print("tissue volume cm^3 (segmentation -> labels -> mesh): " + ", ".join(
        f"{NAMES.get(int(k), 'eyes')} {v:.0f}->{vol['labels'].get(k, 0):.0f}->{vol['mesh'].get(k, 0):.0f}"
        for k, v in sorted(vol["segmentation"].items(), key=lambda kv: int(kv[0]))))
    print(f"mesh: {info['mesh']['nodes']:,} nodes, {info['mesh']['tetrahedra']:,} tetrahedra; "
          f"clean-up changed {info['cleanup']['nesting_changed_voxels']:,} voxels (nesting), "
          f"neck slices added {info['cleanup']['neck_slices_added']}")
    if args.labels:
        d = dice_table(out / "labels.nii.gz", args.labels, args.labels_map, grid)
        print("Dice vs reference: " + ", ".join(f"{NAMES[t]} {v:.3f}" for t, v in d.items()))
    head = read_head_folder(out)
    m = head.subject_to_mni_matrix
    print("subject -> MNI affine:\n" + "\n".join("  " + " ".join(f"{v:9.4f}" for v in row) for row in m))
    if args.mni_space:
        box = np.array(np.meshgrid([-70, 70], [-100, 70], [-50, 80], indexing="ij")).reshape(3, -1).T
        moved = np.linalg.norm(head.subject_to_mni(box) - box, axis=1)
        print(f"MNI-space input: brain-box corners move {moved.mean():.1f} mm on average, {moved.max():.1f} mm "
              "at most (0 = identity)")
    print(json.dumps({"wall_s": round(wall, 1), "stages": info["stages"]}, default=str))


if __name__ == "__main__":
    main()
