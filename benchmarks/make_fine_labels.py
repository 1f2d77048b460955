"""Write a 0.5 mm (or finer) whole-head label volume from Colin27's 1 mm labels, for the mesher
benchmarks: each nesting layer's signed distance, smoothed (sigma 0.6 mm), is sampled on the finer grid
shifted by a quarter of a 1 mm voxel, so the new voxels do not line up with the old ones (splitting
each voxel, ``bench_head_mesh.py --upsample``, keeps the 1 mm staircase in 2 x 2 x 2 blocks).  The
air cavities are carried the same way.  ``--fov`` pads it with background to a scan's field of view
(e.g. 394 466 620, a 0.5 mm volume the issue names).  SimNIBS tags (``--label-map simnibs``).

    python benchmarks/make_fine_labels.py OUT.nii.gz [--voxel 0.5] [--fov 394 466 620]
    python benchmarks/bench_head_mesh.py --method surface --labels OUT.nii.gz --label-map simnibs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27" / "labels.nii.gz"


def main() -> None:
    import nibabel as nib
    import scipy.ndimage as ndi

    from stimsim.head.labels import apply_label_map, label_map
    from stimsim.head.meshers.topology import distance_to_background
    from stimsim.tissues import LAYER_FILL_TAG, layer_lut

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--voxel", type=float, default=0.5, help="new voxel size, mm (1 mm / an integer)")
    ap.add_argument("--fov", type=int, nargs=3, default=None, help="pad to this many voxels per axis")
    args = ap.parse_args()
    img = nib.load(str(LABELS))
    data = np.asarray(img.dataobj).astype(np.int16)
    tags = apply_label_map(data, label_map("colin27"))
    cavity = data == 6  # Colin27's air cavities
    layer = layer_lut()[tags]
    split = int(round(1.0 / args.voxel))
    shape = np.array(tags.shape) * split
    # new voxel centres in old voxel indices, a quarter of an old voxel off
    axes = [(np.arange(n) + 0.5) / split - 0.5 + 0.25 for n in shape]
    pad = 4

    def sampled_inside(mask):
        m = np.pad(mask, pad)
        sdf = distance_to_background(~m, (1.0, 1.0, 1.0)) - distance_to_background(m, (1.0, 1.0, 1.0))
        sdf = ndi.gaussian_filter(sdf.astype(np.float32), 0.6)  # < 0 inside
        out = np.zeros(tuple(shape), bool)
        for s in range(0, shape[0], 64):  # in slabs: map_coordinates holds float64 coordinates
            xs = axes[0][s:s + 64]
            grid = np.meshgrid(xs + pad, axes[1] + pad, axes[2] + pad, indexing="ij")
            out[s:s + len(xs)] = ndi.map_coordinates(sdf, grid, order=1, mode="nearest") < 0
        return out

    fine = np.zeros(tuple(shape), np.int8)
    for k in range(1, 6):
        fine += sampled_inside((layer >= k) | (cavity & (k <= 2)))
    fine[sampled_inside(cavity) & (fine == 2)] = 0
    fill = np.array([0] + [LAYER_FILL_TAG[k] for k in range(1, 6)], np.int16)
    out = fill[fine]
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / split
    affine[:3, 3] = img.affine[:3, :3] @ np.array([a[0] for a in axes]) + img.affine[:3, 3]
    if args.fov:
        before = [max(0, (f - n) // 2) for f, n in zip(args.fov, out.shape)]
        out = np.pad(out, [(b, max(0, f - n - b)) for b, f, n in zip(before, args.fov, out.shape)])
        affine[:3, 3] -= affine[:3, :3] @ np.array(before, float)
    nib.save(nib.Nifti1Image(out, affine), str(args.out))
    vox = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0)))
    print(f"{args.out}: {out.shape}, volume mL per tag 1..5 "
          f"{np.round(np.bincount(out.ravel(), minlength=6)[1:6] * vox / 1000, 1).tolist()} "
          f"(1 mm labels: {np.round(np.bincount(tags.ravel(), minlength=6)[1:6] / 1000, 1).tolist()})")


if __name__ == "__main__":
    main()
