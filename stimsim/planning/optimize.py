"""Montage optimisation (tDCS) and the ROI helpers that the TMS search shares.

tDCS: maximise the mean field along a direction in a target region, subject to current
limits, as a linear programme solved by HiGHS (scipy.optimize.linprog).  With currents
split into positive and negative parts, I = p - q (p, q >= 0)::

    maximise    sum_i a_i (p_i - q_i)            a_i = mean over the ROI of E_i . d (per A)
    subject to  sum_i (p_i - q_i) = 0            (Kirchhoff: all currents sum to zero)
                sum_i (p_i + q_i) <= 2 I_total    (total injected current <= I_total)
                p_i + q_i <= I_electrode          (per-electrode limit)

The usual limits are 2 mA total and 1 mA per electrode for HD-tDCS montage optimisation
(Dmochowski et al. 2011, J Neural Eng 8:046011, doi:10.1088/1741-2560/8/4/046011).
Limits above the safety checker's verified FAIL limits on the current per electrode and the total
injected current (rules ``tes.current.electrode`` / ``tes.current.total`` in
``stimsim/safety/rules.yaml``, read from there, not repeated here) are refused with an
:class:`UnsafeLimitError` unless ``allow_unsafe=True`` (CLI ``--allow-unsafe``); then the solution
carries a notice saying so.  :func:`check_montage` runs the whole safety check on the montage.
A cap on the number of active electrodes is handled greedily: solve, keep the N largest
currents, solve again on those.

TMS coil-position search: :mod:`stimsim.planning.tms_search` (reciprocity, a million placements in minutes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from ..errors import ProtocolError, shown
from ..mesh import Mesh
from .leadfield import Leadfield


def roi_elements(mesh: Mesh, center_mm, radius_mm: float, tags=None) -> np.ndarray:
    """Indices of elements whose centroid lies within ``radius_mm`` of ``center_mm`` (optionally of given tags)."""
    d = np.linalg.norm(mesh.centroids - np.asarray(center_mm, float), axis=1)
    sel = d <= radius_mm
    if tags is not None:
        sel &= np.isin(mesh.tet_tags, list(tags))
    idx = np.flatnonzero(sel)
    if len(idx) == 0:
        raise ProtocolError(
            f"target {np.round(np.asarray(center_mm, float), 1).tolist()} mm (radius {radius_mm:g} mm) contains no element"
            + (f" of tissue tags {[int(t) for t in tags]}" if tags is not None else "")
            + "; check that the target lies inside the brain and the coordinates are in the head's frame (mm)"
        )
    return idx


def target_direction(mesh: Mesh, center_mm, direction) -> np.ndarray:
    """Unit direction: a vector, or "normal" = into the head along the nearest scalp normal."""
    if isinstance(direction, str):
        if direction != "normal":
            raise ProtocolError(f"direction: {direction!r} is not 'normal' or 'x,y,z'")
        nodes, normals = mesh.boundary_node_normals()
        k = np.argmin(np.linalg.norm(mesh.nodes[nodes] - np.asarray(center_mm, float), axis=1))
        return -normals[k]
    d = np.asarray(direction, float)
    if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
        raise ProtocolError(f"direction: {direction!r} is not a 3-vector")
    return d / np.linalg.norm(d)


@dataclass(frozen=True)
class MontageSolution:
    currents_mA: dict[str, float]
    target_field_V_per_m: float  # mean E . direction in the ROI
    n_roi_elements: int
    notices: tuple[str, ...] = ()  # e.g. limits above the safety FAIL limits accepted with allow_unsafe


class UnsafeLimitError(ProtocolError):
    """A requested current limit is above a verified safety FAIL limit (and ``allow_unsafe`` was not given)."""


@dataclass(frozen=True)
class CurrentLimit:
    """A verified FAIL limit on a current, read from the safety rules."""

    rule_id: str
    op: str  # ">" or ">=": FAIL when the current is beyond the value this way
    value_mA: float
    citation: str

    def exceeded(self, current_mA: float) -> bool:
        tol = 1e-9 * abs(self.value_mA)
        return current_mA > self.value_mA + tol if self.op == ">" else current_mA >= self.value_mA - tol

    def text(self) -> str:
        return f"FAIL {self.op} {self.value_mA:g} mA (rule {self.rule_id}: {self.citation})"


def safety_current_limits(rules=None) -> dict[str, CurrentLimit]:
    """The verified tDCS FAIL limits on the current: ``{"electrode": ..., "total": ...}``.

    Taken from the safety rules (default: the shipped ``rules.yaml``): the verified rules that evaluate the
    per-electrode current (``electrode_current``) and the total injected current (``total_current``) of a
    tDCS protocol; the strictest when there are several.
    """
    from ..safety import load_rules
    from ..safety.model import RuleSet

    ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
    out = {}
    for key, evaluator in (("electrode", "electrode_current"), ("total", "total_current")):
        found = [CurrentLimit(r.id, r.fail.op, float(r.fail.value), r.citation()) for r in ruleset.rules
                 if r.evaluator == evaluator and r.kind == "check" and r.verified_ok and r.fail is not None
                 and "tdcs" in r.kinds and (r.verified_for is None or "tdcs" in r.verified_for)]
        if not found:
            raise ProtocolError(f"safety rules {ruleset.origin}: no verified tDCS FAIL limit on the {key} current "
                                f"(evaluator {evaluator}); the optimiser needs one")
        out[key] = min(found, key=lambda c: c.value_mA)
    return out


def check_current_limits(max_total_mA: float, max_electrode_mA: float, *, allow_unsafe: bool = False,
                         rules=None, options=("--max-total-mA", "--max-electrode-mA")) -> tuple[str, ...]:
    """Refuse current limits above the verified FAIL limits (or, with ``allow_unsafe``, return notices).

    Raises :class:`UnsafeLimitError` naming the option (``options``: the command line's names of the
    total and per-electrode limits), the limit and its citation.
    """
    for name, v in (("max_total_mA", max_total_mA), ("max_electrode_mA", max_electrode_mA)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ProtocolError(f"current limits must be finite numbers > 0 mA: {name} = {shown(v)}")
    limits = safety_current_limits(rules)
    notices = []
    for key, name, opt, v in (("electrode", "max_electrode_mA", options[1], max_electrode_mA),
                              ("total", "max_total_mA", options[0], max_total_mA)):
        lim = limits[key]
        if not lim.exceeded(v):
            continue
        what = "per electrode" if key == "electrode" else "in total"
        if not allow_unsafe:
            raise UnsafeLimitError(
                f"{opt} {v:g} ({name}) is above the safety limit of {lim.value_mA:g} mA {what}: {lim.text()}; "
                f"give at most {lim.value_mA:g} mA, or pass --allow-unsafe (allow_unsafe=True) to optimise beyond "
                "the verified limit")
        notices.append(f"{opt} {v:g} mA is above the safety limit of {lim.value_mA:g} mA {what} ({lim.text()}); "
                       "optimising beyond it because --allow-unsafe was given: the montage may FAIL the safety check")
    return tuple(notices)


def check_montage(protocol, *, allow_unsafe: bool = False, rules=None):
    """The safety check of an optimised montage (no fields); a FAIL raises :class:`UnsafeLimitError`
    naming the failing rules unless ``allow_unsafe``.  Returns the :class:`~stimsim.safety.SafetyReport`."""
    from ..safety import check

    report = check(protocol, rules=rules)
    if report.verdict == "FAIL" and not allow_unsafe:
        fails = [r for r in report.results if r.verdict == "FAIL"]
        what = "; ".join(f"{r.rule_id}" + (f" [{r.subject}]" if r.subject else "") + f": {r.reason}"
                         for r in fails[:3]) + ("; ..." if len(fails) > 3 else "")
        raise UnsafeLimitError(f"the optimised montage FAILs the safety check ({what}); lower --max-electrode-mA / "
                               "--max-total-mA or use larger electrodes, or pass --allow-unsafe to write it anyway")
    return report


def optimize_tdcs(lf: Leadfield, mesh: Mesh, target_mm, radius_mm: float = 10.0, direction="normal", *,
                  max_total_mA: float = 2.0, max_electrode_mA: float = 1.0, max_electrodes: int | None = None,
                  tags=None, allow_unsafe: bool = False, rules=None) -> MontageSolution:
    """Currents that maximise the mean directional field in the target ROI (see module docstring).

    ``max_total_mA`` / ``max_electrode_mA`` above the verified safety FAIL limits raise
    :class:`UnsafeLimitError` unless ``allow_unsafe`` (then ``MontageSolution.notices`` says so).
    """
    notices = check_current_limits(max_total_mA, max_electrode_mA, allow_unsafe=allow_unsafe, rules=rules)
    if max_electrodes is not None and max_electrodes < 2:
        raise ProtocolError("max_electrodes must be at least 2 (one anode, one cathode)")
    idx = roi_elements(mesh, target_mm, radius_mm, tags)
    d = target_direction(mesh, target_mm, direction)
    w = mesh.volumes_mm3[idx]
    # per-A directional field of each electrode, averaged over the ROI (reference: 0)
    a = np.append(np.einsum("kmd,d,m->k", lf.fields[:, idx].astype(np.float64), d, w) / w.sum(), 0.0)
    active = np.arange(len(a))
    currents = _solve_lp(a, active, max_total_mA, max_electrode_mA)
    if max_electrodes is not None and np.count_nonzero(np.abs(currents) > 1e-9) > max_electrodes:
        keep = np.argsort(-np.abs(currents))[:max_electrodes]
        currents = _solve_lp(a, np.sort(keep), max_total_mA, max_electrode_mA)
    currents[np.abs(currents) < 1e-9] = 0.0
    out = {n: float(c) for n, c in zip(lf.names, currents) if c != 0.0}
    return MontageSolution(out, float(a @ currents) * 1e-3, len(idx), notices)


def _solve_lp(a, active, max_total_mA, max_electrode_mA):
    n = len(active)
    c = -np.concatenate([a[active], -a[active]])  # maximise a.(p - q)
    a_eq = np.concatenate([np.ones(n), -np.ones(n)])[None, :]
    a_ub = [np.ones(2 * n)]
    b_ub = [2 * max_total_mA]
    res = linprog(c, A_ub=np.array(a_ub), b_ub=b_ub, A_eq=a_eq, b_eq=[0.0],
                  bounds=[(0, max_electrode_mA)] * (2 * n), method="highs")
    if res.status != 0:
        raise ProtocolError(f"montage optimisation failed: {res.message}")
    currents = np.zeros(len(a))
    currents[active] = res.x[:n] - res.x[n:]
    return currents


def montage_protocol(solution: MontageSolution, lf: Leadfield, head: str, *, conductivities=None,
                     duration_min: float = 20.0, name: str = "optimized-montage") -> dict:
    """A protocol mapping (ready for ``stimsim run``/``check``) for an optimised montage."""
    pos = {n: p for n, p in zip(lf.names, lf.positions_mm)}
    shape = lf.meta.get("shape", "point")
    electrodes = []
    for n, i_mA in solution.currents_mA.items():
        e = {"name": n, "position": [round(float(x), 3) for x in pos[n]], "current_mA": round(i_mA, 6),
             "shape": shape}
        if shape == "disc":
            e["diameter_mm"] = lf.meta["diameter_mm"]
        electrodes.append(e)
    # rounding must not break Kirchhoff: put the residue on the largest return electrode
    residue = sum(e["current_mA"] for e in electrodes)
    j = min(range(len(electrodes)), key=lambda i: electrodes[i]["current_mA"])
    electrodes[j]["current_mA"] = round(electrodes[j]["current_mA"] - residue, 9)
    p = {"kind": "tdcs", "name": name, "head": head, "electrodes": electrodes, "duration_min": duration_min,
         "description": f"optimised: mean field {solution.target_field_V_per_m:.4g} V/m in the target ROI"}
    if conductivities:
        p["conductivities"] = conductivities
    return p
