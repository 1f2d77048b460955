"""Dose safety checker (issue 6): cited limits applied to protocols and computed fields.

The expected verdicts in CASES are written from the limits as stated in the sources (quoted in
stimsim/safety/rules.yaml), not from the code's output:

* Bikson et al. 2016 (abstract): no serious adverse effect with <= 40 min, <= 4 mA, <= 7.2 C (tDCS);
  animal injury at predicted brain current densities of 6.3-13 A/m^2, over an order of magnitude above
  conventional tDCS.
* Jackson et al. 2017 (abstract): lesions at and above an electrode current density of 20.0 A/m^2
  (2.0 mA/cm^2); clinical tDCS typically 2 A/m^2 (0.2 mA/cm^2).
* Liebetanz et al. 2009 as reported by Bikson, Datta & Elwassif 2009: zero-lesion charge density
  52400 C/m^2 (5.24 C/cm^2).
* Chen et al. 1997 (abstract): 10 trains of 20 Hz x 1.6 s at 110 % MT safe with 5 s intervals;
  intervals <= 1 s unsafe above 100 % MT.
* Anand & Hotson 2002 (abstract): single-pulse (< 1 Hz) TMS is safe in normal subjects.
* Rossi 2009 tables: not readable -> NOT_CHECKED only.
* Verified rTMS/TBS conditions and pulse counts (O'Reardon 2007, Modirrousta 2018, PubMed 8913194, Cole 2020,
  PubMed 22627376): PASS within a verified condition, WARN outside (tests/test_safety_verdicts.py).

Statuses: PASS, WARN (outside the evidence), FAIL (beyond a verified limit), NOT_CHECKED (missing information,
unverified or inapplicable limit, notes); the overall verdict ignores NOT_CHECKED (docs/safety_verdicts.md).
"""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stimsim.errors import ProtocolError, StimsimError
from stimsim.safety import SafetyInputError, SafetyReport, check, check_safety, load_rules
from stimsim.cli.safety import run_check
from stimsim.safety.model import NOT_CHECKED, VERDICT_RANK, Rule, worst

# ------------------------------------------------------------------------------ builders


def el(name, mA, shape="rect", size=(50, 50), diameter=None, pos=(0, 0, 95)):
    d = {"name": name, "position": list(pos), "current_mA": mA, "shape": shape}
    if shape == "rect":
        d["size_mm"] = list(size)
    elif shape == "disc":
        d["diameter_mm"] = diameter
    return d


def tes(electrodes=None, *, mA=2.0, duration=20.0, ramps=(0.0, 0.0), kind="tdcs", freq=None, spd=1, **kw):
    if electrodes is None:
        electrodes = [el("anode", mA), el("cathode", -mA, pos=(95, 0, 0))]
    d = {"kind": kind, "head": "sphere", "electrodes": electrodes, "ramp_up_s": ramps[0], "ramp_down_s": ramps[1]}
    if duration is not None:
        d["duration_min"] = duration
    if freq is not None:
        d["frequency_hz"] = freq
    if spd is not None:
        d["sessions_per_day"] = spd
    d.update(kw)
    return d


def tms(program, spd=None):
    d = {"kind": "tms", "head": "sphere", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
         "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {"percent_mso": 60},
         "program": program}
    if spd is not None:
        d["sessions_per_day"] = spd
    return d


def rtms(f=20.0, ppt=32, trains=10, iti=5.0, rmt=110.0, **kw):
    p = {"type": "rtms", "frequency_hz": f, "pulses_per_train": ppt, "trains": trains, "iti_s": iti}
    if rmt is not None:
        p["intensity_pct_rmt"] = rmt
    p.update(kw)
    return p


def verdicts(report: SafetyReport, rule_id: str, subject=None) -> list[str]:
    return [r.verdict for r in report.results if r.rule_id == rule_id and (subject is None or r.subject == subject)]


def only(report, rule_id, subject=None):
    rs = [r for r in report.results if r.rule_id == rule_id and (subject is None or r.subject == subject)]
    assert len(rs) == 1, (rule_id, subject, rs)
    return rs[0]


def fields(brain_J=0.3, tags=(1, 2, 3, 4, 5), brain=(1, 2), other_J=50.0, n=50):
    """Synthetic fields: n elements per tag, |J| = brain_J in brain tags and other_J elsewhere."""
    tet_tags = np.repeat(np.array(tags), n)
    J = np.zeros((len(tet_tags), 3))
    J[:, 0] = np.where(np.isin(tet_tags, brain), brain_J, other_J)
    return SimpleNamespace(mesh=SimpleNamespace(tet_tags=tet_tags, volumes_mm3=np.ones(len(tet_tags))), J=J)


ALL_NO = {k: False for k in ("metal_in_head", "implanted_device", "intracardiac_electrodes",
                             "increased_intracranial_pressure", "pregnancy", "prior_tms_serious_adverse_event",
                             "seizure_history", "family_history_epilepsy", "seizure_threshold_lowering_medication",
                             "serious_heart_disease")}

# ------------------------------------------------------------------------------ the case table
# (case id, protocol, kwargs for check, rule id, subject, expected verdict)

A25 = dict(shape="rect", size=(50, 50))  # 25 cm^2
CASES = [
    # --- per-electrode current, Bikson 2016: <= 4 mA
    ("I 2 mA inside", tes(mA=2.0), {}, "tes.current.electrode", "anode", "PASS"),
    ("I 4 mA at limit", tes(mA=4.0, duration=10), {}, "tes.current.electrode", "anode", "PASS"),
    ("I 4.5 mA beyond", tes(mA=4.5, duration=10), {}, "tes.current.electrode", "anode", "FAIL"),
    ("I cathode 5 mA beyond", tes([el("a1", 2.5), el("a2", 2.5, pos=(0, 95, 0)), el("c", -5.0, pos=(95, 0, 0))],
                                  duration=10), {}, "tes.current.electrode", "c", "FAIL"),
    # --- total injected current, Bikson 2016: <= 4 mA
    ("Itot 4 mA at limit", tes([el("a1", 2.0), el("a2", 2.0, pos=(0, 95, 0)), el("c1", -2.0, pos=(95, 0, 0)),
                                el("c2", -2.0, pos=(-95, 0, 0))], duration=10), {}, "tes.current.total", None, "PASS"),
    ("Itot 5 mA beyond, each 2.5", tes([el("a1", 2.5), el("a2", 2.5, pos=(0, 95, 0)),
                                        el("c1", -2.5, pos=(95, 0, 0)), el("c2", -2.5, pos=(-95, 0, 0))], duration=10),
     {}, "tes.current.total", None, "FAIL"),
    ("Itot 1 mA inside", tes(mA=1.0), {}, "tes.current.total", None, "PASS"),
    # --- duration incl. ramps, Bikson 2016: <= 40 min
    ("T 20+1 min inside", tes(duration=20, ramps=(30, 30)), {}, "tes.duration", None, "PASS"),
    ("T 40 min at limit", tes(mA=1.0, duration=40), {}, "tes.duration", None, "PASS"),
    ("T 39+1 min at limit", tes(mA=1.0, duration=39, ramps=(30, 30)), {}, "tes.duration", None, "PASS"),
    ("T 45 min beyond", tes(mA=1.0, duration=45), {}, "tes.duration", None, "FAIL"),
    ("T 40+1 min beyond", tes(mA=1.0, duration=40, ramps=(30, 30)), {}, "tes.duration", None, "FAIL"),
    # --- total charge, Bikson 2016: <= 7.2 C
    ("Q 2.4 C inside", tes(mA=2.0, duration=20), {}, "tes.charge", None, "PASS"),
    ("Q 4 mA x 30 min = 7.2 C at limit", tes(mA=4.0, duration=30), {}, "tes.charge", None, "PASS"),
    ("Q 3 mA x 40 min = 7.2 C at limit", tes(mA=3.0, duration=40), {}, "tes.charge", None, "PASS"),
    ("Q 4 mA x 30.5 min = 7.32 C beyond", tes(mA=4.0, duration=30, ramps=(30, 30)), {}, "tes.charge", None, "FAIL"),
    ("Q 4 mA x 31 min = 7.44 C beyond", tes(mA=4.0, duration=31), {}, "tes.charge", None, "FAIL"),
    # --- electrode current density, Jackson 2017: WARN > 0.2, FAIL >= 2.0 mA/cm^2
    ("CD 0.08 inside", tes(mA=2.0), {}, "tes.electrode.current_density", "anode", "PASS"),
    ("CD 0.2 at warn boundary", tes([el("a", 1.0, size=(20, 25)), el("c", -1.0, pos=(95, 0, 0))]), {},
     "tes.electrode.current_density", "a", "PASS"),
    ("CD 0.22 beyond typical", tes([el("a", 2.0, size=(30, 30)), el("c", -2.0, pos=(95, 0, 0))]), {},
     "tes.electrode.current_density", "a", "WARN"),
    ("CD 2.0 at lesion threshold", tes([el("a", 2.0, size=(10, 10)), el("c", -2.0, pos=(95, 0, 0))], duration=5), {},
     "tes.electrode.current_density", "a", "FAIL"),
    ("CD 5.1 beyond (5 mm disc)", tes([el("a", 1.0, shape="disc", diameter=5), el("c", -1.0, pos=(95, 0, 0))],
                                      duration=5), {}, "tes.electrode.current_density", "a", "FAIL"),
    ("CD point electrode", tes([el("a", 1.0, shape="point"), el("c", -1.0, pos=(95, 0, 0))]), {},
     "tes.electrode.current_density", "a", "NOT_CHECKED"),
    # --- electrode charge density, Liebetanz 2009: FAIL >= 5.24 C/cm^2
    ("QD 0.096 inside", tes(mA=2.0, duration=20), {}, "tes.electrode.charge_density", "anode", "PASS"),
    ("QD 1.2 inside", tes([el("a", 1.0, size=(10, 10)), el("c", -1.0, pos=(95, 0, 0))], duration=20), {},
     "tes.electrode.charge_density", "a", "PASS"),
    ("QD 5.24 at threshold", tes([el("a", 1.0, size=(5, 5)), el("c", -1.0, pos=(95, 0, 0))], duration=20,
                                 ramps=(110, 110)), {}, "tes.electrode.charge_density", "a", "FAIL"),
    ("QD 9.6 beyond", tes([el("a", 1.0, size=(5, 5)), el("c", -1.0, pos=(95, 0, 0))], duration=40), {},
     "tes.electrode.charge_density", "a", "FAIL"),
    ("QD point electrode", tes([el("a", 1.0, shape="point"), el("c", -1.0, pos=(95, 0, 0))]), {},
     "tes.electrode.charge_density", "a", "NOT_CHECKED"),
    # --- sessions per day (no verified daily limit)
    ("sessions 1/day", tes(spd=1), {}, "tes.sessions_per_day", None, "PASS"),
    ("sessions 2/day", tes(spd=2), {}, "tes.sessions_per_day", None, "WARN"),
    ("sessions missing", tes(spd=None), {}, "tes.sessions_per_day", None, "NOT_CHECKED"),
    # --- brain current density (fields), Bikson 2016: FAIL >= 6.3 A/m^2, WARN when margin <= 10x
    ("Jbrain 0.3 inside", tes(), {"fields": fields(0.3)}, "tes.field.brain_current_density", "tags [1, 2]", "PASS"),
    ("Jbrain 0.63 margin 10x", tes(), {"fields": fields(0.63)}, "tes.field.brain_current_density", "tags [1, 2]",
     "WARN"),
    ("Jbrain 6.3 at threshold", tes(), {"fields": fields(6.3)}, "tes.field.brain_current_density", "tags [1, 2]",
     "FAIL"),
    ("Jbrain 13 beyond", tes(), {"fields": fields(13.0)}, "tes.field.brain_current_density", "tags [1, 2]", "FAIL"),
    ("Jbrain no WM/GM tags", tes(), {"fields": fields(10.0, tags=(3, 4, 5), brain=(3,))},
     "tes.field.brain_current_density", None, "NOT_CHECKED"),
    ("Jbrain sphere brain_tags=[3]", tes(), {"fields": fields(10.0, tags=(3, 4, 5), brain=(3,)), "brain_tags": [3]},
     "tes.field.brain_current_density", "tags [3]", "FAIL"),
    # --- tACS against tDCS evidence: never PASS/FAIL (within: NOT_CHECKED, beyond: WARN)
    ("tACS 1 mA indicative", tes(mA=1.0, kind="tacs", freq=10), {}, "tes.current.electrode", "anode", "NOT_CHECKED"),
    ("tACS 6 mA indicative", tes(mA=6.0, kind="tacs", freq=10, duration=5), {}, "tes.current.electrode", "anode",
     "WARN"),
    # --- missing duration
    ("T missing", tes(duration=None), {}, "tes.duration", None, "NOT_CHECKED"),
    ("Q missing", tes(duration=None), {}, "tes.charge", None, "NOT_CHECKED"),
    # --- TMS single pulse, Anand & Hotson 2002: < 1 Hz
    ("sp one pulse", tms({"type": "single"}), {}, "tms.single_pulse_rate", None, "PASS"),
    ("sp 0.2 Hz", tms({"type": "single", "pulses": 100, "interval_s": 5.0, "intensity_pct_rmt": 120}), {},
     "tms.single_pulse_rate", None, "PASS"),
    ("sp 1 Hz at boundary", tms({"type": "single", "pulses": 100, "interval_s": 1.0}), {}, "tms.single_pulse_rate",
     None, "WARN"),
    ("sp 2 Hz beyond", tms({"type": "single", "pulses": 100, "interval_s": 0.5}), {}, "tms.single_pulse_rate", None,
     "WARN"),
    ("sp interval missing", tms({"type": "single", "pulses": 10}), {}, "tms.single_pulse_rate", None, "NOT_CHECKED"),
    # --- inter-train interval, Chen 1997
    ("ITI tested safe", tms(rtms()), {}, "tms.rtms.inter_train_interval", None, "PASS"),
    ("ITI 1 s at unsafe", tms(rtms(iti=1.0)), {}, "tms.rtms.inter_train_interval", None, "FAIL"),
    ("ITI 0.5 s 120 %", tms(rtms(iti=0.5, rmt=120)), {}, "tms.rtms.inter_train_interval", None, "FAIL"),
    ("ITI 1 s 25 Hz x 1.6 s", tms(rtms(f=25, ppt=40, iti=1.0, rmt=120)), {}, "tms.rtms.inter_train_interval", None,
     "FAIL"),
    ("ITI 1 s at 100 % (not > 100)", tms(rtms(iti=1.0, rmt=100)), {}, "tms.rtms.inter_train_interval", None, "WARN"),
    ("ITI 3 s between", tms(rtms(iti=3.0)), {}, "tms.rtms.inter_train_interval", None, "WARN"),
    ("ITI 5 s at 120 % (beyond tested)", tms(rtms(rmt=120)), {}, "tms.rtms.inter_train_interval", None, "NOT_CHECKED"),
    ("ITI 10 Hz 4 s x 75", tms(rtms(f=10, ppt=40, trains=75, iti=26, rmt=120)), {}, "tms.rtms.inter_train_interval",
     None, "NOT_CHECKED"),
    ("ITI intensity in aMT", tms(rtms(rmt=None, intensity_pct_amt=90)), {}, "tms.rtms.inter_train_interval", None,
     "NOT_CHECKED"),
    ("ITI single train", tms(rtms(trains=1, iti=None)), {}, "tms.rtms.inter_train_interval", None, "PASS"),
    # --- unverifiable TMS limit (Rossi 2009 table): NOT_CHECKED only
    ("train duration table unverified", tms(rtms(f=1, ppt=900, trains=1, iti=None, rmt=90)), {},
     "tms.rtms.train_duration", None, "NOT_CHECKED"),
    # --- verified TBS conditions (Cole 2020; PubMed 22627376)
    ("iTBS 80 % aMT within Cole 2020", tms({"type": "itbs", "intensity_pct_amt": 80}), {}, "tms.tbs", None, "PASS"),
    ("cTBS at 50 Hz: only an unverified condition (Huang 2005)", tms({"type": "ctbs", "intensity_pct_amt": 80}), {},
     "tms.tbs", None, "NOT_CHECKED"),
    ("cTBS above the standard 80 % aMT", tms({"type": "ctbs", "intensity_pct_amt": 81}), {}, "tms.tbs", None,
     "WARN"),
    ("iTBS no intensity", tms({"type": "itbs"}), {}, "tms.tbs", None, "NOT_CHECKED"),
    # --- pulse counts (O'Reardon 2007 / Modirrousta 2018: 3000 per session, 2 sessions a day)
    ("pulses/session 320 inside", tms(rtms()), {}, "tms.pulses.session", None, "PASS"),
    ("pulses/session 3000 at limit", tms(rtms(f=10, ppt=40, trains=75, iti=26, rmt=120)), {}, "tms.pulses.session",
     None, "PASS"),
    ("pulses/session 3040 beyond", tms(rtms(f=10, ppt=40, trains=76, iti=26, rmt=120)), {}, "tms.pulses.session",
     None, "WARN"),
    ("pulses/day missing spd", tms(rtms()), {}, "tms.pulses.day", None, "NOT_CHECKED"),
    ("pulses/day 320 inside", tms(rtms(), spd=1), {}, "tms.pulses.day", None, "PASS"),
    ("pulses/day 3 x 3000 beyond", tms(rtms(f=10, ppt=40, trains=75, iti=26, rmt=120), spd=3), {}, "tms.pulses.day",
     None, "WARN"),
    ("hearing note", tms({"type": "single"}), {}, "tms.hearing_protection", None, "NOT_CHECKED"),
    # --- screening
    ("screening unanswered", tms({"type": "single"}), {}, "tms.screening", None, "NOT_CHECKED"),
    ("screening metal yes", tms({"type": "single"}), {"questionnaire": {**ALL_NO, "metal_in_head": True}},
     "tms.screening", "metal_in_head", "FAIL"),
    ("screening pregnancy yes", tms({"type": "single"}), {"questionnaire": {**ALL_NO, "pregnancy": "yes"}},
     "tms.screening", "pregnancy", "FAIL"),
    ("screening seizures yes", tms({"type": "single"}), {"questionnaire": {**ALL_NO, "seizure_history": True}},
     "tms.screening", "seizure_history", "WARN"),
    ("screening medication yes", tms({"type": "single"}),
     {"questionnaire": {**ALL_NO, "seizure_threshold_lowering_medication": True}},
     "tms.screening", "seizure_threshold_lowering_medication", "WARN"),
    ("screening no", tms({"type": "single"}), {"questionnaire": ALL_NO}, "tms.screening", "implanted_device", "PASS"),
    ("screening item unanswered", tms({"type": "single"}), {"questionnaire": {"metal_in_head": False}},
     "tms.screening", "pregnancy", "NOT_CHECKED"),
]


def test_case_table_is_large_and_covers_both_modalities():
    assert len(CASES) >= 40
    assert {c[1]["kind"] for c in CASES} >= {"tdcs", "tacs", "tms"}
    assert {c[5] for c in CASES} == {"PASS", "WARN", "FAIL", "NOT_CHECKED"}
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,protocol,kw,rule_id,subject,expected", CASES, ids=[c[0] for c in CASES])
def test_case_table(name, protocol, kw, rule_id, subject, expected):
    report = check(protocol, **kw)
    got = verdicts(report, rule_id, subject)
    assert got, f"{rule_id} [{subject}] not in report: {[(r.rule_id, r.subject) for r in report.results]}"
    assert set(got) == {expected}, [(r.subject, r.verdict, r.reason) for r in report.by_rule(rule_id)]


# ------------------------------------------------------------------------------ specific behaviour


def test_missing_field_gives_cannot_check_never_pass():
    report = check(tes(duration=None, spd=None))
    for rid in ("tes.duration", "tes.charge", "tes.electrode.charge_density", "tes.sessions_per_day"):
        for r in report.by_rule(rid):
            assert r.verdict == NOT_CHECKED
            assert r.reason.startswith("cannot check: ") and "missing" in r.reason
            assert r.how_to_check and "give " in r.how_to_check
    assert only(report, "tes.duration").reason == "cannot check: duration_min missing"
    assert only(report, "tes.sessions_per_day").reason == "cannot check: sessions_per_day missing"
    t = check(tms(rtms(rmt=None, intensity_pct_mso=70)))
    assert only(t, "tms.rtms.inter_train_interval").reason.startswith("cannot check: intensity_pct_rmt")
    assert only(check(tms(rtms())), "tms.pulses.day").reason == "cannot check: sessions_per_day missing"


def test_point_electrode_cannot_compute():
    r = only(check(tes([el("a", 1.0, shape="point"), el("c", -1.0, pos=(95, 0, 0))])),
             "tes.electrode.current_density", "a")
    assert r.verdict == NOT_CHECKED and "cannot compute" in r.reason and r.value is None
    assert "diameter_mm" in r.how_to_check and "size_mm" in r.how_to_check


def test_values_units_and_margin():
    rep = check(tes(mA=2.0, duration=20, ramps=(30, 30)), fields(0.5))
    assert only(rep, "tes.charge").value == pytest.approx(2e-3 * (1200 + 30))
    assert only(rep, "tes.charge").unit == "C"
    assert only(rep, "tes.duration").value == pytest.approx(21.0)
    assert only(rep, "tes.electrode.current_density", "anode").value == pytest.approx(0.08)
    disc = check(tes([el("a", 1.0, shape="disc", diameter=20), el("c", -1.0, pos=(95, 0, 0))]))
    assert only(disc, "tes.electrode.current_density", "a").value == pytest.approx(1.0 / (math.pi * 2.0 ** 2 / 4))
    j = only(rep, "tes.field.brain_current_density")
    assert j.value == pytest.approx(0.5) and j.limit == pytest.approx(6.3)
    assert "margin x12.6" in j.reason  # 6.3 / 0.5


def test_field_rule_ignores_non_brain_tissue_and_uses_99_9th_percentile():
    # scalp carries 50 A/m^2, far above the threshold: not brain, must not count
    assert only(check(tes(), fields(0.3)), "tes.field.brain_current_density").verdict == "PASS"
    # 0.05 % of the brain volume above 6.3 A/m^2 is below the 99.9th percentile: PASS ...
    f = fields(0.3, n=10000)
    brain = np.flatnonzero(np.isin(f.mesh.tet_tags, (1, 2)))
    f.J[brain[:10], 0] = 100.0  # 10 of 20000 brain elements = 0.05 %
    assert only(check(tes(), f), "tes.field.brain_current_density").value == pytest.approx(0.3)
    # ... 1 % of it above: the percentile sees it
    f.J[brain[:200], 0] = 100.0
    assert only(check(tes(), f), "tes.field.brain_current_density").verdict == "FAIL"


def test_field_rules_only_with_fields_and_only_for_tes():
    assert not check(tes()).by_rule("tes.field.brain_current_density")
    assert not check(tes()).fields_checked
    assert not check(tms({"type": "single"}), fields(10.0)).by_rule("tes.field.brain_current_density")


def test_no_brain_tags_warns_with_reason():
    r = only(check(tes(), fields(0.3, tags=(3, 4, 5), brain=(3,))), "tes.field.brain_current_density")
    assert r.verdict == NOT_CHECKED and "cannot identify brain tissue" in r.reason
    assert "brain_tags" in r.how_to_check and "--brain-tag" in r.how_to_check


def test_tacs_is_capped_and_says_why():
    r = only(check(tes(mA=6.0, kind="tacs", freq=10, duration=5)), "tes.current.electrode", "anode")
    assert r.verdict == "WARN" and "would be FAIL" in r.reason and "tdcs" in r.reason


def test_unverified_rules_are_never_checked():
    rules = load_rules()
    unverified = {r.id for r in rules.rules if not r.verified_ok}
    assert {"tms.rtms.train_duration"} <= unverified
    protocols = [tms(rtms(f=f, ppt=ppt, iti=iti, rmt=i), spd=2) for f in (1, 10, 25) for ppt in (10, 100)
                 for iti in (0.5, 30) for i in (90, 130)]
    protocols += [tms({"type": t, "intensity_pct_rmt": 150}, spd=3) for t in ("itbs", "ctbs")]
    for p in protocols:
        for r in check(p).results:
            if r.rule_id in unverified:
                assert r.verdict == NOT_CHECKED and not r.verified
                assert "limit not verified in the source" in r.how_to_check and "informational" in r.how_to_check


def test_marking_a_rule_unverified_caps_it_centrally():
    rules = load_rules()
    patched = rules.model_copy(update={"rules": [r.model_copy(update={"verified_ok": False})
                                                 if r.id == "tes.current.electrode" else r for r in rules.rules]})
    r = only(check(tes(mA=5.0, duration=5), rules=patched), "tes.current.electrode", "anode")
    assert r.verdict == NOT_CHECKED and "would be FAIL" in r.reason
    assert "value 5 mA vs stated limit FAIL > 4 mA, informational" in r.how_to_check
    assert only(check(tes(mA=5.0, duration=5)), "tes.current.electrode", "anode").verdict == "FAIL"


def test_train_duration_table_machinery_is_conservative():
    """With a (SYNTHETIC, test-only) table, lookups round frequency and intensity up."""
    rules = load_rules()
    table = {"frequency_hz": [1, 10, 20], "intensity_pct_rmt": [100, 120],
             "max_train_s": [[100.0, 5.0, 2.0], [50.0, 2.0, None]]}
    patched = rules.model_copy(update={"rules": [
        r.model_copy(update={"params": {"table": table}, "verified_ok": True}) if r.id == "tms.rtms.train_duration"
        else r for r in rules.rules]})

    def v(**kw):
        return only(check(tms(rtms(**kw)), rules=patched), "tms.rtms.train_duration")

    assert v(f=10, ppt=50, rmt=100).verdict == "PASS"     # 5 s at the 5 s limit
    assert v(f=10, ppt=51, rmt=100).verdict == "FAIL"     # 5.1 s
    assert v(f=11, ppt=30, rmt=100).verdict == "FAIL"     # 11 Hz -> 20 Hz column: 2 s limit, 2.7 s
    assert v(f=10, ppt=30, rmt=101).verdict == "FAIL"     # 101 % -> 120 % row: 2 s limit, 3 s
    assert v(f=20, ppt=20, rmt=110).verdict == "WARN"     # no limit in the table cell
    assert v(f=30, ppt=10, rmt=100).verdict == "WARN"     # beyond the table
    assert v(f=10, ppt=10, rmt=None, intensity_pct_amt=90).reason.startswith("cannot check")
    # shipped: no table -> NOT_CHECKED, saying the limit is not verified
    shipped = only(check(tms(rtms(f=10, ppt=10))), "tms.rtms.train_duration")
    assert shipped.verdict == NOT_CHECKED and "limit not verified in the source table" in shipped.how_to_check


def test_screening_questionnaire_aggregates_and_overall_verdict():
    rep = check(tms({"type": "single"}), questionnaire=ALL_NO)
    assert set(verdicts(rep, "tms.screening")) == {"PASS"}
    assert len(rep.by_rule("tms.screening")) == len(ALL_NO)
    assert rep.verdict == "PASS"  # the hearing note and the missing intensity are NOT_CHECKED, not WARN
    assert rep.not_checked == 2 and rep.summary == "PASS (2 not checked)"
    rep = check(tms({"type": "single"}), questionnaire={**ALL_NO, "implanted_device": "YES"})
    assert rep.verdict == "FAIL"


def test_report_verdict_is_worst_and_empty_is_warn():
    assert worst([]) == "WARN"
    assert worst(["NOT_CHECKED", "NOT_CHECKED"]) == "WARN"  # nothing checked is never a PASS
    assert worst(["PASS", "NOT_CHECKED"]) == "PASS"
    assert worst(["PASS", "PASS"]) == "PASS"
    assert worst(["PASS", "WARN", "FAIL", "PASS"]) == "FAIL"
    rep = check(tes(mA=4.5, duration=10))
    assert rep.verdict == "FAIL"
    assert rep.counts["FAIL"] >= 2
    assert SafetyReport(protocol_kind="tdcs", results=[]).verdict == "WARN"


def test_as_dict_json_and_table():
    rep = check(tes([el("a", 1.0, shape="point"), el("c", -1.0, pos=(95, 0, 0))]), fields(0.3))
    d = json.loads(json.dumps(rep.as_dict()))
    assert d["verdict"] == rep.verdict and d["fields_checked"] is True
    assert d["not_checked"] == rep.not_checked == 2 and d["schema_version"] == 2  # the point electrode, twice
    assert d["summary"] == f"{rep.verdict} (2 not checked)" and d["counts"]["NOT_CHECKED"] == 2
    assert "not a clinical approval" in d["disclaimer"]
    assert {"rule_id", "description", "value", "unit", "limit", "verdict", "reason", "how_to_check",
            "citation"} <= set(d["results"][0])
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=250).print(rep.to_table())
    text = buf.getvalue()
    assert "tags [1, 2]" in text  # square brackets are not eaten as markup
    assert "NOT CHECKED" in text and "(2 not checked)" in text and "to check:" in text
    assert "not a clinical approval" in text
    assert check_safety is check


def test_hearing_note_is_a_note():
    r = only(check(tms({"type": "single"})), "tms.hearing_protection")
    assert r.kind == "note" and r.verdict == NOT_CHECKED and "hearing protection" in r.how_to_check


# ------------------------------------------------------------------------------ rules file integrity


def test_rules_file_rows_are_complete():
    rules = load_rules()
    assert "not a clinical approval" in rules.disclaimer
    for r in rules.rules:
        assert r.source.authors and r.source.title and r.where and r.verified, r.id
        assert r.source.read, r.id
        assert r.source.doi_verified, f"{r.id}: say how the DOI was verified (or why there is none)"
        if r.verified_ok and (r.fail is not None or r.warn is not None):
            assert r.quote, f"{r.id}: a verified limit needs the quoted sentence"
        if not r.verified_ok:
            assert "not verifiable" in r.verified, r.id
    # the numbers quoted in the issue
    assert rules.get("tes.current.electrode").fail.value == 4.0
    assert rules.get("tes.duration").fail.value == 40.0
    assert rules.get("tes.charge").fail.value == 7.2
    assert rules.get("tes.field.brain_current_density").fail.value == 6.3


def test_bad_rules_file_is_a_clear_error(tmp_path):
    from pathlib import Path

    data = yaml.safe_load(Path(load_rules().origin).read_text(encoding="utf-8"))
    data["rules"][0]["fail"] = {"op": "~", "value": 4}
    bad = tmp_path / "rules.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SafetyInputError, match="invalid rules file"):
        check(tes(), rules=bad)
    with pytest.raises(SafetyInputError, match="not found"):
        check(tes(), rules=tmp_path / "nope.yaml")


def test_rule_model_rejects_inconsistent_rows():
    base = load_rules().get("tes.current.electrode").model_dump()
    with pytest.raises(ValueError):
        Rule(**{**base, "kinds": ["tms"]})


# ------------------------------------------------------------------------------ bad input


def test_bad_protocols_raise_errors_naming_the_field():
    with pytest.raises(ProtocolError, match="duration_min"):
        check(tes(duration=-5))
    with pytest.raises(ProtocolError, match="frequency_hz"):
        check(tes(kind="tacs"))
    with pytest.raises(ProtocolError, match="intensity_pct_mso"):
        check(tms(rtms(rmt=None, intensity_pct_mso=120)))
    with pytest.raises(ProtocolError, match="ramp_up_s"):
        check(tes(ramps=(-1, 0)))
    with pytest.raises(ProtocolError, match="protocol"):
        check(42)


def test_bad_questionnaire_fields_and_brain_tags():
    with pytest.raises(SafetyInputError, match="metal_in_hed"):
        check(tms({"type": "single"}), questionnaire={"metal_in_hed": False})
    with pytest.raises(SafetyInputError, match="pregnancy"):
        check(tms({"type": "single"}), questionnaire={"pregnancy": "maybe"})
    with pytest.raises(SafetyInputError, match="mapping"):
        check(tms({"type": "single"}), questionnaire=["metal_in_head"])
    with pytest.raises(SafetyInputError, match="'J'"):
        check(tes(), SimpleNamespace(mesh=SimpleNamespace(tet_tags=np.ones(3), volumes_mm3=np.ones(3))))
    with pytest.raises(SafetyInputError, match="shape"):
        check(tes(), SimpleNamespace(mesh=SimpleNamespace(tet_tags=np.ones(3), volumes_mm3=np.ones(3)),
                                     J=np.ones((3, 2))))
    with pytest.raises(SafetyInputError, match="mesh"):
        check(tes(), SimpleNamespace(J=np.ones((3, 3))))
    with pytest.raises(SafetyInputError, match="brain_tags"):
        check(tes(), fields(), brain_tags=[])
    with pytest.raises(SafetyInputError, match="brain_tags"):
        check(tes(), fields(), brain_tags=[99])


# ------------------------------------------------------------------------------ monotonicity (hypothesis)

FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _rank_map(report):
    out = {}
    for r in report.results:
        out.setdefault((r.rule_id, r.subject), []).append(VERDICT_RANK.get(r.verdict, -1))  # NOT_CHECKED: -1
    return {k: max(v) for k, v in out.items()}


def _fail_keys(report):
    return {(r.rule_id, r.subject) for r in report.results if r.verdict == "FAIL"}


def _assert_fail_preserved(lo, hi):
    missing = _fail_keys(lo) - _fail_keys(hi)
    assert not missing, f"raising the dose turned FAIL into non-FAIL for {missing}"
    if lo.verdict == "FAIL":
        assert hi.verdict == "FAIL"


electrode_shape = st.one_of(
    st.tuples(st.just("rect"), st.floats(5, 80), st.floats(5, 80)),
    st.tuples(st.just("disc"), st.floats(3, 80), st.just(0.0)),
    st.tuples(st.just("point"), st.just(0.0), st.just(0.0)),
)


def _tes_from(mA, shape_a, shape_c, duration, ramps, kind="tdcs"):
    def mk(name, cur, sh, pos):
        if sh[0] == "rect":
            return el(name, cur, size=(sh[1], sh[2]), pos=pos)
        if sh[0] == "disc":
            return el(name, cur, shape="disc", diameter=sh[1], pos=pos)
        return el(name, cur, shape="point", pos=pos)

    return tes([mk("a", mA, shape_a, (0, 0, 95)), mk("c", -mA, shape_c, (95, 0, 0))], duration=duration, ramps=ramps,
               kind=kind, freq=10.0 if kind == "tacs" else None)


@FAST
@given(mA=st.floats(0.05, 8), factor=st.floats(1.0, 5.0), a=electrode_shape, c=electrode_shape,
       duration=st.floats(1, 60), ru=st.floats(0, 60), rd=st.floats(0, 60), brain_J=st.floats(0.01, 20))
def test_raising_current_never_lowers_tes_verdicts(mA, factor, a, c, duration, ru, rd, brain_J):
    lo = check(_tes_from(mA, a, c, duration, (ru, rd)), fields(brain_J))
    hi = check(_tes_from(mA * factor, a, c, duration, (ru, rd)), fields(brain_J * factor))  # J scales with I
    _assert_fail_preserved(lo, hi)
    rl, rh = _rank_map(lo), _rank_map(hi)
    assert all(rh[k] >= rl[k] for k in rl)  # every tES rule is monotone in current


@FAST
@given(mA=st.floats(0.05, 5), a=electrode_shape, c=electrode_shape, duration=st.floats(1, 60),
       extra=st.floats(0, 60), ru=st.floats(0, 60), rd=st.floats(0, 60))
def test_raising_duration_never_lowers_tes_verdicts(mA, a, c, duration, extra, ru, rd):
    lo = check(_tes_from(mA, a, c, duration, (ru, rd)))
    hi = check(_tes_from(mA, a, c, duration + extra, (ru, rd)))
    _assert_fail_preserved(lo, hi)
    rl, rh = _rank_map(lo), _rank_map(hi)
    assert all(rh[k] >= rl[k] for k in rl)


rtms_params = dict(f=st.floats(0.5, 50), ppt=st.integers(1, 200), trains=st.integers(2, 100),
                   iti=st.floats(0.1, 60), rmt=st.floats(50, 150))


@FAST
@given(**rtms_params, df=st.floats(1.0, 4.0))
def test_raising_frequency_never_turns_fail_into_pass_or_warn(f, ppt, trains, iti, rmt, df):
    lo = check(tms(rtms(f=f, ppt=ppt, trains=trains, iti=iti, rmt=rmt)))
    # same pulses per train (shorter train) ...
    _assert_fail_preserved(lo, check(tms(rtms(f=f * df, ppt=ppt, trains=trains, iti=iti, rmt=rmt))))
    # ... and same train duration (more pulses)
    ppt_same_t = math.ceil(ppt * df - 1e-9)
    _assert_fail_preserved(lo, check(tms(rtms(f=f * df, ppt=ppt_same_t, trains=trains, iti=iti, rmt=rmt))))


@FAST
@given(**rtms_params, di=st.floats(0, 80))
def test_raising_intensity_never_turns_fail_into_pass_or_warn(f, ppt, trains, iti, rmt, di):
    lo = check(tms(rtms(f=f, ppt=ppt, trains=trains, iti=iti, rmt=rmt)))
    _assert_fail_preserved(lo, check(tms(rtms(f=f, ppt=ppt, trains=trains, iti=iti, rmt=rmt + di))))


@FAST
@given(**rtms_params, dp=st.integers(0, 300), dt=st.integers(0, 50))
def test_raising_train_length_never_turns_fail_into_pass_or_warn(f, ppt, trains, iti, rmt, dp, dt):
    lo = check(tms(rtms(f=f, ppt=ppt, trains=trains, iti=iti, rmt=rmt)))
    _assert_fail_preserved(lo, check(tms(rtms(f=f, ppt=ppt + dp, trains=trains + dt, iti=iti, rmt=rmt))))


@FAST
@given(interval=st.floats(0.05, 20), pulses=st.integers(2, 500), shrink=st.floats(1.0, 10.0))
def test_raising_single_pulse_rate_never_improves(interval, pulses, shrink):
    lo = check(tms({"type": "single", "pulses": pulses, "interval_s": interval}))
    hi = check(tms({"type": "single", "pulses": pulses, "interval_s": interval / shrink}))
    assert _rank_map(hi)[("tms.single_pulse_rate", None)] >= _rank_map(lo)[("tms.single_pulse_rate", None)]


@FAST
@given(**rtms_params, spd=st.integers(1, 5))
def test_random_protocols_never_pass_an_unverifiable_rule(f, ppt, trains, iti, rmt, spd):
    for r in check(tms(rtms(f=f, ppt=ppt, trains=trains, iti=iti, rmt=rmt), spd=spd)).results:
        if not r.verified:
            assert r.verdict == NOT_CHECKED


# ------------------------------------------------------------------------------ CLI


def _write(tmp_path, data, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_check_exit_codes_and_json(tmp_path):
    out = io.StringIO()
    ok = _write(tmp_path, tes(mA=2.0))
    assert run_check(ok, as_json=True, simulate=False, out=out) == 0
    d = json.loads(out.getvalue())
    assert d["verdict"] in ("PASS", "WARN") and d["results"]
    out = io.StringIO()
    bad = _write(tmp_path, tes(mA=5.0, duration=10), "bad.yaml")
    assert run_check(bad, as_json=False, simulate=False, out=out) == 1
    text = " ".join(out.getvalue().split())
    assert "FAIL" in text and "not a clinical approval" in text


def test_run_check_bad_input_raises_stimsim_error(tmp_path):
    with pytest.raises(StimsimError):
        run_check(tmp_path / "missing.yaml", as_json=False, simulate=False)
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: tdcs\nelectrodes: [")
    with pytest.raises(StimsimError):
        run_check(broken, as_json=True, simulate=False)
    q = tmp_path / "q.yaml"
    q.write_text("- not a mapping\n")
    with pytest.raises(StimsimError, match="mapping"):
        run_check(_write(tmp_path, tms({"type": "single"})), as_json=True, simulate=False, questionnaire_path=q)


def test_run_check_questionnaire_file(tmp_path):
    q = tmp_path / "q.yaml"
    q.write_text(yaml.safe_dump({**{k: "no" for k in ALL_NO}, "metal_in_head": "yes"}))
    out = io.StringIO()
    code = run_check(_write(tmp_path, tms({"type": "single"})), as_json=True, simulate=False, questionnaire_path=q,
                     out=out)
    assert code == 1
    assert any(r["subject"] == "metal_in_head" and r["verdict"] == "FAIL" for r in json.loads(out.getvalue())["results"])


def test_run_check_simulate_runs_the_field_rules(tmp_path):
    """End to end on the embedded 3-layer sphere (brain = tag 3 there)."""
    out = io.StringIO()
    p = tes([el("a", 2.0, shape="disc", diameter=25), el("c", -2.0, pos=(95, 0, 0))], duration=20)
    assert run_check(_write(tmp_path, p), as_json=True, simulate=True, brain_tags=[3], out=out) == 0
    d = json.loads(out.getvalue())
    j = [r for r in d["results"] if r["rule_id"] == "tes.field.brain_current_density"]
    assert d["fields_checked"] and len(j) == 1 and j[0]["verdict"] in ("PASS", "WARN")
    assert 0 < j[0]["value"] < 6.3


def test_screening_answers_in_the_protocol():
    from stimsim.protocol import validate_protocol
    from stimsim.safety import check

    base = {"kind": "tms", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
            "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]}, "stimulator": {"didt_A_per_us": 60.0}}
    unanswered = check(validate_protocol(base))
    pregnant = check(validate_protocol(dict(base, screening={"pregnancy": "yes"})))
    answers = {r.subject: r.verdict for r in pregnant.results if r.rule_id == "tms.screening"}
    assert answers["pregnancy"] == "FAIL" and answers["seizure_history"] == NOT_CHECKED  # answered / unanswered
    assert pregnant.verdict == "FAIL"
    assert {r.verdict for r in unanswered.results if r.rule_id == "tms.screening"} == {NOT_CHECKED}
