"""Write Colin27's 1 mm labels recast as SimNIBS charm labels, for the mesher benchmarks: tissues
inside the nesting layers, which Colin27 does not have.  Bone becomes compact bone (7) with a spongy
core (8) where it lies over 1.6 mm from a non-bone voxel; scalp within 6 mm of the bone on both sides
(over 50 mm from the midline, within 25 mm of the centre's height) becomes muscle (10); two balls of
11 mm in front of the brain's lowest fifth become eyes (6) where they hold scalp or muscle; CSF within
4 mm of the midline and over 30 mm above the centre becomes blood (9, a sagittal sinus).  No tag 4,
as in charm.  The shapes are stand-ins, not anatomy: they give the meshers thin and small tissues
inside layers.

    python benchmarks/make_charm_labels.py OUT.nii.gz
    python benchmarks/bench_head_mesh.py --method surface --labels OUT.nii.gz --label-map simnibs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27" / "labels.nii.gz"


def charm_like(colin27: np.ndarray, zooms) -> np.ndarray:
    """Colin27 labels (1 scalp ... 5 WM, 6 air) -> charm-like SimNIBS tags (see the module docstring)."""
    import scipy.ndimage as ndi

    zooms = np.asarray(zooms, float)
    t = np.array([0, 5, 4, 3, 2, 1, 0], np.uint8)[colin27]
    bone = t == 4
    t[bone] = 7
    t[bone & (ndi.distance_transform_edt(bone, sampling=zooms) > 1.6)] = 8
    scalp = t == 5
    near_bone = ndi.distance_transform_edt(~bone, sampling=zooms) < 6
    idx = np.indices(t.shape, sparse=True)
    centre = np.array([np.mean(i) for i in np.nonzero(t > 0)])
    mm = [(idx[a] - centre[a]) * zooms[a] for a in range(3)]
    t[scalp & near_bone & (np.abs(mm[0]) > 50) & (np.abs(mm[2]) < 25)] = 10
    gm = np.nonzero(t == 2)
    front_mm = (gm[1].max() - centre[1]) * zooms[1] + 12
    low_mm = (np.percentile(gm[2], 15) - centre[2]) * zooms[2]
    for side_mm in (-32.0, 32.0):
        ball = (mm[0] - side_mm) ** 2 + (mm[1] - front_mm) ** 2 + (mm[2] - low_mm) ** 2 <= 11.0 ** 2
        t[ball & ((t == 5) | (t == 10))] = 6
    t[(t == 3) & (np.abs(mm[0]) < 4) & (mm[2] > 30)] = 9
    return t


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--labels", type=Path, default=LABELS, help="Colin27-numbered labels (default: the shared ones)")
    args = ap.parse_args()
    img = nib.load(str(args.labels))
    t = charm_like(np.asarray(img.dataobj).astype(np.uint8), np.linalg.norm(img.affine[:3, :3], axis=0))
    nib.save(nib.Nifti1Image(t, img.affine), str(args.out))
    print({int(k): int(v) for k, v in zip(*np.unique(t, return_counts=True))})


if __name__ == "__main__":
    main()
