"""Whole-cortex TMS fields from cortical modes (``TMSModel.cortical_modes`` / ``fast_efield``): the
one-off build per head and coil, then milliseconds per placement, with the error next to each number.

For each head: build the modes (default options), then for ``--check`` placements the build never saw
(random scalp centres over the upper half of the head, random handle directions), compare the fast field
at the grey-matter nodes with a full FEM solve (dA/dt at every node, no harmonic extension): relative L2
error and correlation.  Times: median ms per fast field (dA/dt at the scalp nodes + two products), and
the full solve for comparison.

Usage::

    python benchmarks/bench_tms_modes.py [--heads sphere,colin27] [--check 30]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from stimsim import tms_modes
from stimsim.protocol import validate_protocol
from stimsim.tms import TMSModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", default="sphere,colin27")
    ap.add_argument("--check", type=int, default=30)
    args = ap.parse_args()
    print("| head | GM nodes / scalp nodes | build (set-up + training + modes + adjoint) | modes | on disk | "
          "fast field (median) | full solve (median) | rel. L2 error (median / max) | correlation (min) | "
          "peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for head in args.heads.split(","):
        p = validate_protocol({"kind": "tms", "head": head, "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                               "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]},
                               "stimulator": {"didt_A_per_us": 100.0}})
        model = TMSModel(p)
        cache = Path(tempfile.mkdtemp())
        t = time.perf_counter()
        modes = model.cortical_modes(cache_dir=cache, n_check=0, progress=False)
        build = time.perf_counter() - t
        tm = modes.meta["timings_s"]
        disk = sum(f.stat().st_size for f in cache.iterdir()) / 2**20
        rng = np.random.default_rng(2024)  # the build uses seed 0
        held = tms_modes.random_placements(model, args.check, rng)
        errs, corr, fast_ms, full_s = [], [], [], []
        for m in held:
            t = time.perf_counter()
            ref = tms_modes.full_gm_field(model, m, tags=modes.meta["tags"])
            full_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            fast = model.fast_efield(m)
            fast_ms.append(1e3 * (time.perf_counter() - t))
            errs.append(np.linalg.norm(fast - ref) / np.linalg.norm(ref))
            corr.append(np.corrcoef(fast.ravel(), ref.ravel())[0, 1])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {head} | {modes.meta['gm_nodes']:,} / {modes.meta['scalp_nodes']:,} | {build:.0f} s "
              f"({tm['setup_s']:.0f} + {tm['training_s']:.0f} + {tm['modes_s']:.0f} + {tm['adjoint_s']:.0f}) | "
              f"{modes.rank} of {modes.meta['n_train']} | {disk:.0f} MiB | {np.median(fast_ms):.1f} ms | "
              f"{np.median(full_s):.2f} s | {100 * np.median(errs):.2f} % / {100 * max(errs):.2f} % | "
              f"{min(corr):.5f} | {rss:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
