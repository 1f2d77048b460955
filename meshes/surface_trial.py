"""Trial driver for stimsim.head.surface_mesher on Colin27 (measures, writes nothing to stimsim/data)."""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from stimsim.head import surface_mesher as sm
from stimsim.head.labels import apply_label_map, label_map
from stimsim.head.meshing import (_cavities, _clean_islands, _surface_triangles, load_label_volume,
                                  quality_summary)
from stimsim.mesh.model import Mesh

MINDIH = 0.0
ROOT = Path(__file__).resolve().parents[1]


def build(labels, h, minratio, step, extra, ts=1.0):
    t0 = time.perf_counter()
    data, affine = load_label_volume(labels)
    tags = apply_label_map(data, label_map("colin27"))
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    raw_vol = {int(t): float(c) * float(np.prod(zooms)) for t, c in enumerate(np.bincount(tags.ravel())) if t > 0 and c}
    tags, _ = _clean_islands(tags, zooms)
    cav = _cavities(tags)
    nodes, tets, ttags, info = sm.surface_mesh_from_tags(tags, cav, zooms, h, minratio=minratio, mindihedral=MINDIH,
                                                         surface_step=step, extra_switches=extra,
                                                         thickness_scale=ts)
    used = np.unique(tets)
    renum = np.full(len(nodes), -1, np.int64)
    renum[used] = np.arange(len(used))
    nodes, tets = nodes[used], renum[tets]
    world = nodes / zooms @ affine[:3, :3].T + affine[:3, 3]
    a, b, c = (world[tets[:, i]] - world[tets[:, 0]] for i in (1, 2, 3))
    neg = np.einsum("ij,ij->i", a, np.cross(b, c)) < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    tris, tri_tags = _surface_triangles(tets, ttags)
    mesh = Mesh(world, tets, ttags, tris, tri_tags)
    info["timings_s"]["total_s"] = time.perf_counter() - t0
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
