"""Temporal-interference montage search on a leadfield: two electrode pairs and their currents.

Every candidate is two disjoint electrode pairs ``(a1, b1)``, ``(a2, b2)`` of the leadfield's cap,
each a channel carrying ``I1`` and ``I2`` mA.  A pair's field is ``I (L_a - L_b)`` (the
leadfield columns, the reference's column being zero), so a candidate costs one evaluation of
the maximum envelope (:func:`stimsim.envelope.max_envelope`) on the target's elements: no solve.

Search (docs/ti.md, "Optimisation"):

1. **Exhaustive** over all pairs of disjoint pairs with equal currents (``I1 = I2``, the total
   split evenly): the volume-weighted mean maximum envelope in the target ROI, vectorised over
   the second pair.  A large ROI is represented here by a fixed random sample of at most
   ``roi_samples`` of its elements (volume weights kept), which bounds the cost per candidate.  The polarity of a pair does not change the envelope (a sign flip of one
   carrier only shifts the beat in time), so each unordered pair is counted once.
2. **Refinement** of the ``top`` best candidates: current splits ``I1 / (I1 + I2)`` from 0.2 to
   0.8 and, over the whole brain outside the ROI, the volume-weighted mean envelope, the ratio
   target / outside (focality) and the peak brain envelope.  ``objective="target"`` keeps the
   strongest target envelope; ``objective="focality"`` the best ratio among candidates reaching at
   least ``min_target_fraction`` of the strongest target envelope.  Step 2 uses every ROI element.

**Avoid regions** (``avoid``: spheres ``(x, y, z, r)`` mm of brain elements where the envelope must
stay low): a candidate at a split is *admissible* when, in every avoid region, the volume-weighted
mean maximum envelope is at most ``avoid_max_ratio`` times the target ROI's; only admissible ones are
kept, and the objective is applied among them.  Step 1 evaluates the avoid regions at equal currents
(each on a fixed sample of at most ``roi_samples`` of its elements, in the same vectorised call as
the target) and ranks the candidates admissible there first; step 2 applies the rule exactly, on
every element, at every split.  No admissible candidate: :class:`ProtocolError`.

Step 2 is a heuristic; on small caps it is checked against evaluating every candidate at every
split (tests/test_ti_search.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..envelope import max_envelope
from ..errors import ProtocolError, check_option
from ..mesh import Mesh
from .leadfield import Leadfield
from .optimize import roi_elements

SPLITS = np.round(np.linspace(0.2, 0.8, 13), 6)


@dataclass(frozen=True)
class TIMontage:
    """The chosen two channels and what they give.

    Attributes
    ----------
    channels : ``[(anode, cathode, current_mA), (anode, cathode, current_mA)]``
    target_envelope_V_per_m : volume-weighted mean maximum envelope in the target ROI
    outside_envelope_V_per_m : the same over brain elements outside the ROI
    focality : target / outside
    peak_brain_envelope_V_per_m : largest envelope in any brain element
    avoid_envelopes_V_per_m : volume-weighted mean maximum envelope in each avoid region (its order)
    avoid : the avoid regions, ``(x, y, z, r)`` mm
    candidates : pairs of pairs evaluated exhaustively
    seconds : search time
    ranking : the refined candidates, best first (dicts)
    """

    channels: list
    target_envelope_V_per_m: float
    outside_envelope_V_per_m: float
    focality: float
    peak_brain_envelope_V_per_m: float
    candidates: int
    seconds: float
    objective: str
    ranking: list = field(default_factory=list)
    avoid_envelopes_V_per_m: list = field(default_factory=list)
    avoid: list = field(default_factory=list)


def _columns(lf: Leadfield, elements: np.ndarray) -> np.ndarray:
    """(k + 1, len(elements), 3) float64 fields per A of every electrode, the reference's zero."""
    cols = np.zeros((len(lf.names), len(elements), 3))
    cols[:-1] = lf.fields[:, elements]
    return cols


def _pair_field(lf: Leadfield, a: int, b: int, elements: np.ndarray) -> np.ndarray:
    """(len(elements), 3) field per A of a pair, anode a and cathode b (the reference has no column)."""
    k = len(lf.names) - 1
    out = np.zeros((len(elements), 3))
    if a < k:
        out += lf.fields[a, elements]
    if b < k:
        out -= lf.fields[b, elements]
    return out


def _weights(mesh: Mesh, elements: np.ndarray) -> np.ndarray:
    w = mesh.volumes_mm3[elements]
    return w / w.sum()


def _sample(elements: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``elements``: all of them, or a fixed random sample (sorted)."""
    if len(elements) <= n:
        return elements
    return np.sort(np.random.default_rng(0).choice(elements, n, replace=False))


def avoid_elements(mesh: Mesh, avoid, target_mm, radius_mm: float, brain_tags=(1, 2)) -> list[np.ndarray]:
    """Brain elements of each avoid region ``(x, y, z, r)`` mm; :class:`ProtocolError` (naming ``--avoid``)
    for a region that is not 4 finite numbers with ``r > 0``, contains no brain element, or overlaps
    the target ROI's sphere."""
    out = []
    for k, region in enumerate(avoid, 1):
        try:
            v = np.asarray(region, float).ravel()
        except (TypeError, ValueError):
            v = np.zeros(0)
        if v.shape != (4,) or not np.all(np.isfinite(v)) or v[3] <= 0:
            raise ProtocolError(f"avoid region {k} ({region!r}): give --avoid x,y,z,r as four finite numbers "
                                "in the head's mm with a radius r > 0")
        text = f"avoid region {k} ({', '.join(f'{x:g}' for x in v[:3])}; r {v[3]:g} mm)"
        gap = float(np.linalg.norm(v[:3] - np.asarray(target_mm, float)))
        if gap < v[3] + radius_mm:
            raise ProtocolError(f"{text} overlaps the target ROI (radius {radius_mm:g} mm, centres {gap:.1f} mm "
                                "apart); move --avoid away or shrink its radius")
        try:
            out.append(roi_elements(mesh, v[:3], v[3], brain_tags))
        except ProtocolError:
            raise ProtocolError(f"{text} contains no brain element; give --avoid inside the brain, in the head's "
                                "frame (mm), or with a larger radius") from None
    return out


def search_ti(lf: Leadfield, mesh: Mesh, target_mm, radius_mm: float = 10.0, *, total_mA: float = 2.0,
              brain_tags=(1, 2), objective: str = "focality", top: int = 50, min_target_fraction: float = 0.5,
              exclude=(), roi_samples: int = 96, avoid=(), avoid_max_ratio: float = 0.5) -> TIMontage:
    """Search two TI channels on a leadfield (see the module docstring).

    Parameters
    ----------
    lf, mesh : a leadfield and the mesh it was computed on (mm)
    target_mm, radius_mm : the target ROI: brain elements within ``radius_mm`` of ``target_mm``
    total_mA : sum of the two channels' peak currents, mA
    brain_tags : tissue tags of the brain (ROI and the outside measures)
    objective : ``"focality"`` or ``"target"``
    top : candidates refined in step 2
    min_target_fraction : for ``"focality"``, the smallest target envelope accepted, as a fraction
        of the strongest one found
    exclude : electrode names not to use
    roi_samples : most ROI elements step 1 evaluates (a fixed random sample of a larger ROI), and
        most elements of each avoid region
    avoid : avoid regions ``[(x, y, z, r), ...]`` mm (brain elements within ``r`` of the centre)
    avoid_max_ratio : the most an avoid region's mean envelope may be, as a fraction of the target's
    """
    check_option("objective", objective, ("focality", "target"))
    if not (np.isfinite(total_mA) and total_mA > 0):
        raise ProtocolError(f"total_mA: give a current > 0 mA (got {total_mA})")
    if not 0 < min_target_fraction <= 1:
        raise ProtocolError(f"min_target_fraction: give a fraction in (0, 1] (got {min_target_fraction})")
    if not (np.isfinite(avoid_max_ratio) and avoid_max_ratio > 0):
        raise ProtocolError(f"--avoid-max-ratio: give a ratio > 0 (got {avoid_max_ratio})")
    t0 = time.perf_counter()
    names = list(lf.names)
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise ProtocolError(f"exclude: {unknown} are not electrodes of the leadfield")
    usable = [i for i, n in enumerate(names) if n not in set(exclude)]
    if len(usable) < 4:
        raise ProtocolError(f"temporal interference needs 4 electrodes; the leadfield has {len(usable)} usable")
    roi = roi_elements(mesh, target_mm, radius_mm, brain_tags)
    avoid_rois = avoid_elements(mesh, avoid, target_mm, radius_mm, brain_tags)
    avoid = [tuple(float(x) for x in np.asarray(a, float).ravel()) for a in avoid]
    w_roi = _weights(mesh, roi)
    w_avoid = [_weights(mesh, a) for a in avoid_rois]
    # step 1 on fixed samples of the target and avoid regions (one row block each); step 2 on every element
    samples = [_sample(roi, roi_samples)] + [_sample(a, roi_samples) for a in avoid_rois]
    sample = np.concatenate(samples)
    # (n_sample, 1 + n_avoid): column r holds region r's volume weights on its own rows, zero elsewhere
    w_sample = np.zeros((len(sample), len(samples)))
    start = np.cumsum([0] + [len(x) for x in samples])
    for r, x in enumerate(samples):
        w_sample[start[r]:start[r + 1], r] = _weights(mesh, x)
    cols = _columns(lf, sample)
    ia, ib = np.triu_indices(len(usable), 1)
    pa, pb = np.asarray(usable)[ia], np.asarray(usable)[ib]
    pair_fields = cols[pa] - cols[pb]  # (npairs, n_sample, 3) per A
    half = 0.5 * total_mA * 1e-3
    n_pairs, n_roi = len(pa), len(sample)

    # step 1: every pair of disjoint pairs, equal currents
    scores = np.full((n_pairs, n_pairs), -np.inf)
    admissible = np.zeros((n_pairs, n_pairs), bool)
    for i in range(n_pairs - 1):
        j = np.arange(i + 1, n_pairs)
        j = j[(pa[j] != pa[i]) & (pa[j] != pb[i]) & (pb[j] != pa[i]) & (pb[j] != pb[i])]
        if len(j) == 0:
            continue
        e1 = np.broadcast_to(pair_fields[i], (len(j), n_roi, 3)).reshape(-1, 3)
        env = max_envelope(half * e1, half * pair_fields[j].reshape(-1, 3)).reshape(len(j), n_roi)
        means = env @ w_sample  # (len(j), 1 + n_avoid)
        scores[i, j] = means[:, 0]
        admissible[i, j] = np.all(means[:, 1:] <= avoid_max_ratio * means[:, :1], axis=1)
    candidates = int(np.isfinite(scores).sum())
    if avoid:  # admissible at equal currents first, each group by target envelope
        order = np.lexsort((-scores.ravel(), ~admissible.ravel()))[:max(1, top)]
    else:
        order = np.argsort(scores, axis=None)[::-1][:max(1, top)]
    order = order[np.isfinite(scores.ravel()[order])]  # only candidates, whatever ``top``
    best_i, best_j = np.unravel_index(order, scores.shape)

    # step 2: current splits, and the brain outside the ROI
    brain = np.flatnonzero(np.isin(mesh.tet_tags, list(brain_tags)))
    outside = np.setdiff1d(brain, roi, assume_unique=True)
    w_out = _weights(mesh, outside) if len(outside) else np.zeros(0)
    ranking = []
    for i, j in zip(best_i, best_j):
        f1_roi, f2_roi = _pair_field(lf, pa[i], pb[i], roi), _pair_field(lf, pa[j], pb[j], roi)
        f1_out, f2_out = _pair_field(lf, pa[i], pb[i], outside), _pair_field(lf, pa[j], pb[j], outside)
        f_avoid = [(_pair_field(lf, pa[i], pb[i], a), _pair_field(lf, pa[j], pb[j], a)) for a in avoid_rois]
        for s in SPLITS:
            i1, i2 = s * total_mA * 1e-3, (1 - s) * total_mA * 1e-3
            env_roi = max_envelope(i1 * f1_roi, i2 * f2_roi)
            target = float(env_roi @ w_roi)
            env_out = max_envelope(i1 * f1_out, i2 * f2_out) if len(outside) else np.zeros(0)
            out_mean = float(env_out @ w_out) if len(outside) else 0.0
            peak = max(float(env_out.max(initial=0.0)), float(env_roi.max()))
            in_avoid = [float(max_envelope(i1 * g1, i2 * g2) @ w) for (g1, g2), w in zip(f_avoid, w_avoid)]
            ranking.append({"channels": [(names[pa[i]], names[pb[i]], round(float(s) * total_mA, 6)),
                                         (names[pa[j]], names[pb[j]], round((1 - float(s)) * total_mA, 6))],
                            "target_V_per_m": target, "outside_V_per_m": out_mean,
                            "focality": target / out_mean if out_mean > 0 else float("inf"),
                            "peak_brain_V_per_m": peak, "avoid_V_per_m": in_avoid})
    ranking = [r for r in ranking if all(a <= avoid_max_ratio * r["target_V_per_m"] for a in r["avoid_V_per_m"])]
    if not ranking:
        raise ProtocolError(f"--avoid: no montage keeps the mean envelope of every avoid region at or below "
                            f"{avoid_max_ratio:g} x the target's; give a larger --avoid-max-ratio, or fewer, "
                            "smaller or other --avoid regions")
    strongest = max(r["target_V_per_m"] for r in ranking)
    if objective == "target":
        ranking.sort(key=lambda r: -r["target_V_per_m"])
    else:
        ranking.sort(key=lambda r: (r["target_V_per_m"] < min_target_fraction * strongest, -r["focality"]))
    best = ranking[0]
    return TIMontage(best["channels"], best["target_V_per_m"], best["outside_V_per_m"], best["focality"],
                     best["peak_brain_V_per_m"], candidates, time.perf_counter() - t0, objective, ranking[:20],
                     best["avoid_V_per_m"], avoid)


def ti_protocol(montage: TIMontage, lf: Leadfield, head: str, *, frequencies_hz=(2000.0, 2010.0),
                duration_min: float = 20.0, name: str = "optimized-ti") -> dict:
    """A ``kind: ti`` protocol mapping (ready for ``stimsim run``/``check``) for a searched montage."""
    pos = {n: p for n, p in zip(lf.names, lf.positions_mm)}
    shape = lf.meta.get("shape", "point")
    channels = []
    for k, ((anode, cathode, i_mA), f) in enumerate(zip(montage.channels, frequencies_hz), 1):
        electrodes = []
        for n, sign in ((anode, 1.0), (cathode, -1.0)):
            e = {"name": n, "position": [round(float(x), 3) for x in pos[n]], "current_mA": sign * i_mA,
                 "shape": shape}
            if shape == "disc":
                e["diameter_mm"] = lf.meta["diameter_mm"]
            electrodes.append(e)
        channels.append({"name": f"ch{k}", "frequency_hz": float(f), "electrodes": electrodes})
    avoided = "".join(f"; avoid region {k} ({', '.join(f'{x:g}' for x in a[:3])}; r {a[3]:g} mm): mean envelope "
                      f"{v:.4g} V/m" for k, (a, v) in enumerate(zip(montage.avoid, montage.avoid_envelopes_V_per_m), 1))
    return {"kind": "ti", "name": name, "head": head, "channels": channels, "duration_min": duration_min,
            "description": f"optimised ({montage.objective}): mean envelope {montage.target_envelope_V_per_m:.4g} V/m "
                           f"in the target ROI, focality {montage.focality:.3g}{avoided}"}


__all__ = ["search_ti", "ti_protocol", "avoid_elements", "TIMontage"]
