"""Colin27 1 mm labels -> tetrahedral mesh with both meshers of ``stimsim mesh``: voxels, time, peak
memory, tets, per-tissue volume error, connectivity, element shape (min dihedral, tets below the 5 deg /
0.1 radius-ratio bounds), skull and CSF thickness (percentiles, mesh vs labels, also with the mesh's tags put back on the label grid;
stimsim.head.meshers.thickness), the same layers along rays from the centre of the intracranial space
(paired per ray, mesh on the label grid against the labels), the same figures for the labels blurred by
0.7 and 1 mm (the control: what smoothing alone does to them), per-tissue Dice of the mesh's tags on the label grid against the labels,
and what the mesh does to the solve (AMG-CG iterations and time, tDCS C3-Fp2 5 x 5 cm pads, rtol 1e-10).

    python benchmarks/bench_head_mesh.py [--method surface|lattice|both] [--upsample 2] [--surface-size MM]
        [ELEMENT_SIZE_MM ...]
        [--labels other_head_labels.nii.gz --label-map simnibs]   # another head (CG uses Colin27's C3/Fp2)
        # tissues inside a layer (SimNIBS charm's 6-10, e.g. benchmarks/make_charm_labels.py): volume error
        # and Dice of each, in a table of their own

Each run is a fresh child process (peak RSS per method, with TetGen's own child process at the time
it ran added, no cache); no element size = each
method's default (surface 8 mm, lattice 3.2 mm).  Targets (issue 5): <= 120 s, <= 4 GB,
<= 1.5 M tets, every tissue within 5 % of its voxel volume and one piece.
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

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27" / "labels.nii.gz"
TAGS = (1, 2, 3, 4, 5)  # WM GM CSF bone scalp


def upsampled(factor: int, labels: Path = LABELS):
    """The labels (Colin27's by default) with each voxel split into ``factor``^3 (a stand-in for a 0.5 mm
    segmentation: the same anatomy, ``factor``^3 times the voxels), and the affine of that grid."""
    import nibabel as nib

    img = nib.load(str(labels))
    lab = np.asarray(img.dataobj)
    if factor == 1:
        return lab, img.affine
    lab = np.asfortranarray(lab.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2))
    scale = np.diag([1 / factor] * 3 + [1.0])
    shift = np.eye(4)
    shift[:3, 3] = (1 / factor - 1) / 2  # voxel centres of the finer grid inside the coarse voxels
    return lab, img.affine @ shift @ scale


def run_one(method: str, h: float | None, upsample: int = 1, labels: Path = LABELS, label_map_spec="colin27",
            surface_size_mm: float | None = None) -> dict:
    from stimsim.head.meshers import make_head_mesh, quality_summary

    lab, affine = upsampled(upsample, labels)
    t = time.perf_counter()
    mesh, info = make_head_mesh(lab, affine, label_map_spec, method=method, element_size_mm=h, cache=False,
                                progress=False, return_info=True, surface_size_mm=surface_size_mm)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB (Linux)
    # TetGen runs in a child process (tetgen_worker): this process at the call plus the child's peak
    peak = max(peak, float(info.mesher.get("tetgen_peak_mib") or 0.0) * 1024 / 1e6)  # (MiB -> kB / 1e6, as above)
    q = quality_summary(mesh, info.expected_volume_mm3 or info.voxel_volume_mm3)  # eyes etc. merged into scalp
    from stimsim.head import apply_label_map, label_map
    from stimsim.head.meshers.thickness import ray_thickness_summary, tag_dice, thickness_percentiles
    from stimsim.mesh import Mesh
    from stimsim.mesh.voxelize import tet_values_on_grid

    full = apply_label_map(lab, label_map(label_map_spec))
    on_grid_full = tet_values_on_grid(mesh, mesh.tet_tags, full.shape, affine)
    # the layers' thickness and overlap read every tissue as its nesting layer's (eyes, muscle as scalp,
    # compact and spongy bone as bone ...); the tissues inside a layer get their own overlap below
    tags, on_grid = layer_tags(full), layer_tags(on_grid_full)
    others = sorted(int(t) for t in q["volume_error_per_tag"] if int(t) not in TAGS)
    layered = mesh if not others else Mesh(mesh.nodes, mesh.tets, layer_tags(mesh.tet_tags))
    thick = {name: thickness_percentiles(layered, tags, affine, layer, inside, outside, mesh_on_grid=on_grid)
             for name, (layer, inside, outside) in (("bone", (4, 3, 5)), ("csf", (3, 2, 4)))}
    rays = {name: ray_thickness_summary(tags, on_grid, affine, layer, inner, outer)
            for name, (layer, inner, outer) in RAY_LAYERS.items()}
    dice = tag_dice(tags, on_grid, TAGS)
    return {"rays": rays, "control": [thickness_control(tags, affine, sigma) for sigma in CONTROL_SIGMAS_MM],
            "method": method, "h": h, "time_s": dt, "peak_gb": peak, "nodes": mesh.n_nodes, "tets": mesh.n_tets,
            "phases_s": {k: float(v) for k, v in info.timings_s.items() if k != "total_s"},
            "voxels": int(np.prod(tags.shape)), "poor": q["elements"]["poor_count"], "thickness": thick, "dice": dice,
            "cg": cg_iterations(mesh),
            # surf-6.9: CSF in the folds meshed inside the brain, the CSF sheet re-tagged where the labels have none
            "folds": info.mesher.get("sulcal_csf") or {}, "csf_gap_tets": info.mesher.get("csf_gap_tets", 0),
            "min_dihedral": q["min_dihedral_deg"], "inverted": q["n_inverted"],
            "vol_err": {t: q["volume_error_per_tag"].get(t, float("nan")) for t in (*TAGS, *others)},
            "other_dice": tag_dice(full, on_grid_full, others) if others else {},
            "pieces": {t: q["connectivity"].get(t, {}).get("pieces", 0) for t in (*TAGS, *others)},
            "largest": {t: q["connectivity"].get(t, {}).get("largest_fraction", 0.0) for t in others}}


def layer_tags(tags: np.ndarray) -> np.ndarray:
    """SimNIBS tags -> the fill tag of their nesting layer (1-5; stimsim.tissues.LAYER_OF_TAG)."""
    from stimsim.tissues import layer_lut

    lut = np.array([0, 5, 4, 3, 2, 1])[layer_lut(max(256, int(tags.max()) + 1))]
    return lut[tags].astype(tags.dtype)


CONTROL_SIGMAS_MM = (0.7, 1.0)  # mm; 0.7: the blur the surface mesher gives its level sets (0.7 voxels) on 1 mm labels
RAY_LAYERS = {"bone": (4, (1, 2, 3), (5,)), "csf": (3, (1, 2), (4, 5))}  # layer, inner tags, outer tags


def smoothed_labels(tags: np.ndarray, zooms, sigma_mm: float = 1.0) -> np.ndarray:
    """The control for the thickness figures: each nested layer of ``tags`` (SimNIBS 1-5, WM innermost)
    blurred with a Gaussian of ``sigma_mm`` and cut at one half, on the same grid.  A surface mesh
    smooths at least this much (the surface mesher's level sets are blurred by 0.7 voxels before
    they are sampled); the estimators then read what smoothing alone does to the layers."""
    import scipy.ndimage as ndi

    t = np.minimum(np.asarray(tags, np.int16), 5)  # eyes, muscle ... (tags above 5) are meshed as scalp
    depth = np.where(t > 0, 6 - t, 0)  # 1 scalp ... 5 white matter
    out = np.zeros(tags.shape, np.int16)
    sigma = float(sigma_mm) / np.asarray(zooms, float)
    for k in range(1, 6):
        out[ndi.gaussian_filter((depth >= k).astype(np.float32), sigma) > 0.5] = 6 - k
    return out


def thickness_control(tags: np.ndarray, affine: np.ndarray, sigma_mm: float = 1.0) -> dict:
    """:func:`smoothed_labels` measured as the mesh is (nearest boundary point and per ray), and its
    per-tissue volume against the labels' (%)."""
    from stimsim.head.meshers.thickness import _voxel_thickness, ray_thickness_summary

    zooms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    smooth = smoothed_labels(tags, zooms, sigma_mm)
    pct = (lambda d: [float(x) for x in np.percentile(d, (10, 50, 90))])
    return {"sigma_mm": sigma_mm,
            "nearest": {name: pct(_voxel_thickness(smooth, affine, layer, inside, outside))
                        for name, (layer, inside, outside) in (("bone", (4, 3, 5)), ("csf", (3, 2, 4)))},
            "rays": {name: ray_thickness_summary(tags, smooth, affine, layer, inner, outer)
                     for name, (layer, inner, outer) in RAY_LAYERS.items()},
            "vol_err": {t: 100.0 * (np.count_nonzero(smooth == t) / max(np.count_nonzero(tags == t), 1) - 1)
                        for t in TAGS}}


def cg_iterations(mesh, positions: dict | None = None, conductivities: dict | None = None) -> dict:
    """tDCS C3 anode / Fp2 cathode, 5 x 5 cm pads, on ``mesh``: AMG-CG iterations and times to rtol 1e-10.
    ``positions``: C3 and Fp2 (mm; Colin27's by default); ``conductivities``: tags beyond the defaults."""
    from stimsim.fem.electrodes import ElectrodeSpec, electrode_system, place_electrodes
    from stimsim.fem.linear import amg_cg
    from stimsim.head.eeg import head_positions
    from stimsim.head_model import HeadModel

    pos = head_positions("colin27") if positions is None else positions
    specs = [ElectrodeSpec("C3", tuple(pos["C3"]), 1e-3, "rect", size_mm=(50, 50)),
             ElectrodeSpec("Fp2", tuple(pos["Fp2"]), -1e-3, "rect", size_mm=(50, 50))]
    system = electrode_system(HeadModel.assemble(mesh, conductivities or {}).stiffness, place_electrodes(mesh, specs))
    _, info = amg_cg(rtol=1e-10)(system.matrix, system.rhs([s.current_A for s in specs]))
    return {"iterations": info.iterations, "setup_s": info.setup_s, "solve_s": info.solve_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=float, help="element sizes, mm (default: the method's)")
    ap.add_argument("--method", default="both", choices=["surface", "lattice", "both"])
    ap.add_argument("--upsample", type=int, default=1,
                    help="split each voxel into N^3 (2: a 0.5 mm volume, 57 M voxels)")
    ap.add_argument("--labels", type=Path, default=LABELS, help="label volume (default: the shared Colin27's)")
    ap.add_argument("--label-map", default="colin27", help="its label map (colin27, simnibs, roast or a TSV)")
    ap.add_argument("--surface-size", type=float, default=None,
                    help="surface mesher: surface sampling, mm (default: half the element size)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = ["surface", "lattice"] if args.method == "both" else [args.method]
    if args.child:
        print(json.dumps(run_one(methods[0], args.sizes[0] if args.sizes else None, args.upsample, args.labels,
                                 args.label_map, args.surface_size)))
        return
    print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| method | h mm | voxels | time s | peak GB | nodes | tets | min dihedral | tets < 5 deg or 0.1 | inverted "
          "| vol err % (WM GM CSF bone scalp) | pieces (WM GM CSF bone scalp) "
          "| bone / CSF thickness p50 mm, mesh (labels) | CG it (set-up + solve s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for method in methods:
        for h in args.sizes or [None]:
            cmd = ([sys.executable, __file__, "--child", "--method", method, "--upsample", str(args.upsample),
                    "--labels", str(args.labels), "--label-map", args.label_map]
                   + (["--surface-size", str(args.surface_size)] if args.surface_size else [])
                   + ([str(h)] if h else []))
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            from stimsim.head.meshers import default_element_size

            # "-": a tag the labels do not have (charm's bone is compact and spongy bone, 7 and 8: in the
            # table of the tissues inside a layer)
            err = " ".join("-" if r["pieces"][str(t)] == 0 else f"{100 * r['vol_err'][str(t)]:+.1f}" for t in TAGS)
            pieces = " ".join(str(r["pieces"][str(t)] or "-") for t in TAGS)
            th = " / ".join(f"{r['thickness'][k]['mesh'][1]:.2f} ({r['thickness'][k]['labels'][1]:.2f})"
                            for k in ("bone", "csf"))
            cg = r["cg"]
            results.append(r)
            print(f"| {method} | {r['h'] or default_element_size(method)} | {r['voxels']:,} | {r['time_s']:.1f} "
                  f"| {r['peak_gb']:.2f} | {r['nodes']:,} | {r['tets']:,} | {r['min_dihedral']:.2f} | {r['poor']:,} "
                  f"| {r['inverted']} | {err} | {pieces} | {th} | {cg['iterations']} "
                  f"({cg['setup_s']:.2f} + {cg['solve_s']:.2f}) |")
    # where the time goes: the mesher's own phases (HeadMeshInfo.timings_s), in seconds
    names = list(dict.fromkeys(k for r in results for k in r.get("phases_s", {})))
    if names:
        # (the untangling is timed inside the surfaces' phase: untangle_s is part of surfaces_s)
        heads = [n.removesuffix("_s") + (" (in surfaces)" if n == "untangle_s" else "") for n in names]
        print("\n| method | h mm | " + " | ".join(heads) + " |")
        print("|---|---|" + "---|" * len(names))
        for r in results:
            print(f"| {r['method']} | {r['h'] or '-'} | "
                  + " | ".join(f"{r['phases_s'][n]:.2f}" if n in r.get("phases_s", {}) else "-" for n in names) + " |")
    if any(r.get("folds") or r.get("csf_gap_tets") for r in results):  # surface mesher, surf-6.9
        print("\n| method | h mm | CSF in the folds mL: voxels / mesh (closing radius mm) | CSF sheet tets re-tagged |")
        print("|---|---|---|---|")
        for r in results:
            f = r.get("folds") or {}
            folds = (f"{f['voxel_mm3'] / 1e3:.1f} / {f['mesh_mm3'] / 1e3:.1f} ({f['radius_mm']:g})" if f else "-")
            print(f"| {r['method']} | {r['h'] or '-'} | {folds} | {r.get('csf_gap_tets', 0):,} |")
    if any(r["other_dice"] for r in results):  # tissues inside a layer (charm labels: eyes, muscle, bone ...)
        print("\n| method | h mm | tissue inside a layer | volume err % | Dice on the label grid "
              "| pieces (share of the largest) |")
        print("|---|---|---|---|---|---|")
        for r in results:
            for t, d in r["other_dice"].items():
                pieces = (f"{r['pieces'][t]} ({100 * r['largest'][t]:.1f} %)" if "largest" in r else "-")
                print(f"| {r['method']} | {r['h'] or '-'} | {t} | {100 * r['vol_err'][t]:+.1f} | {d:.3f} | {pieces} |")
    # the same layers measured on one grid: the mesh's tags put back at the labels' voxel centres
    # (stimsim.mesh.voxelize), so both go through the same voxel-face estimator
    print("\n| method | h mm | bone thickness p10/50/90 mm: mesh faces / mesh on the label grid / labels "
          "/ paired by place, mesh on the grid - labels | CSF thickness p10/50/90 mm: the same "
          "| Dice on the label grid (WM GM CSF bone scalp) |")
    print("|---|---|---|---|---|")
    fmt = (lambda v: "/".join(f"{x:.2f}" for x in v))
    for r in results:
        th = [" ; ".join(fmt(r["thickness"][k][w]) for w in ("mesh", "mesh_on_grid", "labels", "paired_on_grid")
                         if w in r["thickness"][k]) for k in ("bone", "csf")]
        dice = " ".join(f"{r['dice'][str(t)]:.3f}" for t in TAGS)
        print(f"| {r['method']} | {r['h'] or '-'} | {th[0]} | {th[1]} | {dice} |")
    # along 4,000 rays from the centre of the intracranial space: the layer between its inner and
    # outer tissues, the same rays through the labels and the mesh's tags on their grid (paired)
    print("\n| method | h mm | tissue | per ray p10/50/90 mm: mesh on the label grid / labels | upper half (vault): the same "
          "| paired mesh - labels: median / mean / p90 of abs | rays |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for k in ("bone", "csf"):
            # all rays, then those along which the labels nest the layers (no scalp voxels between the
            # CSF and the bone, no bone past a sinus: stimsim.head.meshers.thickness.ray_thickness)
            # and of those the rays where the labels have the layer at all (not a hole in it)
            for name, x in ((k, r["rays"][k]), (f"{k}, labels nested", r["rays"][k].get("nested")),
                            (f"{k}, labels nested, layer there", r["rays"][k].get("present"))):
                if x is None:  # a result from before the nested figures
                    continue
                print(f"| {r['method']} | {r['h'] or '-'} | {name} | {fmt(x['mesh_on_grid'])} / {fmt(x['labels'])} "
                      f"| {fmt(x['upper']['mesh_on_grid'])} / {fmt(x['upper']['labels'])} "
                      f"| {x['paired_median']:+.2f} / {x['paired_mean']:+.2f} / {x['paired_abs_p90']:.2f} | {x['rays']} |")
    # the control: the labels themselves, each layer blurred (no mesh), read the same ways
    print("\n| control: the labels, each layer blurred by a Gaussian | tissue | nearest p10/50/90 mm (labels) "
          "| per ray p10/50/90 | upper half | paired median / mean / p90 of abs | volume % (WM GM CSF bone scalp) |")
    print("|---|---|---|---|---|---|---|")
    for c in results[0]["control"] if results else []:
        r = results[0]
        for k in ("bone", "csf"):
            x = c["rays"][k]
            vol = " ".join(f"{c['vol_err'][str(t)]:+.1f}" for t in TAGS)
            print(f"| sigma {c['sigma_mm']:g} mm | {k} | {fmt(c['nearest'][k])} ({fmt(r['thickness'][k]['labels'])}) "
                  f"| {fmt(x['mesh_on_grid'])} | {fmt(x['upper']['mesh_on_grid'])} "
                  f"| {x['paired_median']:+.2f} / {x['paired_mean']:+.2f} / {x['paired_abs_p90']:.2f} | {vol} |")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
