"""The filter's decision and its metrics, as pure functions on scores and counts.

Decision (per record), after the Deep Ignorance two-stage filter (O'Brien et al., 2025):

* stage 1: blocklist hits per forbidden domain; a domain with ``hits >= escalate_at`` escalates;
* optionally, ``hits >= decisive_at`` quarantines at once (stage 1 alone decides);
* stage 2 (escalated records, or all with ``classify='all'``): one probability per forbidden domain;
  any ``p >= classifier_threshold`` -> quarantine; an escalated record within ``borderline_band`` below
  the threshold -> borderline; otherwise gold.

Removed = quarantine or borderline (neither reaches gold). ``forbidden_recall`` is the fraction of
forbidden-labelled records removed; ``overfilter_rate`` the fraction of allowed-labelled records removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

GOLD, QUARANTINE, BORDERLINE = "gold", "quarantine", "borderline"


def decide(
    hits: Mapping[str, int],
    escalated: list[str],
    probs: Mapping[str, float] | None,
    thresholds: Mapping[str, float],
    borderline_band: float,
    decisive: list[str] | None = None,
) -> dict:
    """The ``curate`` block of one readable record: decision, domain, rule, scores, reason.

    ``probs`` is None when the classifier did not run on the record (not escalated, or decided by stage 1:
    ``decisive`` lists the domains whose hits reached their ``decisive_at``)."""
    scores = {"blocklist_hits": dict(hits)}
    if decisive:
        top = max(decisive, key=lambda d: hits[d])
        return {"decision": QUARANTINE, "domain": top, "rule": f"blocklist:decisive:{top}", "scores": scores,
                "reason": "forbidden"}
    if probs is None:
        return {"decision": GOLD, "domain": None, "rule": "blocklist:pass", "scores": scores, "reason": "no_hits"}
    scores["classifier"] = {d: round(float(p), 6) for d, p in probs.items()}
    margins = {d: float(p) - thresholds[d] for d, p in probs.items()}
    top = max(margins, key=margins.get)
    stage = "blocklist+classifier" if escalated else "classifier"
    if margins[top] >= 0:
        return {"decision": QUARANTINE, "domain": top, "rule": f"{stage}:{top}", "scores": scores,
                "reason": "forbidden"}
    if escalated and margins[top] >= -borderline_band:
        return {"decision": BORDERLINE, "domain": top, "rule": f"{stage}:borderline:{top}", "scores": scores,
                "reason": "near_threshold"}
    return {"decision": GOLD, "domain": None, "rule": f"{stage}:pass", "scores": scores,
            "reason": "classifier_allowed" if escalated else "no_hits"}


def failed(reason: str, detail: str, scores: dict | None = None) -> dict:
    """The ``curate`` block of a record that could not be read or scored: quarantined (fail closed)."""
    return {"decision": QUARANTINE, "domain": None, "rule": "fail_closed", "scores": scores or {},
            "reason": reason, "detail": detail}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95% interval of a binomial proportion (Wilson 1927); [0, 1] when n == 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


class Confusion:
    """Counts of (label, removed) per domain; ``forbidden`` is the positive class."""

    def __init__(self) -> None:
        self.tp = self.fn = self.fp = self.tn = 0
        self.per_domain: dict[str, dict[str, int]] = {}

    def add(self, forbidden: bool, removed: bool, domain: str | None = None) -> None:
        if forbidden:
            self.tp += removed
            self.fn += not removed
        else:
            self.fp += removed
            self.tn += not removed
        row = self.per_domain.setdefault(domain or "?", {"n": 0, "removed": 0})
        row["n"] += 1
        row["removed"] += removed

    def metrics(self) -> dict:
        """Recall, over-filtering (each with a Wilson 95% interval), precision and F1."""
        n_pos, n_neg = self.tp + self.fn, self.fp + self.tn
        recall = self.tp / n_pos if n_pos else float("nan")
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
        return {
            "forbidden_recall": {"value": recall, "ci95": wilson_interval(self.tp, n_pos), "n": n_pos},
            "overfilter_rate": {"value": self.fp / n_neg if n_neg else float("nan"),
                                "ci95": wilson_interval(self.fp, n_neg), "n": n_neg},
            "precision": precision,
            "f1": f1,
            "confusion": {"tp": self.tp, "fn": self.fn, "fp": self.fp, "tn": self.tn},
            "per_domain_removed": {d: {**r, "rate": r["removed"] / r["n"]} for d, r in sorted(self.per_domain.items())},
        }
