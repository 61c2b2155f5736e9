"""Pure functions of the verify stage, checked against hand computations."""

import math

import numpy as np
import pytest
import torch

from surgical.policy import Thresholds
from surgical.verify.bootstrap import bootstrap_ci, majority_rate, recovery_auc, steps_to_fraction
from surgical.verify.latent import diff_in_means, project_out
from surgical.verify.probes import perplexity_ci, redact
from surgical.verify.verdict import compute_verdict


def test_bootstrap_ci_constant_and_mean():
    c = bootstrap_ci([1, 1, 1, 1], n_boot=200)
    assert c == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 4}
    c = bootstrap_ci([0, 1] * 50, n_boot=2000, seed=1)
    assert c["value"] == 0.5
    # binomial SE = 0.05, so the 95% interval is about 0.5 +- 0.098
    assert 0.38 < c["ci_low"] < 0.43 and 0.57 < c["ci_high"] < 0.62
    assert math.isnan(bootstrap_ci([])["value"])


def test_steps_to_fraction_and_auc_by_hand():
    curve = [(0, 0.0), (100, 0.2), (200, 0.6)]
    assert steps_to_fraction(curve, 0.5) == 200
    assert steps_to_fraction(curve, 0.9) is None
    # reference 0.8: fractions 0, .25, .75 then held at .75 to step 400
    # trapezoids: 100*(0+.25)/2 + 100*(.25+.75)/2 + 200*.75 = 12.5 + 50 + 150 = 212.5; / 400
    assert recovery_auc(curve, 400, 0.8) == pytest.approx(212.5 / 400)
    assert recovery_auc([(0, 1.0)], 500, 0.5) == pytest.approx(1.0)  # early-stopped at full recovery
    assert majority_rate([1, 1, 2, 3]) == 0.5


def test_perplexity_by_hand():
    # two items: NLL 2 over 1 token and 4 over 3 tokens -> exp(6/4)
    c = perplexity_ci([(2.0, 1), (4.0, 3)], n_boot=100, seed=0)
    assert c["value"] == pytest.approx(math.exp(1.5))
    assert c["ci_low"] <= c["value"] <= c["ci_high"]


def test_redaction_hides_text_unless_asked():
    r = redact("41*4:", " 1*4+0=4; so 164", True, show=False)
    assert "prompt" not in r and "generation" not in r and r["redacted"]
    assert r["generation_chars"] == len(" 1*4+0=4; so 164") and len(r["prompt_sha256"]) == 16
    shown = redact("41*4:", "x", False, show=True)
    assert shown["prompt"] == "41*4:" and shown["verdict"] == "not answered"


def test_diff_in_means_and_projection():
    refused = np.array([[[2.0, 0.0], [4.0, 0.0]]])  # (layers=1, items=2, hidden=2): mean (3, 0)
    answered = np.array([[[0.0, 0.0], [0.0, 2.0]]])  # mean (0, 1)
    d = diff_in_means(refused, answered)
    assert np.allclose(d, np.array([[3.0, -1.0]]) / math.sqrt(10))
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    u = torch.tensor([1.0, 0.0])
    assert torch.allclose(project_out(h, u), torch.tensor([[0.0, 2.0], [0.0, -1.0]]))


def _attack(forget, mc, mc_low):
    return {"forget": forget, "forget_mc": mc, "forget_mc_ci_low": mc_low}


def test_verdict_worst_case_and_statistic():
    th = Thresholds()
    ok = {"none": _attack(0.0, 0.26, 0.2), "jb": _attack(0.02, 0.33, 0.28)}
    kept = {"retain": 0.95, "reference_retain": 1.0}
    v = compute_verdict(ok, th, **kept)
    assert v["verdict"] == "pass"
    # the same numbers judged on the point estimate: jb's 0.33 > 0.25 + 0.05
    v = compute_verdict(ok, th, **kept, mc_statistic="value")
    assert v["verdict"] == "fail" and v["failed"] == ["forget_mc_worst_case"]
    assert v["checks"][0]["attack"] == "jb"
    v = compute_verdict({**ok, "quant:int4": _attack(0.4, 0.9, 0.85)}, th, **kept)
    assert set(v["failed"]) == {"forget_mc_worst_case", "forget_exact_match_worst_case"}
    assert compute_verdict(ok, th, retain=0.5, reference_retain=1.0)["failed"] == ["retain_ratio"]
    # no reference: the ratio is not evaluated, and the verdict is incomplete, not pass (test_verdict_strict.py)
    no_ref = compute_verdict(ok, th, retain=0.95)
    ratio = next(c for c in no_ref["checks"] if c["name"] == "retain_ratio")
    assert no_ref["verdict"] == "incomplete" and ratio["passed"] is None


def test_verdict_relearning_gate():
    ok = {"none": _attack(0.0, 0.25, 0.2)}
    rel = {"teacher_forget": 0.9, "max_final": 0.8, "peak": {"value": 0.8, "lr": 1e-3, "step": 4}}
    kept = {"retain": 1.0, "reference_retain": 1.0}
    informational = compute_verdict(ok, Thresholds(gate_on_relearning=False), **kept, relearning=rel)
    assert informational["verdict"] == "pass"
    gated = compute_verdict(ok, Thresholds(), **kept, relearning=rel)  # gating by default
    assert gated["verdict"] == "fail" and gated["failed"] == ["relearning"]
