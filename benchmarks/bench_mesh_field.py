"""What the head mesh does to the field: Colin27's labels (or another head's) meshed at several element
sizes, and the grey matter's |E| percentiles for tDCS C3 anode / Fp2 cathode, 5 x 5 cm pads, 1 mA
(Colin27's 10-05 positions), next to those of the finest mesh in the run.

    python benchmarks/bench_mesh_field.py [SIZE_MM ...] [--local-calibration MM]
        [--labels other_head_labels.nii.gz --label-map simnibs]

Default sizes 8 6 4 (the 4 mm mesh takes ~100 s and ~2.5 GB).  ``--local-calibration 0`` meshes with
the global volume calibration alone (mesher surf-6.3's); docs/meshing.md, surf-6.4.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heads" / "colin27" / "labels.nii.gz"


def grey_matter_field(mesh_path: Path) -> dict:
    from stimsim.head.eeg import head_positions
    from stimsim.protocol import validate_protocol
    from stimsim.results import weighted_percentiles
    from stimsim.simulation import simulate

    pos = head_positions("colin27")
    p = validate_protocol({"kind": "tdcs", "head": str(mesh_path), "electrodes": [
        {"name": name, "position": [float(x) for x in pos[name]], "current_mA": mA, "shape": "rect",
         "size_mm": [50, 50]} for name, mA in (("C3", 1.0), ("Fp2", -1.0))]})
    r = simulate(p)
    gm = r.mesh.tet_tags == 2
    p50, p99, p999 = weighted_percentiles(r.magnE[gm], r.mesh.volumes_mm3[gm], [50, 99, 99.9])
    return {"p50": p50, "p99": p99, "p99.9": p999, "cg": r.solve_info.iterations}


def main() -> None:
    from stimsim.head.meshers import make_head_mesh
    from stimsim.mesh import write_mesh

    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=float, default=[8.0, 6.0, 4.0], help="element sizes, mm")
    ap.add_argument("--local-calibration", type=float, default=None,
                    help="mm (the mesher's default: 10; 0: the global calibration alone)")
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--label-map", default="colin27")
    args = ap.parse_args()
    opts = {} if args.local_calibration is None else {"local_calibration_mm": args.local_calibration}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h in args.sizes:
            t = time.perf_counter()
            mesh = make_head_mesh(str(args.labels), None, args.label_map, method="surface", element_size_mm=h,
                                  progress=False, cache=False, surface_options=opts)
            mesh_s = time.perf_counter() - t
            path = write_mesh(Path(tmp) / f"head_{h:g}.msh", mesh)
            rows.append((h, mesh.n_tets, mesh_s, grey_matter_field(path)))
    ref = min(rows, key=lambda r: r[0])[3]
    rel = lambda x, k: f"{x[k]:.4f} ({100 * (x[k] / ref[k] - 1):+.1f} %)"  # noqa: E731
    print("| element size mm | tets | mesh s | GM |E| p50 V/m | p99 | p99.9 | CG it |\n|---|---|---|---|---|---|---|")
    for h, n, s, f in rows:
        print(f"| {h:g} | {n:,} | {s:.1f} | {rel(f, 'p50')} | {rel(f, 'p99')} | {rel(f, 'p99.9')} | {f['cg']} |")
    print("(percentages against the finest mesh in the run)")


if __name__ == "__main__":
    main()
