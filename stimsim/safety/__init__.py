"""Dose safety check: compare a planned tDCS/tACS or TMS session with published limits.

``stimsim.safety.check(protocol, fields=None) -> SafetyReport``.  The limits are data
(``rules.yaml`` in this package: value, unit, source, DOI, where it was read, how it was
verified).  Each rule gives PASS, WARN (outside the evidence), FAIL (beyond a verified limit) or
NOT_CHECKED (could not be checked; the row says what would let it be checked).  The report's
``verdict`` is the worst of PASS/WARN/FAIL, with ``not_checked`` beside it (docs/safety_verdicts.md).
Decision support, not a clinical approval.
"""

from .check import SafetyInputError, check, check_result, check_safety, load_rules, normalize_questionnaire
from .model import NOT_CHECKED, Rule, RuleResult, RuleSet, SafetyReport, Source, status_label, worst

__all__ = ["check", "check_result", "check_safety", "load_rules", "normalize_questionnaire", "SafetyReport", "RuleResult",
           "Rule", "RuleSet", "Source", "SafetyInputError", "worst", "NOT_CHECKED", "status_label"]
