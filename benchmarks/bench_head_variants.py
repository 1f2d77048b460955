"""Heads no one tuned the mesher on: Colin27's labels scaled, stretched and split into 0.5 mm voxels,
each meshed by the surface mesher at its default size in a fresh child process.  Prints, per head:
voxels, time, peak memory (as bench_head_mesh.py: TetGen's own child counted), tetrahedra, the minimum
dihedral angle and the tetrahedra below the shape bounds (5 deg / radius ratio 0.1), the volume error
of each tissue against the labels' voxels, the skull's and the CSF's thickness error (the median,
place by place, of the mesh's tags on the label grid against the labels:
``thickness_percentiles(...)["paired_on_grid"]``), the pieces of each tissue, what the solve takes
(AMG-CG iterations and seconds to rtol 1e-10, tDCS between 5 x 5 cm pads at Colin27's C3 and Fp2 carried
into the variant's grid, as bench_head_mesh.py), and what the mesher had to do (TetGen retries, the
unrelaxed fallback, crossing marching-cubes points pushed apart, white-matter pieces joined); and for
the head with a thin temporal bone, the skull's thickness over that region (surf-6.25).  A large head
(Colin27 x 1.25, with its 1 mm voxels resampled to 0.6 mm: 64 million) is meshed on 1.2 mm blocks (surf-6.26).
These variants found surf-6.15 (a head at 70 and 80 % went unrelaxed) and surf-6.16 (white matter
given to the grey matter below 80 %): docs/meshing.md.

    python benchmarks/bench_head_variants.py                 # every variant (about 4 min)
    python benchmarks/bench_head_variants.py scale0.7 flat   # some of them

Then Colin27 itself with a decompressive craniectomy (the bone over a 70 x 90 mm oval on the left
made CSF), alone and with a 33 mL lesion under it (tag 11; its volume error in brackets), and with a
tumour labelled as a segmentation of one labels it (BraTS-like: necrosis 12 inside an enhancing rim 13
inside oedema 14, 4 / 7 / 11 mm balls around the white matter's deepest point; surf-6.20).

Scaling is nearest-neighbour with the 1 mm voxels kept (``scipy.ndimage.zoom``, order 0): the layers
thin in proportion, and thin bone breaks into islands the clean-up removes before meshing (Colin27 at
65 %: 1.2 % of its bone), which the volume errors here count.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_head_mesh import cg_iterations  # (this folder: the script's own, on sys.path)

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27" / "labels.nii.gz"
#: name -> (zoom per axis, split each voxel into this many per axis)
VARIANTS = {
    "scale0.5": ((0.5,) * 3, 1), "scale0.6": ((0.6,) * 3, 1), "scale0.7": ((0.7,) * 3, 1),
    "scale0.8": ((0.8,) * 3, 1), "scale0.9": ((0.9,) * 3, 1), "scale1.1": ((1.1,) * 3, 1),
    "narrow": ((0.85, 1.0, 1.0), 1), "long": ((1.0, 1.15, 0.95), 1), "flat": ((1.05, 1.0, 0.85), 1),
    "scale0.7 at 0.5 mm": ((0.7,) * 3, 2),
    # a stroke patient's head: a decompressive craniectomy (the bone over a 70 x 90 mm oval on the left
    # made CSF), and with a 33 mL lesion under it (``--lesion``, tag 11): surf-6.17
    "craniectomy": ((1.0,) * 3, 1), "craniectomy + lesion": ((1.0,) * 3, 1),
    # a user's own tissues in the white matter: a three-label tumour (surf-6.20)
    "tumour": ((1.0,) * 3, 1),
    # 0.5 mm voxels with the right temporal bone one voxel thick (THIN_BONE: a squama on fine labels;
    # the skull's thickness there is printed below the table: surf-6.25)
    "thin temporal bone at 0.5 mm": ((1.0,) * 3, 2),
    # a large head on 0.6 mm voxels (Colin27 x 1.25: 64 million voxels), which the fields no longer take
    # at the labels' resolution (surf-6.26: 80-101 s and 3.8-4.0 GB before)
    "1.25 x head at 0.6 mm": ((1.25 / 0.6,) * 3, 1),
}
#: variants whose voxels are not 1 mm / split (mm)
VOXEL_MM = {"1.25 x head at 0.6 mm": 0.6}
#: the thinned region (Colin27's world mm): x, y and z ranges over which bone voxels more than one
#: 0.5 mm voxel from the CSF and brain become scalp
THIN_BONE = ((45.0, np.inf), (-40.0, 20.0), (-15.0, 25.0))
#: the tumour's labels and radii (mm), outermost first; their conductivities (S/m) are the benchmark's
#: own choice for the solve (necrosis as CSF, the rim as grey matter, oedema between), not cited values
TUMOUR = ((14, 11.0, 0.8), (13, 7.0, 0.275), (12, 4.0, 1.654))
#: the craniectomy's centre (world mm, Colin27's frame), its axis, and the oval's two diameters (mm)
DEFECT = (np.array([0.0, -18.0, 15.0]), np.array([-1.0, 0.0, 0.8]) / np.hypot(1.0, 0.8), (70.0, 90.0))


def variant(name: str):
    """The variant's labels (SimNIBS tags), affine and lesion mask (None without)."""
    import nibabel as nib
    from scipy import ndimage as ndi

    from stimsim.head import apply_label_map, label_map

    zoom, split = VARIANTS[name]
    img = nib.load(str(LABELS))
    tags = apply_label_map(np.asarray(img.dataobj), label_map("colin27")).astype(np.uint8)
    lesion = None
    if name.startswith("craniectomy"):
        centre, axis, (a, b) = DEFECT
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in tags.shape], indexing="ij"), -1)
        v = ijk @ img.affine[:3, :3].T + img.affine[:3, 3] - centre
        along = v @ axis
        u = np.cross(axis, [0.0, 1.0, 0.0])
        u /= np.linalg.norm(u)
        w = np.cross(axis, u)
        oval = ((v @ u) / (a / 2)) ** 2 + ((v @ w) / (b / 2)) ** 2 <= 1
        tags[oval & (along > 0) & (tags == 4)] = 3
        if name.endswith("lesion"):
            lesion = (np.linalg.norm(v - 45.0 * axis, axis=-1) < 20.0) & np.isin(tags, (1, 2))
        return tags, img.affine, lesion
    if name == "tumour":
        depth = ndi.distance_transform_edt(tags == 1)
        centre = np.array(np.unravel_index(np.argmax(depth), tags.shape), float)
        r = np.linalg.norm(np.indices(tags.shape).transpose(1, 2, 3, 0) - centre, axis=-1)
        for tag, radius, _ in TUMOUR:
            tags[(r < radius) & (tags > 0)] = tag
        return tags, img.affine, None
    tags = ndi.zoom(tags, zoom, order=0)
    if split > 1:
        tags = tags.repeat(split, 0).repeat(split, 1).repeat(split, 2)
    if name.startswith("thin temporal bone"):
        region = thin_region(split)
        far = ndi.distance_transform_edt(~np.isin(tags, (1, 2, 3)), sampling=1.0 / split) > 1.0 / split
        tags[region & far & (tags == 4)] = 5
    return np.ascontiguousarray(tags), np.diag([VOXEL_MM.get(name, 1.0 / split)] * 3 + [1.0]), lesion


def thin_region(split: int) -> np.ndarray:
    """The voxels of Colin27's grid split ``split`` times that lie in :data:`THIN_BONE`."""
    import nibabel as nib

    img = nib.load(str(LABELS))
    shape, affine = img.shape, img.affine
    world = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) @ affine[:3, :3].T + affine[:3, 3]
    inside = np.ones(shape, bool)
    for ax, (lo, hi) in enumerate(THIN_BONE):
        inside &= (world[..., ax] > lo) & (world[..., ax] < hi)
    return inside.repeat(split, 0).repeat(split, 1).repeat(split, 2)


def electrode_positions(name: str) -> dict:
    """Colin27's C3 and Fp2 (mm) carried into the variant's frame (its voxel index scaled; a split grid's
    affine keeps mm), to be projected onto its scalp by the electrode placement."""
    import nibabel as nib

    from stimsim.head.eeg import head_positions

    pos = head_positions("colin27")
    if name.startswith("craniectomy") or name == "tumour":  # Colin27's own grid and frame
        return {k: tuple(float(x) for x in pos[k]) for k in ("C3", "Fp2")}
    zoom, split = VARIANTS[name]
    mm = np.asarray(zoom) * VOXEL_MM.get(name, 1.0 / split) * split  # per voxel of Colin27's grid
    to_vox = np.linalg.inv(nib.load(str(LABELS)).affine)
    return {k: tuple((to_vox[:3, :3] @ np.asarray(pos[k], float) + to_vox[:3, 3]) * mm) for k in ("C3", "Fp2")}


def run_one(name: str) -> dict:
    from stimsim.head.meshers import make_head_mesh, tissue_connectivity
    from stimsim.head.meshers.thickness import thickness_percentiles
    from stimsim.mesh.checks import element_quality
    from stimsim.mesh.voxelize import tet_values_on_grid
    from stimsim.tissues import TISSUES

    tags, affine, lesion = variant(name)
    t = time.perf_counter()
    spec = {i: i for i in range(int(tags.max()) + 1)} if tags.max() > 10 else "simnibs"  # (the tumour's tags)
    mesh, info = make_head_mesh(tags, affine, spec, method="surface", cache=False, progress=False,
                                return_info=True, check=False, lesion=lesion, lesion_tag=11)
    dt = time.perf_counter() - t
    want = info.expected_volume_mm3
    got = np.bincount(mesh.tet_tags, weights=mesh.volumes_mm3, minlength=max(want) + 1)
    e = element_quality(mesh)
    m = info.mesher
    # (as bench_head_mesh.py: this process's peak, or this process at TetGen's call plus TetGen's child at
    # its peak where that is more; GB = 1e6 kB)
    peak_gb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  float(m.get("tetgen_peak_mib") or 0.0) * 1024 / 1e6)
    on_grid = tet_values_on_grid(mesh, mesh.tet_tags, tags.shape, affine)
    thick = {name_: thickness_percentiles(mesh, tags, affine, layer, inside, outside, mesh_on_grid=on_grid)
             ["paired_on_grid"][1] for name_, (layer, inside, outside) in (("bone", (4, 3, 5)), ("csf", (3, 2, 4)))}
    region = None
    if name.startswith("thin temporal bone"):
        region = thinned_skull(tags, on_grid, affine, thin_region(VARIANTS[name][1]))
    return {"name": name, "voxels": int(tags.size), "time_s": dt, "peak_gb": peak_gb, "tets": len(mesh.tets),
            "min_dihedral": float(e["min_dihedral_deg"].min()), "thickness": thick,
            # a chronic stroke lesion (tag 11) conducts as CSF
            "cg": cg_iterations(mesh, electrode_positions(name),
                                {**({11: TISSUES[3][1]} if 11 in mesh.tet_tags else {}),
                                 **{t: c for t, _, c in TUMOUR if t in mesh.tet_tags}} or None),
            "poor": int(np.sum((e["min_dihedral_deg"] < 5) | (e["radius_ratio"] < 0.1))),
            "vol_err": {int(k): float(got[k] / v - 1) for k, v in sorted(want.items())},
            "pieces": {int(k): int(c["pieces"]) for k, c in tissue_connectivity(mesh).items()},
            "retries": len(m.get("tetgen_retries") or []), "unrelaxed": bool(m.get("relax_fallback")),
            "pushed": int(m.get("crossing_vertices_moved", 0)), "wm_joined": int(m.get("white_matter_bridge_tets", 0)),
            "thinned": region}


def thinned_skull(tags, on_grid, affine, region) -> dict:
    """The skull's thickness (10th / 50th / 90th percentiles, mm) along rays from the intracranial centroid
    whose point 68 mm out lies in ``region``: the labels' and the mesh's tags on their grid."""
    from scipy import ndimage as ndi

    from stimsim.head.meshers.thickness import ray_directions, ray_thickness

    centre = np.asarray(ndi.center_of_mass(np.isin(tags, (1, 2, 3)))) @ affine[:3, :3].T + affine[:3, 3]
    d = ray_directions(20000)
    lab, msh = ray_thickness([tags, on_grid], affine, 4, (3, 2, 1), (5,), centre, d)
    ijk = np.rint((centre + 68.0 * d - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    ok = np.all((ijk >= 0) & (ijk < tags.shape), axis=1)
    rays = np.zeros(len(d), bool)
    rays[ok] = region[tuple(ijk[ok].T)]
    rays &= np.isfinite(lab) & np.isfinite(msh)
    return {"rays": int(rays.sum()), "labels": np.percentile(lab[rays], [10, 50, 90]).tolist(),
            "mesh": np.percentile(msh[rays], [10, 50, 90]).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", help=f"variants (default: all): {', '.join(VARIANTS)}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.child:
        print(json.dumps(run_one(args.names[0])))
        return
    print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| head | voxels | time s | peak GB | tets | min dihedral deg | below the bounds "
          "| vol err % (WM GM CSF bone scalp) | thickness err mm (skull, CSF) | pieces | CG iterations (s) "
          "| TetGen retries | unrelaxed | points pushed apart | WM tets joined |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    thinned = []
    for name in args.names or VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", name], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.splitlines()[-1])
        err = " ".join(f"{100 * r['vol_err'][str(t)]:+.2f}" for t in (1, 2, 3, 4, 5) if str(t) in r["vol_err"])
        if "11" in r["vol_err"]:
            err += f" (lesion {100 * r['vol_err']['11']:+.2f})"
        if "12" in r["vol_err"]:
            err += " (tumour " + " ".join(f"{100 * r['vol_err'][str(t)]:+.2f}" for t, _, _ in TUMOUR) + ")"
        pieces = " ".join(str(r["pieces"].get(str(t), "-")) for t in (1, 2, 3, 4, 5))
        th = f"{r['thickness']['bone']:+.2f}, {r['thickness']['csf']:+.2f}"
        print(f"| {name} | {r['voxels']:,} | {r['time_s']:.1f} | {r['peak_gb']:.2f} | {r['tets']:,} "
              f"| {r['min_dihedral']:.2f} | {r['poor']} | {err} | {th} | {pieces} "
              f"| {r['cg']['iterations']} ({r['cg']['setup_s'] + r['cg']['solve_s']:.1f}) | {r['retries']} "
              f"| {'yes' if r['unrelaxed'] else 'no'} | {r['pushed']} | {r['wm_joined']} |", flush=True)
        if r.get("thinned"):
            thinned.append((name, r["thinned"]))
    for name, t in thinned:
        print(f"\n{name}: the skull over the thinned region ({t['rays']} rays), 10th / 50th / 90th percentiles (mm): "
              f"labels {' / '.join(f'{v:.2f}' for v in t['labels'])}, mesh {' / '.join(f'{v:.2f}' for v in t['mesh'])}")


if __name__ == "__main__":
    main()
