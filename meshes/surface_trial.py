"""Trial driver for stimsim.head.surface_mesher on Colin27 (measures, writes nothing to stimsim/data)."""
from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from stimsim.head import surface_mesher as sm
from stimsim.head.meshing import quality_summary

MINDIH = 0.0
ROOT = Path(__file__).resolve().parents[1]


def build(labels, h, minratio, step, extra, ts=1.0):
    """One trial: the library's own pipeline with these settings (nothing re-implemented here)."""
    mesh, raw_vol, info = sm.make_surface_head_mesh(
        labels, "colin27", element_size_mm=h, surface_step=step, thickness_scale=ts, minratio=minratio,
        mindihedral=MINDIH, extra_switches=extra)
    return mesh, info, raw_vol


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--h", type=float, default=4.0)
    ap.add_argument("--q", type=float, default=0.0)
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--extra", default="Y")
    ap.add_argument("--ts", type=float, default=1.0)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "heads" / "colin27")
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--mindih", type=float, default=0.0)
    args = ap.parse_args()
    global MINDIH
    MINDIH = args.mindih
    mesh, info, raw_vol = build(args.data / "labels.nii.gz", args.h, args.q, args.step, args.extra, args.ts)
    info["peak_rss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    q = quality_summary(mesh, raw_vol)
    out = {"info": info, "n_nodes": q["n_nodes"], "n_tets": q["n_tets"], "n_inverted": q["n_inverted"],
           "min_dihedral_deg": q["min_dihedral_deg"], "radius_ratio": q["radius_ratio"],
           "volume_mL": {t: v / 1000 for t, v in q["volume_mm3_per_tag"].items()},
           "voxel_mL": {t: v / 1000 for t, v in raw_vol.items()},
           "volume_error_pct": {t: 100 * e for t, e in q["volume_error_per_tag"].items()},
           "connectivity": q["connectivity"]}
    print(json.dumps(out, indent=1, default=str))
    if args.save:
        from stimsim.mesh import write_msh
        write_msh(args.save, mesh)


if __name__ == "__main__":
    main()
