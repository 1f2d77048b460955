"""Dose safety check: compare a planned tDCS/tACS or TMS session with published limits.

``stimsim.safety.check(protocol, fields=None) -> SafetyReport``.  The limits are data
(``rules.yaml`` in this package: value, unit, source, DOI, where it was read, how it was
verified).  Decision support, not a clinical approval.
"""

from .check import SafetyInputError, check, check_safety, load_rules, normalize_questionnaire
from .model import Rule, RuleResult, RuleSet, SafetyReport, Source, worst

__all__ = ["check", "check_safety", "load_rules", "normalize_questionnaire", "SafetyReport", "RuleResult",
           "Rule", "RuleSet", "Source", "SafetyInputError", "worst"]
