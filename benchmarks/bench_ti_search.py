"""TI montage search on a real head: leadfield of a 10-10 cap, then `search_ti` for one target.

Prints the leadfield time, the number of candidates, the search time and the optimum.  Usage::

    python benchmarks/bench_ti_search.py [--head colin27] [--target-mni -38,-20,50] [--radius 10]
"""

from __future__ import annotations

import argparse
import resource
import time
from importlib import resources
from pathlib import Path

import numpy as np

# the 10-10 positions (Chatrian et al. 1988 / Oostenveld & Praamstra 2001 names) present in the 10-05 file
TEN_TEN = ("Fp1 Fpz Fp2 AF7 AF3 AFz AF4 AF8 F9 F7 F5 F3 F1 Fz F2 F4 F6 F8 F10 FT9 FT7 FC5 FC3 FC1 FCz FC2 FC4 FC6 "
           "FT8 FT10 T9 T7 C5 C3 C1 Cz C2 C4 C6 T8 T10 TP9 TP7 CP5 CP3 CP1 CPz CP2 CP4 CP6 TP8 TP10 P9 P7 P5 P3 P1 "
           "Pz P2 P4 P6 P8 P10 PO7 PO3 POz PO4 PO8 O1 Oz O2 Iz").split()


def main():
    from stimsim.head.eeg import read_positions
    from stimsim.head_model import HeadModel, mni_to_head
    from stimsim.planning import compute_leadfield
    from stimsim.planning.ti_search import search_ti

    ap = argparse.ArgumentParser()
    ap.add_argument("--head", default="colin27")
    ap.add_argument("--target-mni", default="-38,-20,50")
    ap.add_argument("--radius", type=float, default=10.0)
    args = ap.parse_args()
    head = HeadModel.load(args.head)
    table = read_positions(Path(str(resources.files("stimsim") / "data" / "colin27_1005.tsv")))
    lookup = {k.lower(): k for k in table}
    positions = {n: table[lookup[n.lower()]] for n in TEN_TEN if n.lower() in lookup}
    t = time.perf_counter()
    lf = compute_leadfield(head, positions, "Iz", progress=False)
    t_lf = time.perf_counter() - t
    m = mni_to_head(args.head)
    target = np.asarray([float(x) for x in args.target_mni.split(",")]) @ m[:3, :3].T + m[:3, 3]
    found = search_ti(lf, head.mesh, target, args.radius)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"| head | electrodes | leadfield | candidates | search | peak RSS |\n|---|---|---|---|---|---|\n"
          f"| {args.head} | {len(lf.names)} | {t_lf:.1f} s ({lf.meta.get('backend')}) | {found.candidates:,} | "
          f"{found.seconds:.1f} s | {peak:.0f} MiB |")
    print(f"best: {found.channels}; target {found.target_envelope_V_per_m:.4g} V/m, outside "
          f"{found.outside_envelope_V_per_m:.4g} V/m, focality {found.focality:.3g}, brain peak "
          f"{found.peak_brain_envelope_V_per_m:.4g} V/m")
    # the written protocol, run directly (only its four pads on the head): the target envelope again
    from stimsim.planning.optimize import roi_elements
    from stimsim.planning.ti_search import ti_protocol
    from stimsim.protocol import validate_protocol
    from stimsim.simulation import simulate

    t = time.perf_counter()
    result = simulate(validate_protocol(ti_protocol(found, lf, args.head)), mesh=head.mesh)
    roi = roi_elements(head.mesh, target, args.radius, [1, 2])
    direct = float(np.average(result.envelopes[(0, 1)]["TImax"][roi], weights=head.mesh.volumes_mm3[roi]))
    print(f"direct TI run of the written protocol ({time.perf_counter() - t:.1f} s): target {direct:.4g} V/m, "
          f"{direct / found.target_envelope_V_per_m - 1:+.2%} against the search")


if __name__ == "__main__":
    main()
