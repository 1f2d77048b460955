"""Check a protocol (and optionally its computed fields) against the rules in ``rules.yaml``.

``check(protocol, fields=None, *, brain_tags=None, questionnaire=None)`` returns a
:class:`~stimsim.safety.model.SafetyReport`.  The numbers live in ``rules.yaml``; this module only
computes the protocol's quantities and compares.  The meaning of each status is enforced here, centrally
(see docs/safety_verdicts.md):

* a quantity a rule needs but the protocol lacks gives NOT_CHECKED "cannot check: <field> missing" with
  what to give, never PASS;
* a rule whose limit could not be verified from its source (``verified_ok: false``) gives NOT_CHECKED
  (informational: the value and the unverified limit are shown), never PASS, WARN or FAIL;
* a rule applied to a kind its limit was not established for (e.g. tACS against tDCS evidence) gives
  NOT_CHECKED when the value is within the borrowed limit, WARN when beyond it (outside any evidence),
  and always NOT_CHECKED when the rule says the limit does not carry over (``outside_evidence:
  not_applicable``);
* notes (advice the protocol cannot record) are NOT_CHECKED rows that say what to confirm;
* in the evidence rules (rTMS pattern, theta burst) a condition marked ``verified: false`` can only make a
  protocol NOT_CHECKED (informational, "would be PASS"), never PASS, and never rescues an intensity above
  every verified condition's (WARN).

WARN means outside the evidence, FAIL beyond a verified limit.  Bad input (a protocol that does not
validate, a questionnaire with unknown items or answers that are not yes/no, a fields object without
mesh tags/volumes/J) raises a :class:`~stimsim.errors.StimsimError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import yaml
from pydantic import ValidationError

from ..errors import ProtocolError, StimsimError
from ..protocol import TESProtocol, TIProtocol, TMSProtocol, validate_protocol
from .model import NOT_CHECKED, Rule, RuleResult, RuleSet, SafetyReport, Source, Status


class SafetyInputError(StimsimError, ValueError):
    """Input to the safety check (fields, brain tags, questionnaire, rules file) is unusable."""


# ----------------------------------------------------------------------------------------- rules


def _default_rules_path() -> Path:
    return Path(str(resources.files("stimsim.safety") / "rules.yaml"))


@lru_cache(maxsize=8)
def _load_rules_cached(path: str) -> RuleSet:
    p = Path(path)
    try:
        # libyaml's safe loader where PyYAML has it: the same documents, ~8x faster on the
        # shipped rules (56 kB: 64 -> 8 ms), which every run checks its result against
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise SafetyInputError(f"rules file not found: {p}") from None
    except yaml.YAMLError as err:
        raise SafetyInputError(f"{p}: malformed YAML: {err}") from None
    try:
        return RuleSet(**data, origin=str(p))
    except (ValidationError, TypeError) as err:
        raise SafetyInputError(f"{p}: invalid rules file: {err}") from None


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The rule set (default: the ``rules.yaml`` shipped in this package)."""
    return _load_rules_cached(str(Path(path) if path is not None else _default_rules_path()))


# ----------------------------------------------------------------------------------------- helpers


@dataclass
class _Raw:
    """What an evaluator found for one subject; turned into a RuleResult by :func:`_finalize`."""

    value: float | None = None
    subject: str | None = None
    reason: str = ""
    verdict: Status | None = None  # None: decide from the rule's thresholds
    missing: str | None = None  # name of the missing field -> NOT_CHECKED "cannot check: ... missing"
    how: str | None = None  # NOT_CHECKED: what would let the rule be checked
    limit: float | None = None
    limit_text: str | None = None
    citation: str | None = None


@dataclass
class _Context:
    protocol: TESProtocol | TMSProtocol
    fields: Any = None
    brain_tags: tuple[int, ...] | None = None
    questionnaire: dict[str, bool | None] | None = None
    sources: Mapping[str, Source] | None = None


def _electrode_area_cm2(e) -> float | None:
    """Nominal contact area from the protocol: disc pi d^2/4, rect a*b; None for point electrodes."""
    if e.shape == "disc":
        return math.pi * e.diameter_mm ** 2 / 4.0 / 100.0
    if e.shape == "rect":
        return e.size_mm[0] * e.size_mm[1] / 100.0
    return None


def _total_current_mA(p: TESProtocol) -> float:
    return sum(e.current_mA for e in p.electrodes if e.current_mA > 0)


def _effective_time_s(p: TESProtocol) -> float:
    """Full-current time plus half of the (linear) ramps: the charge-equivalent duration."""
    return p.duration_min * 60.0 + 0.5 * (p.ramp_up_s + p.ramp_down_s)


def _intensity_text(prog) -> str:
    if prog.intensity_pct_rmt is not None:
        return f"{prog.intensity_pct_rmt:g} % rMT"
    if prog.intensity_pct_amt is not None:
        return f"{prog.intensity_pct_amt:g} % aMT"
    if prog.intensity_pct_mso is not None:
        return f"{prog.intensity_pct_mso:g} % MSO"
    return "intensity not given"


def _rmt_missing_reason(prog) -> str:
    other = [f for f in ("intensity_pct_amt", "intensity_pct_mso") if getattr(prog, f) is not None]
    return "intensity_pct_rmt" + (f" (only {other[0]} given; the limits are in % of resting motor threshold)"
                                  if other else "")


_GIVE_RMT = ("give program.intensity_pct_rmt (the verified limits and conditions are in % of the resting motor "
             "threshold)")
_TOL = 1e-9


def _rmt_bound(prog) -> tuple[float | None, bool]:
    """(intensity in % rMT or an upper bound of it, exact?).

    % aMT is an upper bound of % rMT (the active threshold is below the resting one, so the same output is
    a smaller percentage of rMT); % MSO cannot be related to the motor threshold: (None, False).
    """
    if prog.intensity_pct_rmt is not None:
        return float(prog.intensity_pct_rmt), True
    if prog.intensity_pct_amt is not None:
        return float(prog.intensity_pct_amt), False
    return None, False


def _source_short(ctx: _Context, key: str, where: str | None = None) -> str:
    src = (ctx.sources or {}).get(key)
    text = src.short() if src is not None else key
    return f"{text} ({where})" if where else text


# ----------------------------------------------------------------------------------------- evaluators: tES


def _ev_electrode_current(rule: Rule, ctx: _Context) -> list[_Raw]:
    return [_Raw(value=abs(e.current_mA), subject=e.name, reason=f"|{e.current_mA:g}| mA")
            for e in ctx.protocol.electrodes]


def _ev_electrode_peak_to_peak(rule: Rule, ctx: _Context) -> list[_Raw]:
    return [_Raw(value=2 * abs(e.current_mA), subject=e.name,
                 reason=f"peak amplitude {abs(e.current_mA):g} mA = {2 * abs(e.current_mA):g} mA peak-to-peak")
            for e in ctx.protocol.electrodes]


def _ev_tacs_frequency(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.kind == "ti" or getattr(p, "channels", None):  # every channel's carrier (TI, multichannel tACS)
        what = "carrier" if p.kind == "ti" else "channel"
        return [_Raw(value=float(c.frequency_hz), subject=c.name, reason=f"{what} {c.frequency_hz:g} Hz")
                for c in p.channels]
    f = p.frequency_hz
    return [_Raw(value=float(f), reason=f"{f:g} Hz")]


def _ev_total_current(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    pos = [e for e in p.electrodes if e.current_mA > 0]
    reason = "sum of " + " + ".join(f"{e.current_mA:g}" for e in pos) + " mA injected"
    if p.kind == "ti":
        reason += " (the channels' peak amplitudes: the carriers peak together once per envelope period)"
    elif getattr(p, "channels", None):
        reason += " (the channels' peak amplitudes: their peaks can coincide)"
    return [_Raw(value=_total_current_mA(p), reason=reason)]


_GIVE_DURATION = "give duration_min (minutes at full current) in the protocol"
_GIVE_SPD = "give sessions_per_day in the protocol (e.g. sessions_per_day: 1)"


def _ev_session_duration(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.duration_min is None:
        return [_Raw(missing="duration_min", how=_GIVE_DURATION)]
    ramps = (p.ramp_up_s + p.ramp_down_s) / 60.0
    return [_Raw(value=p.duration_min + ramps,
                 reason=f"{p.duration_min:g} min at full current + {ramps:.3g} min of ramps")]


def _ev_total_charge(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.duration_min is None:
        return [_Raw(missing="duration_min", how=_GIVE_DURATION)]
    t = _effective_time_s(p)
    i = _total_current_mA(p)
    return [_Raw(value=i * 1e-3 * t, reason=f"{i:g} mA x {t:g} s (ramps counted half)")]


_POINT_ELECTRODE = _Raw(verdict=NOT_CHECKED,
                        reason="cannot compute: a point electrode has no area",
                        how="give the electrode's shape and size (shape: disc with diameter_mm, or shape: rect with "
                            "size_mm)")


def _ev_electrode_current_density(rule: Rule, ctx: _Context) -> list[_Raw]:
    out = []
    for e in ctx.protocol.electrodes:
        a = _electrode_area_cm2(e)
        if a is None:
            out.append(replace(_POINT_ELECTRODE, subject=e.name))
            continue
        out.append(_Raw(value=abs(e.current_mA) / a, subject=e.name,
                        reason=f"{abs(e.current_mA):g} mA / {a:.4g} cm^2 ({e.shape})"))
    return out


def _ev_electrode_charge_density(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.duration_min is None:
        return [_Raw(missing="duration_min", how=_GIVE_DURATION)]
    t = _effective_time_s(p)
    out = []
    for e in p.electrodes:
        a = _electrode_area_cm2(e)
        if a is None:
            out.append(replace(_POINT_ELECTRODE, subject=e.name))
            continue
        out.append(_Raw(value=abs(e.current_mA) * 1e-3 * t / a, subject=e.name,
                        reason=f"{abs(e.current_mA):g} mA x {t:g} s / {a:.4g} cm^2"))
    return out


def _ev_sessions_per_day(rule: Rule, ctx: _Context) -> list[_Raw]:
    spd = ctx.protocol.sessions_per_day
    if spd is None:
        return [_Raw(missing="sessions_per_day", how=_GIVE_SPD)]
    reason = ("one session per day: the per-session rules cover the daily dose" if spd <= 1 else
              f"{spd} sessions per day: no verified limit on sessions per day; cumulative daily dose "
              "not covered by the per-session evidence")
    return [_Raw(value=float(spd), reason=reason)]


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Volume-weighted percentile (same definition as stimsim.results.weighted_percentile)."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w)
    if cw[-1] <= 0:
        return float("nan")
    return float(np.interp(q / 100.0 * cw[-1], cw - 0.5 * w, v))


def _field_arrays(fields) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tags, volumes mm^3, |J| A/m^2) per element, validated."""
    mesh = getattr(fields, "mesh", None)
    if mesh is None:
        raise SafetyInputError("fields: has no 'mesh' (expected a SimulationResult or an object with .mesh "
                               "(.tet_tags, .volumes_mm3) and .J)")
    try:
        tags = np.asarray(mesh.tet_tags).ravel()
        vols = np.asarray(mesh.volumes_mm3, dtype=float).ravel()
    except AttributeError as err:
        raise SafetyInputError(f"fields.mesh: missing attribute ({err}); needs tet_tags and volumes_mm3") from None
    J = getattr(fields, "J", None)
    if J is None:
        raise SafetyInputError("fields: has no 'J' (element current density, A/m^2, shape (m, 3))")
    J = np.asarray(J, dtype=float)
    if J.ndim != 2 or J.shape[1] != 3 or len(J) != len(tags) or len(vols) != len(tags):
        raise SafetyInputError(f"fields: J has shape {J.shape}, tet_tags {tags.shape}, volumes_mm3 {vols.shape}; "
                               "expected J (m, 3) with m tags and m volumes")
    if not np.all(np.isfinite(J)):
        raise SafetyInputError("fields.J: contains non-finite values")
    return tags, vols, np.sqrt(np.einsum("ij,ij->i", J, J))  # |J| without an (m, 3) temporary


def _ev_brain_current_density(rule: Rule, ctx: _Context) -> list[_Raw]:
    tags, vols, magJ = _field_arrays(ctx.fields)
    present = sorted(int(t) for t in np.unique(tags))
    q = float(rule.params.get("percentile", 99.9))
    if ctx.brain_tags is None:
        wanted = [int(t) for t in rule.params.get("default_brain_tags", [1, 2])]
        use = [t for t in wanted if t in present]
        if not use:
            return [_Raw(verdict=NOT_CHECKED,
                         reason=f"cannot identify brain tissue: the mesh has tags {present} and none of "
                                f"{wanted} (WM, GM)",
                         how="name the brain compartment's tags: brain_tags=[...] in Python, --brain-tag N on the "
                             "command line (e.g. 3 on a layered sphere)")]
    else:
        use = [t for t in ctx.brain_tags if t in present]
        if not use:
            raise SafetyInputError(f"brain_tags: none of {list(ctx.brain_tags)} is a tag of the mesh {present}")
    sel = np.isin(tags, use)
    value = _weighted_percentile(magJ[sel], vols[sel], q)
    thr = rule.fail.value if rule.fail is not None else float("nan")
    margin = thr / value if value > 0 else float("inf")
    return [_Raw(value=value, subject=f"tags {use}",
                 reason=f"p{q:g} |J| in brain = {value:.3g} A/m^2 vs injury threshold {thr:g} A/m^2: "
                        f"safety margin x{margin:.3g}")]


# ----------------------------------------------------------------------------------------- evaluators: TMS


def _ev_single_pulse_rate(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    n = prog.pulses or 1
    if n <= 1:
        return [_Raw(value=0.0, reason="one pulse")]
    if prog.interval_s is None:
        return [_Raw(missing="interval_s", how="give program.interval_s (seconds between single pulses)")]
    rate = 1.0 / prog.interval_s
    return [_Raw(value=rate, reason=f"{n} pulses, {prog.interval_s:g} s apart ({_intensity_text(prog)})")]


def _ev_single_pulse_intensity(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    bound = float(rule.params["plausible_max_pct"])
    if prog.intensity_pct_rmt is None and prog.intensity_pct_amt is None:
        return [_Raw(missing=_rmt_missing_reason(prog), how=_GIVE_RMT)]
    value = prog.intensity_pct_rmt if prog.intensity_pct_rmt is not None else prog.intensity_pct_amt
    unit = "rMT" if prog.intensity_pct_rmt is not None else "aMT"
    if value > bound + _TOL:
        return [_Raw(value=value, verdict="WARN", limit=bound, limit_text=f"WARN > {bound:g} % of a motor threshold",
                     reason=f"{value:g} % {unit}: more than {bound / 100:g} times the motor threshold, beyond the "
                            "single-pulse use the sources describe and beyond what common stimulators deliver; "
                            "check the value (e.g. % MSO entered as % rMT)")]
    return [_Raw(value=value, verdict="PASS", limit=bound, limit_text=f"WARN > {bound:g} % of a motor threshold",
                 reason=f"{value:g} % {unit}: single pulses below 1 Hz are safe in normal subjects (rate checked by "
                        "tms.single_pulse_rate); within the plausible range")]


def _ev_train_duration_table(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    f, ppt = prog.frequency_hz, prog.pulses_per_train
    train_s = ppt / f
    desc = f"train {train_s:.4g} s ({ppt} pulses at {f:g} Hz), {_intensity_text(prog)}"
    table = rule.params.get("table")
    if not table:
        return [_Raw(value=train_s, verdict=NOT_CHECKED,
                     reason=f"{desc}: no verified table of maximum safe train duration is available here",
                     how=f"limit not verified in the source table ({rule.source.short()}, {rule.where}): train "
                         f"{train_s:.4g} s vs no transcribed limit, informational; compare with the source's table "
                         "by hand (frequency and intensity extremes are checked by tms.rtms.evidence)")]
    if prog.intensity_pct_rmt is None:
        return [_Raw(value=train_s, missing=_rmt_missing_reason(prog), how=_GIVE_RMT)]
    freqs = [float(x) for x in table["frequency_hz"]]
    ints = [float(x) for x in table["intensity_pct_rmt"]]
    grid = table["max_train_s"]  # rows: intensities, columns: frequencies
    # conservative lookup: the next tabulated frequency and intensity at or above the protocol's
    fi = next((i for i, x in enumerate(freqs) if x >= f - 1e-12), None)
    ii = next((i for i, x in enumerate(ints) if x >= prog.intensity_pct_rmt - 1e-12), None)
    if fi is None or ii is None:
        return [_Raw(value=train_s, verdict="WARN", reason=f"{desc}: outside the table "
                     f"({freqs[0]:g}-{freqs[-1]:g} Hz, {ints[0]:g}-{ints[-1]:g} % rMT)")]
    limit = grid[ii][fi]
    if limit is None:
        return [_Raw(value=train_s, verdict="WARN",
                     reason=f"{desc}: the table gives no limit at {freqs[fi]:g} Hz, {ints[ii]:g} % rMT")]
    limit = float(limit)
    verdict = "FAIL" if train_s > limit * (1 + 1e-9) else "PASS"
    return [_Raw(value=train_s, verdict=verdict, limit=limit, limit_text=f"FAIL > {limit:g} s",
                 reason=f"{desc}: maximum {limit:g} s at {freqs[fi]:g} Hz, {ints[ii]:g} % rMT (next tabulated "
                        "frequency and intensity at or above the protocol's)")]


def _ev_inter_train_interval(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    x = prog.expanded()
    pr = rule.params
    if x["trains"] <= 1:
        return [_Raw(verdict="PASS", reason="a single train: there is no inter-train interval (a long continuous "
                                            "train is checked by tms.rtms.train_without_pause)")]
    iti, f, ppt = x["iti_s"], x["frequency_hz"], x["pulses_per_train"]
    train_s, trains = x["train_duration_s"], x["trains"]
    if prog.intensity_pct_rmt is None:
        return [_Raw(value=iti, missing=_rmt_missing_reason(prog), how=_GIVE_RMT)]
    inten = prog.intensity_pct_rmt
    desc = f"ITI {iti:g} s between {trains} trains of {train_s:.3g} s ({ppt} pulses) at {f:g} Hz, {inten:g} % rMT"
    tol = _TOL
    unsafe = (iti <= pr["unsafe_max_iti_s"] + tol and inten > pr["unsafe_min_intensity_pct_rmt"] + tol
              and f >= pr["unsafe_min_frequency_hz"] - tol
              and (train_s >= pr["unsafe_min_train_s"] - tol or ppt >= pr["unsafe_min_pulses_per_train"]))
    if unsafe:
        return [_Raw(value=iti, verdict="FAIL", limit=pr["unsafe_max_iti_s"],
                     limit_text=f"FAIL <= {pr['unsafe_max_iti_s']:g} s (> {pr['unsafe_min_intensity_pct_rmt']:g} % "
                                f"rMT, trains >= {pr['unsafe_min_frequency_hz']:g} Hz x "
                                f"{pr['unsafe_min_train_s']:g} s)",
                     reason=f"{desc}: inter-train intervals of <= {pr['unsafe_max_iti_s']:g} s were unsafe for "
                            f"{pr['unsafe_min_frequency_hz']:g} Hz trains of {pr['unsafe_min_train_s']:g} s above "
                            f"{pr['unsafe_min_intensity_pct_rmt']:g} % MT")]
    safe = (iti >= pr["safe_min_iti_s"] - tol and f <= pr["safe_max_frequency_hz"] + tol
            and train_s <= pr["safe_max_train_s"] + tol and ppt <= pr["safe_max_pulses_per_train"]
            and inten <= pr["safe_max_intensity_pct_rmt"] + tol and trains <= pr["safe_max_trains"])
    if safe:
        return [_Raw(value=iti, verdict="PASS", limit=pr["safe_min_iti_s"],
                     limit_text=f"PASS >= {pr['safe_min_iti_s']:g} s for <= {pr['safe_max_trains']} trains of "
                                f"<= {pr['safe_max_frequency_hz']:g} Hz x {pr['safe_max_train_s']:g} s at "
                                f"<= {pr['safe_max_intensity_pct_rmt']:g} % rMT",
                     reason=f"{desc}: no stronger than the condition found safe "
                            f"({pr['safe_max_trains']} trains, {pr['safe_max_frequency_hz']:g} Hz x "
                            f"{pr['safe_max_train_s']:g} s, {pr['safe_max_intensity_pct_rmt']:g} % MT, "
                            f"ITI {pr['safe_min_iti_s']:g} s)")]
    limit_text = (f"FAIL <= {pr['unsafe_max_iti_s']:g} s; PASS >= {pr['safe_min_iti_s']:g} s (tested conditions "
                  "only)")
    if iti < pr["safe_min_iti_s"] - tol:
        return [_Raw(value=iti, verdict="WARN", limit_text=limit_text,
                     reason=f"{desc}: a pause shorter than the {pr['safe_min_iti_s']:g} s found safe, outside the "
                            "tested conditions (the source's full table of safe intervals could not be read)")]
    return [_Raw(value=iti, verdict=NOT_CHECKED, limit_text=limit_text,
                 reason=f"{desc}: a pause of at least the {pr['safe_min_iti_s']:g} s found safe, but trains or "
                        "intensity beyond the tested condition",
                 how="the source's full table of safe inter-train intervals is not transcribed (not verified): "
                     "compare by hand; the train pattern is checked against verified conditions by "
                     "tms.rtms.evidence")]


def _covers(cond: dict, values: dict, keys: tuple[str, ...], single_train: bool, iti: float) -> bool:
    """True when the condition is at least as strong as the protocol in every key (and its pause at most
    the protocol's; a condition with ``min_iti_s: null`` tested a single train and covers single trains only).
    A key the condition leaves out or sets to null is not bounded by it (e.g. an unverified statement without a
    train-length limit)."""
    for k in keys:
        if cond.get(k) is not None and values[k] is not None and values[k] > float(cond[k]) * (1 + _TOL) + _TOL:
            return False
    if single_train:
        return True
    min_iti = cond.get("min_iti_s")
    return min_iti is not None and iti >= float(min_iti) - _TOL


def _le(x: float, y: float) -> bool:
    return x <= y * (1 + _TOL) + _TOL


def _intensity_within(cond: dict, prog, verified_top: float | None) -> str:
    """Is the protocol's intensity at most the condition's?  'yes', 'no', 'unknown' or 'missing'.

    Conditions give % rMT (``intensity_pct_rmt``) or % aMT (``intensity_pct_amt``); one that states no intensity is
    bounded by the highest verified % rMT (``verified_top``).  The active threshold is below the resting one, so
    x % aMT is at most x % rMT: a protocol in % aMT is within a % rMT condition when its number is, and a protocol
    in % rMT is beyond a % aMT condition when its number is larger (otherwise it cannot be told).
    """
    r, a = prog.intensity_pct_rmt, prog.intensity_pct_amt
    if r is None and a is None:
        return "missing"
    c_r, c_a = cond.get("intensity_pct_rmt"), cond.get("intensity_pct_amt")
    if c_r is None and c_a is None:
        c_r = verified_top
        if c_r is None:
            return "unknown"
    if c_r is not None:
        if r is not None:
            return "yes" if _le(r, float(c_r)) else "no"
        return "yes" if _le(a, float(c_r)) else "unknown"
    if a is not None:
        return "yes" if _le(a, float(c_a)) else "no"
    return "unknown" if _le(r, float(c_a)) else "no"


def _cond_intensity_text(cond: dict, verified_top: float | None) -> str:
    if cond.get("intensity_pct_rmt") is not None:
        return f"{float(cond['intensity_pct_rmt']):g} % rMT"
    if cond.get("intensity_pct_amt") is not None:
        return f"{float(cond['intensity_pct_amt']):g} % aMT"
    return (f"no stated intensity (bounded here by the highest verified {verified_top:g} % rMT)"
            if verified_top is not None else "no stated intensity")


def _evidence_check(rule: Rule, ctx: _Context, values: dict, labels: dict, desc: str, single_train: bool,
                    iti: float) -> list[_Raw]:
    """Compare a pulse programme with the conditions of the rule (``params.conditions``).

    Each condition is a pattern reported safe in a source; ``verified: false`` marks one whose numbers could not
    be read in a stored copy of its source (it carries ``unverified_because``).  Verdicts:

    * PASS when a verified condition is at least as strong in every respect (intensity included);
    * WARN (outside the evidence) when the intensity in % rMT is above every verified condition's, when another
      parameter is above every verified condition's and no unverified condition covers it, or when nothing
      covers the pattern at the protocol's intensity;
    * NOT_CHECKED when the intensity is missing or cannot be compared (% aMT vs % rMT) and that decides, or when
      only an unverified condition covers the protocol: informational, "would be PASS", like a rule with
      ``verified_ok: false``.
    """
    prog = ctx.protocol.program
    conds = rule.params["conditions"]
    ver = [c for c in conds if c.get("verified", True)]
    unv = [c for c in conds if not c.get("verified", True)]
    keys = tuple(labels)
    pattern_keys = tuple(k for k in keys if k != "intensity_pct_rmt")
    value = values.get("_value")
    rmt_tops = [float(c["intensity_pct_rmt"]) for c in ver if c.get("intensity_pct_rmt") is not None]
    verified_top = max(rmt_tops) if rmt_tops else None
    limit_text = "PASS when no stronger than a verified condition: " + "; ".join(c["label"] for c in ver)
    if unv:
        limit_text += ("; NOT CHECKED (informational) within a condition not verified in its source: "
                       + "; ".join(c["label"] for c in unv))
    beyond, intensity_beyond = [], False
    for k in keys:
        v = values[k] if k != "intensity_pct_rmt" else prog.intensity_pct_rmt  # % aMT only bounds % rMT
        tops = [float(c[k]) for c in ver if c.get(k) is not None]
        if not tops or v is None:
            continue
        if v > max(tops) * (1 + _TOL) + _TOL:
            beyond.append(f"{labels[k].format(v)} is above every verified condition (highest "
                          f"{labels[k].format(max(tops))})")
            intensity_beyond |= k == "intensity_pct_rmt"
    cands_v = [c for c in ver if _covers(c, values, pattern_keys, single_train, iti)]
    cands_u = [c for c in unv if _covers(c, values, pattern_keys, single_train, iti)]
    if intensity_beyond or (beyond and not cands_u):
        return [_Raw(value=value, verdict="WARN", limit_text=limit_text,
                     reason=f"{desc}: " + "; ".join(beyond) + ": outside the verified evidence")]
    if not cands_v and not cands_u:
        return [_Raw(value=value, verdict="WARN", limit_text=limit_text,
                     reason=f"{desc}: each parameter is within the verified range, but no verified condition is at "
                            "least as strong in every respect (" + ", ".join(k.replace("_", " ") for k in pattern_keys)
                            + (", pause between trains" if not single_train else "") + "): outside the verified "
                            "evidence")]
    amt_relevant = any(c.get("intensity_pct_amt") is not None for c in cands_v + cands_u)
    how_intensity = (_GIVE_RMT if not amt_relevant else
                     "give program.intensity_pct_rmt or program.intensity_pct_amt (the conditions covering this "
                     "pattern are in % of the resting or of the active motor threshold)")
    within_v = [(c, _intensity_within(c, prog, verified_top)) for c in cands_v]
    within_u = [(c, _intensity_within(c, prog, verified_top)) for c in cands_u]
    if any(w == "missing" for _, w in within_v + within_u):
        return [_Raw(value=value, missing=_rmt_missing_reason(prog), how=how_intensity, limit_text=limit_text)]
    ok = [c for c, w in within_v if w == "yes"]
    if ok:
        c = ok[0]
        bound = "" if prog.intensity_pct_rmt is not None or c.get("intensity_pct_amt") is not None else \
            " (intensity in % aMT, an upper bound of % rMT)"
        return [_Raw(value=value, verdict="PASS", limit_text=limit_text,
                     reason=f"{desc}: no stronger than {c['label']}{bound}",
                     citation=_source_short(ctx, c["source"], c.get("where")))]
    unknown_v = [c for c, w in within_v if w == "unknown"]
    if unknown_v:
        tops = ", ".join(_cond_intensity_text(c, verified_top) for c in unknown_v)
        return [_Raw(value=value, verdict=NOT_CHECKED, limit_text=limit_text,
                     reason=f"{desc}: the pattern is covered by a verified condition up to {tops}; the intensity is "
                            f"given as {_intensity_text(prog)}, which may or may not be above it",
                     how=how_intensity)]
    for c, w in within_u:
        if w == "no":
            continue
        src = (ctx.sources or {}).get(c["source"])
        src_text = src.short() if src is not None else c["source"]
        why = c.get("unverified_because", "its numbers could not be read in a stored copy of the source")
        if w == "yes":
            reason = (f"{desc}: no verified condition covers it; it is within {c['label']}, a condition NOT "
                      f"verified in its source [informational, would be PASS]")
        else:
            reason = (f"{desc}: no verified condition covers it; the pattern is within {c['label']}, a condition "
                      f"NOT verified in its source, whose intensity ({_cond_intensity_text(c, verified_top)}) "
                      f"cannot be compared with {_intensity_text(prog)} [informational]")
        return [_Raw(value=value, verdict=NOT_CHECKED, limit_text=limit_text, reason=reason,
                     citation=_source_short(ctx, c["source"], c.get("where")),
                     how=(f"condition not verified in the source ({src_text}, {c.get('where', 'see rules.yaml')}): "
                          f"{why}; informational. Read the numbers in the source (then record where in rules.yaml "
                          "and set verified: true) or compare the protocol with the source by hand"))]
    tops = ", ".join(sorted({_cond_intensity_text(c, verified_top) for c in cands_v}
                            | {f"{_cond_intensity_text(c, verified_top)} (not verified)" for c in cands_u}))
    return [_Raw(value=value, verdict="WARN", limit_text=limit_text,
                 reason=f"{desc}: " + "".join(f"{b}; " for b in beyond)
                        + f"the conditions covering this pattern go up to {tops}: outside the verified evidence")]


def _ev_rtms_evidence(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    x = prog.expanded()
    inten, _ = _rmt_bound(prog)
    values = {"frequency_hz": x["frequency_hz"], "pulses_per_train": x["pulses_per_train"],
              "intensity_pct_rmt": inten, "_value": float(x["pulses_per_train"])}
    labels = {"frequency_hz": "{:g} Hz", "pulses_per_train": "{:g} pulses per train",
              "intensity_pct_rmt": "{:g} % rMT"}
    desc = (f"{x['trains']} train(s) of {x['pulses_per_train']} pulses at {x['frequency_hz']:g} Hz "
            f"({x['train_duration_s']:.4g} s)" + (f", ITI {x['iti_s']:g} s" if x["trains"] > 1 else "")
            + f", {_intensity_text(prog)}")
    return _evidence_check(rule, ctx, values, labels, desc, x["trains"] <= 1, x["iti_s"])


def _ev_train_without_pause(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    pr = rule.params
    f, ppt = float(prog.frequency_hz), int(prog.pulses_per_train)
    need = 2 * int(pr["unsafe_min_pulses_per_train"])
    fmin, imin = float(pr["unsafe_min_frequency_hz"]), float(pr["unsafe_min_intensity_pct_rmt"])
    limit_text = f"FAIL >= {need} pulses per train at >= {fmin:g} Hz and > {imin:g} % rMT"
    desc = f"a train of {ppt} pulses at {f:g} Hz ({ppt / f:.4g} s), {_intensity_text(prog)}"
    if f < fmin - _TOL or ppt < need:
        return [_Raw(value=float(ppt), verdict="PASS", limit=float(need), limit_text=limit_text,
                     reason=f"{desc}: not two of the unsafe {fmin:g} Hz x {pr['unsafe_min_pulses_per_train']}-pulse "
                            "trains back to back")]
    inten, exact = _rmt_bound(prog)
    if inten is not None and inten <= imin + _TOL:
        return [_Raw(value=float(ppt), verdict="PASS", limit=float(need), limit_text=limit_text,
                     reason=f"{desc}: at most {imin:g} % rMT (the unsafe condition was above {imin:g} % MT)"
                            + ("" if exact else " (% aMT is an upper bound of % rMT)"))]
    if inten is None or not exact:
        return [_Raw(value=float(ppt), missing=_rmt_missing_reason(prog), how=_GIVE_RMT, limit_text=limit_text)]
    return [_Raw(value=float(ppt), verdict="FAIL", limit=float(need), limit_text=limit_text,
                 reason=f"{desc}: contains two trains of >= {pr['unsafe_min_pulses_per_train']} pulses at >= "
                        f"{fmin:g} Hz with no pause between them, above {imin:g} % rMT: at least as strong as trains "
                        f"found unsafe with pauses of <= {pr['unsafe_max_iti_s']:g} s")]


def _ev_tbs_evidence(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    x = prog.expanded()
    inten, _ = _rmt_bound(prog)
    values = {"burst_frequency_hz": x["burst_frequency_hz"], "pulses_per_burst": x["pulses_per_burst"],
              "burst_rate_hz": x["burst_rate_hz"], "train_duration_s": x["train_duration_s"],
              "total_pulses": x["total_pulses"], "intensity_pct_rmt": inten, "_value": float(x["total_pulses"])}
    labels = {"burst_frequency_hz": "bursts at {:g} Hz", "pulses_per_burst": "{:g} pulses per burst",
              "burst_rate_hz": "{:g} bursts/s", "train_duration_s": "trains of {:.4g} s",
              "total_pulses": "{:g} pulses", "intensity_pct_rmt": "{:g} % rMT"}
    desc = (f"{x['type']}: bursts of {x['pulses_per_burst']} at {x['burst_frequency_hz']:g} Hz, "
            f"{x['burst_rate_hz']:g} bursts/s, {x['trains']} train(s) of {x['train_duration_s']:.4g} s"
            + (f", ITI {x['iti_s']:g} s" if x["trains"] > 1 else "")
            + f", {x['total_pulses']} pulses, {_intensity_text(prog)}")
    return _evidence_check(rule, ctx, values, labels, desc, x["trains"] <= 1, x["iti_s"])


def _ev_pulses_per_session(rule: Rule, ctx: _Context) -> list[_Raw]:
    x = ctx.protocol.program.expanded()
    return [_Raw(value=float(x["total_pulses"]),
                 reason=f"{x['total_pulses']} pulses in {x['session_duration_s']:.4g} s")]


def _ev_pulses_per_day(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.sessions_per_day is None:
        return [_Raw(missing="sessions_per_day", how=_GIVE_SPD)]
    x = p.program.expanded()
    n = x["total_pulses"] * p.sessions_per_day
    entry = rule.params["max_per_day"][x["type"]]
    limit = float(entry["pulses"])
    cite = _source_short(ctx, entry["source"], entry.get("where"))
    desc = f"{x['total_pulses']} pulses x {p.sessions_per_day} session(s)/day = {n} pulses/day"
    lt = f"WARN > {limit:g} pulses/day ({x['type']})"
    if n > limit:
        return [_Raw(value=float(n), verdict="WARN", limit=limit, limit_text=lt, citation=cite,
                     reason=f"{desc}: more than the {limit:g}/day of {entry['label']}: outside the verified evidence")]
    return [_Raw(value=float(n), verdict="PASS", limit=limit, limit_text=lt, citation=cite,
                 reason=f"{desc}: within the {limit:g}/day of {entry['label']}")]


def _ev_hearing_note(rule: Rule, ctx: _Context) -> list[_Raw]:
    return [_Raw(verdict=NOT_CHECKED,
                 reason="TMS coil clicks can exceed noise exposure limits for the subject and for staff near the coil",
                 how=rule.how_to_check or "confirm hearing protection for the subject and staff")]


def _ev_ti_no_specific_limit(rule: Rule, ctx: _Context) -> list[_Raw]:
    return [_Raw(verdict=NOT_CHECKED,
                 reason="no cited source states a limit specific to temporal interference; the tDCS/tACS rows "
                        "check each channel's electrodes and the total current as indicative bounds only",
                 how=rule.how_to_check or "judge the TI dose against the current literature")]


def _ev_screening(rule: Rule, ctx: _Context) -> list[_Raw]:
    items = rule.items or []
    q = ctx.questionnaire
    if q is None:
        return [_Raw(verdict=NOT_CHECKED, reason="screening questionnaire not answered",
                     how="pass --questionnaire answers.yaml (or screening: in the protocol) answering yes/no for: "
                         + ", ".join(i.key for i in items))]
    out = []
    for it in items:
        ans = q.get(it.key)
        cite = f"{it.source.short()}"
        if ans is None:
            out.append(_Raw(subject=it.key, verdict=NOT_CHECKED, reason=f"unanswered: {it.question}",
                            how=f"answer {it.key}: yes/no in the questionnaire (--questionnaire) or in screening:",
                            citation=cite))
        elif ans:
            v = "FAIL" if it.severity == "contraindication" else "WARN"
            what = ("contraindication: TMS should not be given without specialist clearance"
                    if v == "FAIL" else "caution: physician review of the seizure/medical risk needed")
            out.append(_Raw(subject=it.key, verdict=v, reason=f"YES - {it.question} ({what})", citation=cite))
        else:
            out.append(_Raw(subject=it.key, verdict="PASS", reason=f"no - {it.question}", citation=cite))
    return out


EVALUATORS: dict[str, Callable[[Rule, _Context], list[_Raw]]] = {
    "electrode_current": _ev_electrode_current,
    "electrode_peak_to_peak": _ev_electrode_peak_to_peak,
    "tacs_frequency": _ev_tacs_frequency,
    "total_current": _ev_total_current,
    "session_duration": _ev_session_duration,
    "total_charge": _ev_total_charge,
    "electrode_current_density": _ev_electrode_current_density,
    "electrode_charge_density": _ev_electrode_charge_density,
    "sessions_per_day": _ev_sessions_per_day,
    "brain_current_density": _ev_brain_current_density,
    "single_pulse_rate": _ev_single_pulse_rate,
    "single_pulse_intensity": _ev_single_pulse_intensity,
    "train_duration_table": _ev_train_duration_table,
    "inter_train_interval": _ev_inter_train_interval,
    "rtms_evidence": _ev_rtms_evidence,
    "train_without_pause": _ev_train_without_pause,
    "tbs_evidence": _ev_tbs_evidence,
    "pulses_per_session": _ev_pulses_per_session,
    "pulses_per_day": _ev_pulses_per_day,
    "hearing_note": _ev_hearing_note,
    "ti_no_specific_limit": _ev_ti_no_specific_limit,
    "screening": _ev_screening,
}

FIELD_EVALUATORS = {"brain_current_density"}


# ----------------------------------------------------------------------------------------- statuses


def _threshold_verdict(rule: Rule, value: float) -> tuple[Status, str]:
    if rule.fail is not None and rule.fail.exceeded(value):
        return "FAIL", f"beyond the limit ({rule.fail.text(rule.unit)} is FAIL)"
    if rule.warn is not None and rule.warn.exceeded(value):
        return "WARN", f"outside the usual range ({rule.warn.text(rule.unit)} is WARN)"
    if rule.fail is None and rule.warn is None:
        return NOT_CHECKED, "no limit defined for this rule"
    return "PASS", "within the limit"


def _value_text(value: float | None, unit: str | None) -> str:
    if value is None or not math.isfinite(value):
        return "no value"
    return f"{value:.4g}" + (f" {unit}" if unit else "")


def _finalize(rule: Rule, raw: _Raw, kind: str) -> RuleResult:
    limit = raw.limit
    if limit is None:
        limit = rule.fail.value if rule.fail is not None else (rule.warn.value if rule.warn is not None else None)
    limit_text = raw.limit_text if raw.limit_text is not None else rule.limit_text()
    common = dict(rule_id=rule.id, description=rule.description, subject=raw.subject, unit=rule.unit,
                  limit=limit, limit_text=limit_text, citation=raw.citation or rule.citation(), kind=rule.kind,
                  verified=rule.verified_ok)
    how = raw.how
    if raw.missing is not None:
        verdict, reason = NOT_CHECKED, f"cannot check: {raw.missing} missing"
        how = how or f"give {raw.missing.split()[0]} in the protocol"
    elif raw.verdict is not None:
        verdict, reason = raw.verdict, raw.reason
    elif raw.value is None or not math.isfinite(raw.value):
        verdict, reason = NOT_CHECKED, f"cannot check: no value ({raw.reason})"
    else:
        verdict, why = _threshold_verdict(rule, raw.value)
        reason = f"{raw.reason}: {why}" if raw.reason else why
        if verdict == NOT_CHECKED:
            how = how or "no numeric limit for this rule: add a verified one to rules.yaml"
    if verdict == NOT_CHECKED and not how:
        how = "give the missing information (see the reason)"

    if rule.kind == "note":
        # advice the protocol cannot record: always shown, never a PASS, never a FAIL
        verdict, how = NOT_CHECKED, how or rule.how_to_check or "confirm by hand (the protocol cannot record it)"
    elif not rule.verified_ok:
        unverified = (f"limit not verified in the source ({rule.source.short()}, {rule.where}): value "
                      f"{_value_text(raw.value, rule.unit)} vs stated limit {limit_text or 'none'}, informational")
        if verdict != NOT_CHECKED:
            reason = f"{reason} [limit not verified in its source: informational, would be {verdict}]"
            how = unverified
        verdict = NOT_CHECKED
        how = how or unverified
    if rule.verified_for is not None and kind not in rule.verified_for:
        established = ", ".join(rule.verified_for)
        if rule.outside_evidence == "not_applicable":  # whatever the value: the limit does not carry over
            note = rule.outside_evidence_note or f"the {established} limit does not carry over to {kind}"
            would = "" if verdict == NOT_CHECKED else f"; would be {verdict} for {established}"
            reason = f"{reason} [{note}{would}]"
            how = f"no verified {kind} limit: {note}"
            verdict = NOT_CHECKED
        elif verdict == NOT_CHECKED:
            pass
        elif verdict == "PASS":
            reason = f"{reason} [limit established for {established} only]"
            how = (f"no verified {kind} limit: within the {established} limit, which is indicative only for "
                   f"{kind}")
            verdict = NOT_CHECKED
        else:
            reason = (f"{reason} [limit established for {established} only: beyond it, with no verified {kind} "
                      f"limit, is outside the evidence (WARN; would be {verdict} for {established})]")
            verdict = "WARN"
    return RuleResult(**common, value=raw.value, verdict=verdict, reason=reason,
                      how_to_check=how if verdict == NOT_CHECKED else None)


# ----------------------------------------------------------------------------------------- inputs


_YES = {"yes", "y", "true", "1"}
_NO = {"no", "n", "false", "0"}


def normalize_questionnaire(answers: Mapping[str, Any] | None, rules: RuleSet | None = None) -> dict | None:
    """Validate questionnaire answers: known item keys, values yes/no (bool or 'yes'/'no'), or None (unanswered)."""
    if answers is None:
        return None
    if not isinstance(answers, Mapping):
        raise SafetyInputError(f"questionnaire: expected a mapping of item -> yes/no, got {type(answers).__name__}")
    rules = rules or load_rules()
    keys = {it.key for r in rules.rules for it in (r.items or [])}
    out: dict[str, bool | None] = {}
    for k, v in answers.items():
        if k not in keys:
            raise SafetyInputError(f"questionnaire: unknown item {k!r}; known items: {', '.join(sorted(keys))}")
        if v is None or isinstance(v, bool):
            out[k] = v
        elif isinstance(v, str) and v.strip().lower() in _YES | _NO:
            out[k] = v.strip().lower() in _YES
        else:
            raise SafetyInputError(f"questionnaire.{k}: answer must be yes or no (true/false), got {v!r}")
    return out


def _normalize_protocol(protocol) -> TESProtocol | TIProtocol | TMSProtocol:
    if isinstance(protocol, (TESProtocol, TIProtocol, TMSProtocol)):
        return protocol
    if isinstance(protocol, Mapping):
        return validate_protocol(dict(protocol))
    raise ProtocolError(f"protocol: expected a TESProtocol/TMSProtocol or a mapping, got {type(protocol).__name__}")


def _normalize_brain_tags(brain_tags: Iterable[int] | None) -> tuple[int, ...] | None:
    if brain_tags is None:
        return None
    try:
        tags = tuple(int(t) for t in brain_tags)
    except (TypeError, ValueError):
        raise SafetyInputError(f"brain_tags: expected integer tissue tags, got {brain_tags!r}") from None
    if not tags:
        raise SafetyInputError("brain_tags: empty; give the tissue tags of brain tissue, e.g. [1, 2]")
    return tags


# ----------------------------------------------------------------------------------------- entry point


def check_result(result) -> SafetyReport:
    """Check a simulation result (its protocol and fields) with the head's default brain tags
    (the embedded sphere's inner ball; white and grey matter on real heads)."""
    from ..simulation import default_brain_tags

    return check(result.protocol, result, brain_tags=default_brain_tags(result.protocol))


def check(protocol, fields=None, *, brain_tags: Iterable[int] | None = None,
          questionnaire: Mapping[str, Any] | None = None, rules: RuleSet | str | Path | None = None
          ) -> SafetyReport:
    """Check a protocol (and, when given, its computed fields) against the published-limit rules.

    Parameters
    ----------
    protocol : TESProtocol | TMSProtocol, or a mapping that validates as one
    fields : a :class:`~stimsim.simulation.SimulationResult` (or any object with ``.mesh.tet_tags``,
        ``.mesh.volumes_mm3`` and ``.J`` (m, 3) in A/m^2); enables the field-based rules (tDCS/tACS)
    brain_tags : tissue tags counted as brain for the field-based rules (default 1 WM and 2 GM)
    questionnaire : TMS screening answers, item -> yes/no (see ``rules.yaml``, rule ``tms.screening``)
    rules : a RuleSet or a path to a rules YAML file (default: the shipped ``rules.yaml``)

    Returns
    -------
    SafetyReport whose ``verdict`` is the worst checked result (PASS/WARN/FAIL) and ``not_checked`` the number
    of rows that could not be checked.  Decision support, not clinical approval.
    """
    p = _normalize_protocol(protocol)
    ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
    ctx = _Context(protocol=p, fields=fields, brain_tags=_normalize_brain_tags(brain_tags),
                   questionnaire=normalize_questionnaire(
                       questionnaire if questionnaire is not None else getattr(p, "screening", None),
                       ruleset), sources=ruleset.sources)
    results: list[RuleResult] = []
    for rule in ruleset.rules:
        if p.kind not in rule.kinds:
            continue
        if rule.programs is not None and p.program.type not in rule.programs:
            continue
        if rule.evaluator in FIELD_EVALUATORS and fields is None:
            continue
        try:
            ev = EVALUATORS[rule.evaluator]
        except KeyError:
            raise SafetyInputError(f"rules: rule {rule.id} names unknown evaluator {rule.evaluator!r}") from None
        for raw in ev(rule, ctx):
            results.append(_finalize(rule, raw, p.kind))
    return SafetyReport(protocol_kind=p.kind, results=results, disclaimer=ruleset.disclaimer.strip(),
                        rules_origin=ruleset.origin, fields_checked=fields is not None)


check_safety = check
