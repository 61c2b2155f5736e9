"""Pure functions of the filter: blocklist counts, decisions, Wilson intervals, confusion metrics."""

from __future__ import annotations

import math

import pytest

from surgical.curate.blocklist import Blocklist
from surgical.curate.filter import BORDERLINE, GOLD, QUARANTINE, Confusion, decide, wilson_interval
from surgical.policy import ForbiddenDomain, Policy


def _policy():
    return Policy(forbidden=[
        ForbiddenDomain(name="mul", keywords=["*", "Times"], regexes=[r"\d\s*\*\s*\d"], escalate_at=2),
        ForbiddenDomain(name="div", keywords=["/"], escalate_at=1),
    ])


def test_blocklist_counts_keywords_and_regex_matches_case_insensitively():
    bl = Blocklist(_policy())
    # '*' twice, 'times' once (case-insensitive), regex '\d*\d' matches '3*4' and '5 * 6'
    hits = bl.hits("3*4 and 5 * 6, three TIMES")
    assert hits == {"mul": 2 + 1 + 2, "div": 0}
    assert bl.escalated(hits) == ["mul"]
    assert bl.escalated(bl.hits("one * here")) == []  # 1 hit < escalate_at=2
    assert bl.escalated(bl.hits("8/2")) == ["div"]


def test_decide_routes_by_threshold_and_band():
    thr = {"mul": 0.5, "div": 0.7}
    assert decide({"mul": 0}, [], None, thr, 0.1)["decision"] == GOLD
    q = decide({"mul": 3}, ["mul"], {"mul": 0.55, "div": 0.1}, thr, 0.1)
    assert (q["decision"], q["domain"], q["reason"]) == (QUARANTINE, "mul", "forbidden")
    assert q["scores"]["classifier"]["mul"] == pytest.approx(0.55)
    # the per-domain threshold counts: div at 0.65 is below its 0.7 but within the band
    b = decide({"div": 1}, ["div"], {"mul": 0.1, "div": 0.65}, thr, 0.1)
    assert (b["decision"], b["domain"]) == (BORDERLINE, "div")
    g = decide({"div": 1}, ["div"], {"mul": 0.1, "div": 0.5}, thr, 0.1)
    assert (g["decision"], g["reason"]) == (GOLD, "classifier_allowed")
    # classify-all: a non-escalated record below threshold is gold, never borderline
    assert decide({}, [], {"mul": 0.45, "div": 0.0}, thr, 0.1)["decision"] == GOLD
    assert decide({}, [], {"mul": 0.95, "div": 0.0}, thr, 0.1)["rule"] == "classifier:mul"


def test_wilson_interval_matches_hand_computation():
    # 8/10, z=1.96: centre = (0.8 + 0.192) / 1.384 = 0.7168; half = 1.96*sqrt(0.016 + 0.0096)/1.384 = 0.2266
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson_interval(0, 400)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / (400 + 3.8415), abs=1e-4)  # z^2 / (n + z^2)
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_confusion_metrics():
    c = Confusion()
    for forbidden, removed in [(1, 1)] * 9 + [(1, 0)] + [(0, 1)] * 2 + [(0, 0)] * 18:
        c.add(bool(forbidden), bool(removed), "mul" if forbidden else "add")
    m = c.metrics()
    assert m["forbidden_recall"]["value"] == pytest.approx(0.9) and m["forbidden_recall"]["n"] == 10
    assert m["overfilter_rate"]["value"] == pytest.approx(0.1) and m["overfilter_rate"]["n"] == 20
    assert m["precision"] == pytest.approx(9 / 11)
    assert m["f1"] == pytest.approx(2 * (9 / 11) * 0.9 / (9 / 11 + 0.9))
    assert len(m["forbidden_recall"]["ci95"]) == 2
    assert m["per_domain_removed"]["add"] == {"n": 20, "removed": 2, "rate": 0.1}
    assert math.isnan(Confusion().metrics()["precision"])


def test_decisive_hits_quarantine_without_the_classifier(tmp_path, stub_classifier):
    from surgical.curate.config import CurateConfig
    from surgical.curate.run import curate

    pol = Policy(forbidden=[ForbiddenDomain(name="mul", keywords=["*"], escalate_at=1, decisive_at=3,
                                            exemplars=["1*1"])])
    bl = Blocklist(pol)
    assert bl.decisive(bl.hits("1*2*3*4")) == ["mul"] and bl.decisive(bl.hits("1*2")) == []
    q = decide({"mul": 3}, ["mul"], None, {"mul": 0.5}, 0.1, decisive=["mul"])
    assert (q["decision"], q["rule"]) == (QUARANTINE, "blocklist:decisive:mul")
    recs = [{"text": "1*2*3*4 heavy"}, {"text": "1*2 light"}, {"text": "no hits"}]
    stub_classifier.domains = ("mul",)
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, pol, CurateConfig(), classifier=stub_classifier)
    assert stub_classifier.batch_sizes == [1]  # only the light record reached the classifier
    assert res.report["counts"]["by_stage"]["stage1_decisive"] == 1
