"""Data model of the dose-safety check: rules (read from ``rules.yaml``), per-rule results, the report.

Each rule result has one status (the row's ``verdict``):

* ``PASS``  -- within a verified limit (or within the verified evidence the rule encodes);
* ``WARN``  -- outside the evidence: beyond a usual range, beyond every verified condition, or beyond a
  limit that was established for another kind of stimulation;
* ``FAIL``  -- beyond a verified limit;
* ``NOT_CHECKED`` -- the rule could not be checked: information missing from the protocol, a limit that
  could not be verified in its source, a limit that does not apply to this kind of stimulation, or advice
  the protocol cannot record (notes).  Every NOT_CHECKED row says in ``how_to_check`` what would let it
  be checked.  Tables spell it "NOT CHECKED".

The report's overall ``verdict`` is the worst of PASS < WARN < FAIL over the checked rows only; NOT_CHECKED
rows do not change it and are counted beside it (``not_checked``; "PASS (3 not checked)").  A report in
which nothing could be checked is WARN (nothing checked is never a PASS).  See docs/safety_verdicts.md.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Verdict = Literal["PASS", "WARN", "FAIL"]
Status = Literal["PASS", "WARN", "FAIL", "NOT_CHECKED"]
NOT_CHECKED = "NOT_CHECKED"
VERDICT_RANK = {"PASS": 0, "WARN": 1, "FAIL": 2}
STATUSES = ("PASS", "WARN", "FAIL", NOT_CHECKED)
STATUS_LABEL = {"PASS": "PASS", "WARN": "WARN", "FAIL": "FAIL", NOT_CHECKED: "NOT CHECKED"}
REPORT_SCHEMA_VERSION = 2

DISCLAIMER_FALLBACK = ("Decision support only: a comparison with published limits, not a clinical approval.")


def worst(verdicts) -> Verdict:
    """The worst of PASS < WARN < FAIL in an iterable of statuses; NOT_CHECKED entries are ignored.

    WARN when nothing is left: nothing checked is never a PASS.
    """
    vs = [v for v in verdicts if v != NOT_CHECKED]
    if not vs:
        return "WARN"
    return max(vs, key=VERDICT_RANK.__getitem__)


def status_label(status: str) -> str:
    """'NOT CHECKED' for NOT_CHECKED, the status itself otherwise (for tables and pages)."""
    return STATUS_LABEL.get(status, status)


def summary_text(verdict: str, not_checked: int) -> str:
    """'PASS', or 'PASS (3 not checked)' when some rows could not be checked."""
    return f"{verdict} ({not_checked} not checked)" if not_checked else verdict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Frozen):
    """A publication (or, where stated, a secondary text) a rule's numbers were read from."""

    key: str
    authors: str
    year: int | None = None
    title: str
    journal: str | None = None
    volume_pages: str | None = None
    doi: str | None = None
    doi_verified: str | None = None
    pmcid: str | None = None
    pmid: str | None = None
    read: str = Field(description="what of the source was actually read, and where")

    def short(self) -> str:
        """'Bikson et al. 2016, Brain Stimulation 9(5):641-661, doi:...' (first author's surname when it has one)."""
        first = self.authors.split(",")[0].split(";")[0].strip()
        personal = re.fullmatch(r"[A-Z][\w'-]+ [A-Z]{1,3}", first) is not None
        name = first.split()[0] if personal else first
        etal = " et al." if personal and ("," in self.authors or ";" in self.authors) else ""
        year = f" {self.year}" if self.year else ""
        journal = f", {self.journal}" if self.journal else ""
        vp = " " + self.volume_pages.split(" (")[0] if self.volume_pages else ""
        ident = (f", doi:{self.doi}" if self.doi else f", {self.pmcid}" if self.pmcid else
                 f", PMID {self.pmid}" if self.pmid else "")
        return f"{name}{etal}{year}{journal}{vp}{ident}"


class Threshold(_Frozen):
    op: Literal[">", ">=", "<", "<="]
    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, v):
        if not math.isfinite(v):
            raise ValueError(f"threshold value must be finite, got {v}")
        return v

    def exceeded(self, x: float) -> bool:
        """True when ``x`` is beyond the threshold; equality decided as written, up to 1e-9 relative rounding."""
        tol = 1e-9 * max(abs(self.value), 1e-300)
        if self.op == ">":
            return x > self.value + tol
        if self.op == ">=":
            return x >= self.value - tol
        if self.op == "<":
            return x < self.value - tol
        return x <= self.value + tol

    def text(self, unit: str | None) -> str:
        u = f" {unit}" if unit else ""
        return f"{self.op} {self.value:g}{u}"


class ScreeningItem(_Frozen):
    key: str
    question: str
    severity: Literal["contraindication", "caution"]
    source: Source


class Rule(_Frozen):
    """One row of ``rules.yaml``."""

    id: str
    modality: Literal["tes", "tms"]
    kinds: list[Literal["tdcs", "tacs", "ti", "tms"]]
    verified_for: list[Literal["tdcs", "tacs", "ti", "tms"]] | None = None
    programs: list[Literal["single", "rtms", "itbs", "ctbs", "tbs"]] | None = None
    kind: Literal["check", "note"] = "check"
    evaluator: str
    description: str
    quantity: str | None = None
    unit: str | None = None
    comparison: Literal["upper", "lower", "custom"]
    warn: Threshold | None = None
    fail: Threshold | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    source: Source
    where: str
    quote: str | None = None
    verified: str
    verified_ok: bool
    outside_evidence: Literal["indicative", "not_applicable"] = Field(
        "indicative", description="for kinds outside verified_for: 'indicative' = within the borrowed limit is "
                                  "NOT_CHECKED, beyond it WARN; 'not_applicable' = always NOT_CHECKED")
    outside_evidence_note: str | None = Field(None, description="why the limit does not carry over (shown)")
    how_to_check: str | None = Field(None, description="for notes: what the user must confirm")
    items: list[ScreeningItem] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.verified_for is not None and not set(self.verified_for) <= set(self.kinds):
            raise ValueError(f"rule {self.id}: verified_for {self.verified_for} not within kinds {self.kinds}")
        if self.modality == "tes" and "tms" in self.kinds or self.modality == "tms" and set(self.kinds) - {"tms"}:
            raise ValueError(f"rule {self.id}: modality {self.modality} does not match kinds {self.kinds}")
        return self

    def citation(self) -> str:
        return f"{self.source.short()} ({self.where})"

    def limit_text(self) -> str:
        parts = []
        if self.fail is not None:
            parts.append(f"FAIL {self.fail.text(self.unit)}")
        if self.warn is not None:
            parts.append(f"WARN {self.warn.text(self.unit)}")
        return "; ".join(parts)


class RuleSet(_Frozen):
    schema_version: int
    disclaimer: str
    sources: dict[str, Source]
    rules: list[Rule]
    origin: str = "stimsim/safety/rules.yaml"

    @model_validator(mode="after")
    def _unique_ids(self):
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate rule ids: {dup}")
        return self

    def get(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


class RuleResult(_Frozen):
    """The outcome of one rule for one subject (e.g. one electrode)."""

    rule_id: str
    description: str
    subject: str | None = Field(None, description="what the value belongs to, e.g. an electrode name")
    value: float | None = None
    unit: str | None = None
    limit: float | None = Field(None, description="the FAIL threshold (or the WARN one where no FAIL exists)")
    limit_text: str = ""
    verdict: Status = Field(description="PASS, WARN, FAIL or NOT_CHECKED (this row's status)")
    reason: str
    how_to_check: str | None = Field(None, description="NOT_CHECKED rows: what would let the rule be checked")
    citation: str
    kind: Literal["check", "note"] = "check"
    verified: bool = True

    @model_validator(mode="after")
    def _not_checked_says_how(self):
        if self.verdict == NOT_CHECKED and not self.how_to_check:
            raise ValueError(f"{self.rule_id}: a NOT_CHECKED result must say how it could be checked")
        return self

    def as_dict(self) -> dict:
        d = self.model_dump()
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None
        return d


class SafetyReport(BaseModel):
    """All results of a check.  ``verdict``: worst checked result (PASS/WARN/FAIL); ``not_checked`` beside it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol_kind: str
    results: list[RuleResult]
    disclaimer: str = DISCLAIMER_FALLBACK
    rules_origin: str = ""
    fields_checked: bool = False

    @property
    def verdict(self) -> Verdict:
        return worst(r.verdict for r in self.results)

    @property
    def not_checked(self) -> int:
        return sum(r.verdict == NOT_CHECKED for r in self.results)

    @property
    def summary(self) -> str:
        """'PASS', or 'PASS (3 not checked)'."""
        return summary_text(self.verdict, self.not_checked)

    @property
    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(STATUSES, 0)
        for r in self.results:
            c[r.verdict] += 1
        return c

    def by_rule(self, rule_id: str) -> list[RuleResult]:
        return [r for r in self.results if r.rule_id == rule_id]

    def as_dict(self) -> dict:
        """The JSON form (schema in docs/safety_verdicts.md; ``schema_version`` 2)."""
        from .. import __version__

        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "verdict": self.verdict,
            "not_checked": self.not_checked,
            "summary": self.summary,
            "counts": self.counts,
            "protocol_kind": self.protocol_kind,
            "fields_checked": self.fields_checked,
            "disclaimer": self.disclaimer,
            "rules": self.rules_origin,
            "stimsim_version": __version__,
            "results": [r.as_dict() for r in self.results],
        }

    def to_table(self):
        """A rich Table: rule, value, limit, status, reason (+ how to check), citation; caption = disclaimer."""
        from rich.markup import escape
        from rich.table import Table

        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", NOT_CHECKED: "cyan"}
        note = "" if self.fields_checked else " Field-based rules not run (no computed fields; use --simulate)."
        legend = (" NOT CHECKED: could not be checked (see 'to check'); not counted in the verdict."
                  if self.not_checked else "")
        table = Table(title=f"stimsim safety check ({self.protocol_kind}): {self.summary}",
                      caption=escape(self.disclaimer + note + legend), show_lines=False, expand=False)
        for col in ("rule", "value", "limit", "verdict", "reason", "citation"):
            table.add_column(col, overflow="fold", no_wrap=col == "verdict")
        for r in self.results:
            rule = r.rule_id + (f" [{r.subject}]" if r.subject else "") + (" (note)" if r.kind == "note" else "")
            if r.value is None:
                value = "-"
            else:
                value = f"{r.value:.4g}" + (f" {r.unit}" if r.unit else "")
            reason = r.reason + (f" -- to check: {r.how_to_check}" if r.how_to_check else "")
            table.add_row(escape(rule), escape(value), escape(r.limit_text or "-"),
                          f"[{colour[r.verdict]}]{status_label(r.verdict)}[/]", escape(reason), escape(r.citation))
        return table
