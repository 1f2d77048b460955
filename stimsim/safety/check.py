"""Check a protocol (and optionally its computed fields) against the rules in ``rules.yaml``.

``check(protocol, fields=None, *, brain_tags=None, questionnaire=None)`` returns a
:class:`~stimsim.safety.model.SafetyReport`.  The numbers live in ``rules.yaml``; this module only
computes the protocol's quantities and compares.  Three guarantees are enforced here, centrally:

* a quantity a rule needs but the protocol lacks gives WARN "cannot check: <field> missing", never PASS;
* a rule whose limit could not be verified from its source (``verified_ok: false``) gives WARN only;
* a rule applied to a kind its limit was not established for (e.g. tACS against tDCS evidence) gives
  WARN only.

Bad input (a protocol that does not validate, a questionnaire with unknown items or answers that
are not yes/no, a fields object without mesh tags/volumes/J) raises a
:class:`~stimsim.errors.StimsimError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import yaml
from pydantic import ValidationError

from ..errors import ProtocolError, StimsimError
from ..protocol import TESProtocol, TMSProtocol, validate_protocol
from .model import Rule, RuleResult, RuleSet, SafetyReport, Verdict


class SafetyInputError(StimsimError, ValueError):
    """Input to the safety check (fields, brain tags, questionnaire, rules file) is unusable."""


# ----------------------------------------------------------------------------------------- rules


def _default_rules_path() -> Path:
    return Path(str(resources.files("stimsim.safety") / "rules.yaml"))


@lru_cache(maxsize=8)
def _load_rules_cached(path: str) -> RuleSet:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
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
    verdict: Verdict | None = None  # None: decide from the rule's thresholds
    missing: str | None = None  # name of the missing field -> WARN "cannot check: ... missing"
    limit: float | None = None
    limit_text: str | None = None
    citation: str | None = None


@dataclass
class _Context:
    protocol: TESProtocol | TMSProtocol
    fields: Any = None
    brain_tags: tuple[int, ...] | None = None
    questionnaire: dict[str, bool | None] | None = None


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


# ----------------------------------------------------------------------------------------- evaluators: tES


def _ev_electrode_current(rule: Rule, ctx: _Context) -> list[_Raw]:
    return [_Raw(value=abs(e.current_mA), subject=e.name, reason=f"|{e.current_mA:g}| mA")
            for e in ctx.protocol.electrodes]


def _ev_total_current(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    pos = [e for e in p.electrodes if e.current_mA > 0]
    return [_Raw(value=_total_current_mA(p),
                 reason="sum of " + " + ".join(f"{e.current_mA:g}" for e in pos) + " mA injected")]


def _ev_session_duration(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.duration_min is None:
        return [_Raw(missing="duration_min")]
    ramps = (p.ramp_up_s + p.ramp_down_s) / 60.0
    return [_Raw(value=p.duration_min + ramps,
                 reason=f"{p.duration_min:g} min at full current + {ramps:.3g} min of ramps")]


def _ev_total_charge(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.duration_min is None:
        return [_Raw(missing="duration_min")]
    t = _effective_time_s(p)
    i = _total_current_mA(p)
    return [_Raw(value=i * 1e-3 * t, reason=f"{i:g} mA x {t:g} s (ramps counted half)")]


def _ev_electrode_current_density(rule: Rule, ctx: _Context) -> list[_Raw]:
    out = []
    for e in ctx.protocol.electrodes:
        a = _electrode_area_cm2(e)
        if a is None:
            out.append(_Raw(subject=e.name, verdict="WARN",
                            reason="cannot compute: point electrode has no area (give shape disc or rect with "
                                   "its size)"))
            continue
        out.append(_Raw(value=abs(e.current_mA) / a, subject=e.name,
                        reason=f"{abs(e.current_mA):g} mA / {a:.4g} cm^2 ({e.shape})"))
    return out


def _ev_electrode_charge_density(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.duration_min is None:
        return [_Raw(missing="duration_min")]
    t = _effective_time_s(p)
    out = []
    for e in p.electrodes:
        a = _electrode_area_cm2(e)
        if a is None:
            out.append(_Raw(subject=e.name, verdict="WARN",
                            reason="cannot compute: point electrode has no area (give shape disc or rect with "
                                   "its size)"))
            continue
        out.append(_Raw(value=abs(e.current_mA) * 1e-3 * t / a, subject=e.name,
                        reason=f"{abs(e.current_mA):g} mA x {t:g} s / {a:.4g} cm^2"))
    return out


def _ev_sessions_per_day(rule: Rule, ctx: _Context) -> list[_Raw]:
    spd = ctx.protocol.sessions_per_day
    if spd is None:
        return [_Raw(missing="sessions_per_day")]
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
            return [_Raw(verdict="WARN",
                         reason=f"cannot identify brain tissue: the mesh has tags {present} and none of "
                                f"{wanted} (WM, GM); on a layered sphere pass brain_tags=[...] for its brain "
                                "compartment")]
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
        return [_Raw(missing="interval_s")]
    rate = 1.0 / prog.interval_s
    return [_Raw(value=rate, reason=f"{n} pulses, {prog.interval_s:g} s apart ({_intensity_text(prog)})")]


def _ev_train_duration_table(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    f, ppt = prog.frequency_hz, prog.pulses_per_train
    train_s = ppt / f
    desc = f"train {train_s:.4g} s ({ppt} pulses at {f:g} Hz), {_intensity_text(prog)}"
    table = rule.params.get("table")
    if not table:
        return [_Raw(value=train_s, verdict="WARN",
                     reason=f"{desc}: no verified table of maximum safe train duration is available here")]
    if prog.intensity_pct_rmt is None:
        return [_Raw(value=train_s, missing=_rmt_missing_reason(prog))]
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
        return [_Raw(verdict="PASS", reason="a single train: there is no inter-train interval")]
    iti, f, ppt = x["iti_s"], x["frequency_hz"], x["pulses_per_train"]
    train_s, trains = x["train_duration_s"], x["trains"]
    if prog.intensity_pct_rmt is None:
        return [_Raw(value=iti, missing=_rmt_missing_reason(prog))]
    inten = prog.intensity_pct_rmt
    desc = f"ITI {iti:g} s between {trains} trains of {train_s:.3g} s ({ppt} pulses) at {f:g} Hz, {inten:g} % rMT"
    tol = 1e-9
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
    return [_Raw(value=iti, verdict="WARN",
                 limit_text=f"FAIL <= {pr['unsafe_max_iti_s']:g} s; PASS >= {pr['safe_min_iti_s']:g} s (tested "
                            "conditions only)",
                 reason=f"{desc}: outside the two conditions verifiable from the source (its full table of "
                        "safe inter-train intervals could not be read)")]


def _ev_theta_burst(rule: Rule, ctx: _Context) -> list[_Raw]:
    prog = ctx.protocol.program
    x = prog.expanded()
    pr = rule.params
    period = 1.0 / x["burst_rate_hz"]
    session = x["session_duration_s"]
    same_period = abs(period - pr["burst_period_s"]) < 1e-9
    return [_Raw(value=session, verdict="WARN",
                 reason=f"{x['type']}: {x['total_pulses']} pulses, bursts of {x['pulses_per_burst']} at "
                        f"{x['burst_frequency_hz']:g} Hz every {period * 1e3:.4g} ms "
                        f"({'the' if same_period else 'not the'} {pr['burst_period_s'] * 1e3:g} ms of TBS), "
                        f"{session:.4g} s (Huang 2005 applied TBS for {pr['tested_min_application_s']:g}-"
                        f"{pr['tested_max_application_s']:g} s), {_intensity_text(prog)}; no numeric TBS "
                        "limit verified")]


def _ev_pulses_per_session(rule: Rule, ctx: _Context) -> list[_Raw]:
    x = ctx.protocol.program.expanded()
    return [_Raw(value=float(x["total_pulses"]), verdict="WARN",
                 reason=f"{x['total_pulses']} pulses in {x['session_duration_s']:.4g} s; no verified per-session "
                        "limit")]


def _ev_pulses_per_day(rule: Rule, ctx: _Context) -> list[_Raw]:
    p = ctx.protocol
    if p.sessions_per_day is None:
        return [_Raw(missing="sessions_per_day")]
    n = p.program.expanded()["total_pulses"] * p.sessions_per_day
    return [_Raw(value=float(n), verdict="WARN",
                 reason=f"{p.sessions_per_day} session(s)/day; no verified daily limit")]


def _ev_hearing_note(rule: Rule, ctx: _Context) -> list[_Raw]:
    return [_Raw(verdict="WARN",
                 reason="TMS coil clicks can exceed noise exposure limits: give the subject (and staff near the "
                        "coil) hearing protection, e.g. earplugs; the protocol cannot record this")]


def _ev_screening(rule: Rule, ctx: _Context) -> list[_Raw]:
    items = rule.items or []
    q = ctx.questionnaire
    if q is None:
        return [_Raw(verdict="WARN",
                     reason="screening questionnaire not answered; answer yes/no for: "
                            + ", ".join(i.key for i in items))]
    out = []
    for it in items:
        ans = q.get(it.key)
        cite = f"{it.source.short()}"
        if ans is None:
            out.append(_Raw(subject=it.key, verdict="WARN", reason=f"unanswered: {it.question}", citation=cite))
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
    "total_current": _ev_total_current,
    "session_duration": _ev_session_duration,
    "total_charge": _ev_total_charge,
    "electrode_current_density": _ev_electrode_current_density,
    "electrode_charge_density": _ev_electrode_charge_density,
    "sessions_per_day": _ev_sessions_per_day,
    "brain_current_density": _ev_brain_current_density,
    "single_pulse_rate": _ev_single_pulse_rate,
    "train_duration_table": _ev_train_duration_table,
    "inter_train_interval": _ev_inter_train_interval,
    "theta_burst": _ev_theta_burst,
    "pulses_per_session": _ev_pulses_per_session,
    "pulses_per_day": _ev_pulses_per_day,
    "hearing_note": _ev_hearing_note,
    "screening": _ev_screening,
}

FIELD_EVALUATORS = {"brain_current_density"}


# ----------------------------------------------------------------------------------------- verdicts


def _threshold_verdict(rule: Rule, value: float) -> tuple[Verdict, str]:
    if rule.fail is not None and rule.fail.exceeded(value):
        return "FAIL", f"beyond the limit ({rule.fail.text(rule.unit)} is FAIL)"
    if rule.warn is not None and rule.warn.exceeded(value):
        return "WARN", f"outside the usual range ({rule.warn.text(rule.unit)} is WARN)"
    if rule.fail is None and rule.warn is None:
        return "WARN", "no limit defined for this rule"
    return "PASS", "within the limit"


def _finalize(rule: Rule, raw: _Raw, kind: str) -> RuleResult:
    limit = raw.limit
    if limit is None:
        limit = rule.fail.value if rule.fail is not None else (rule.warn.value if rule.warn is not None else None)
    common = dict(rule_id=rule.id, description=rule.description, subject=raw.subject, unit=rule.unit,
                  limit=limit, limit_text=raw.limit_text if raw.limit_text is not None else rule.limit_text(),
                  citation=raw.citation or rule.citation(), kind=rule.kind, verified=rule.verified_ok)
    if raw.missing is not None:
        return RuleResult(**common, value=raw.value, verdict="WARN", reason=f"cannot check: {raw.missing} missing")
    if raw.verdict is not None:
        verdict, reason = raw.verdict, raw.reason
    elif raw.value is None or not math.isfinite(raw.value):
        verdict, reason = "WARN", f"cannot check: no value ({raw.reason})"
    else:
        verdict, why = _threshold_verdict(rule, raw.value)
        reason = f"{raw.reason}: {why}" if raw.reason else why
    if rule.kind == "note":
        verdict = "WARN"  # notes are always shown, never a silent PASS, never a FAIL
    elif not rule.verified_ok and verdict != "WARN":
        reason = f"{reason} [limit not verifiable from its source: WARN only, would be {verdict}]"
        verdict = "WARN"
    elif not rule.verified_ok:
        reason = f"{reason} [limit not verifiable from its source: WARN only]"
    if rule.verified_for is not None and kind not in rule.verified_for and verdict != "WARN":
        reason = (f"{reason} [limit established for {', '.join(rule.verified_for)} only, indicative for {kind}: "
                  f"WARN, would be {verdict}]")
        verdict = "WARN"
    elif rule.verified_for is not None and kind not in rule.verified_for:
        reason = f"{reason} [limit established for {', '.join(rule.verified_for)} only]"
    return RuleResult(**common, value=raw.value, verdict=verdict, reason=reason)


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


def _normalize_protocol(protocol) -> TESProtocol | TMSProtocol:
    if isinstance(protocol, (TESProtocol, TMSProtocol)):
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
    SafetyReport whose ``verdict`` is the worst result.  Decision support, not clinical approval.
    """
    p = _normalize_protocol(protocol)
    ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
    ctx = _Context(protocol=p, fields=fields, brain_tags=_normalize_brain_tags(brain_tags),
                   questionnaire=normalize_questionnaire(
                       questionnaire if questionnaire is not None else getattr(protocol, "screening", None),
                       ruleset))
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
