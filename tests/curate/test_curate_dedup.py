"""Exact and near-duplicate detection, alone and inside a curate run."""

from __future__ import annotations

import numpy as np
import pytest

from surgical.curate.config import CurateConfig
from surgical.curate.dedup import (
    LSHIndex,
    exact_key,
    jaccard,
    jaccard_estimate,
    minhash,
    minhash_params,
    shingles,
)
from surgical.curate.run import curate
from surgical.io import read_jsonl

TEXT = "the quick brown fox jumps over the lazy dog while the farmer sleeps in the warm afternoon sun"


def test_exact_key_ignores_case_and_whitespace():
    assert exact_key("Hello   World\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello worlds")


def test_shingles_by_hand():
    assert shingles("A b c d", 3) == {"a b c", "b c d"}
    assert shingles("a b", 3) == {"a b"}


def test_minhash_estimates_jaccard():
    params = minhash_params(256)
    a_words = [f"w{i}" for i in range(100)]
    b_words = a_words[:80] + [f"x{i}" for i in range(20)]
    a, b = " ".join(a_words), " ".join(b_words)
    truth = jaccard(shingles(a, 1), shingles(b, 1))  # 80 / 120
    est = jaccard_estimate(minhash(a, params, 1), minhash(b, params, 1))
    assert truth == pytest.approx(2 / 3)
    assert est == pytest.approx(truth, abs=0.08)
    assert jaccard_estimate(minhash(a, params, 1), minhash(a, params, 1)) == 1.0


def test_minhash_is_deterministic_across_calls():
    assert np.array_equal(minhash(TEXT, minhash_params(64)), minhash(TEXT, minhash_params(64)))


def test_lsh_finds_near_duplicates_only():
    params = minhash_params(64)
    idx = LSHIndex(64, 16, 0.7)
    idx.add(minhash(TEXT, params))
    near = TEXT.replace("afternoon", "evening")
    far = "an entirely different sentence about gardening and roses in the spring with lots of rain"
    assert [j for j, _ in idx.query(minhash(near, params))] == [0]
    assert idx.query(minhash(far, params)) == []
    with pytest.raises(ValueError, match="multiple"):
        LSHIndex(64, 10, 0.5)


@pytest.mark.parametrize("forbidden_first", [True, False])
def test_near_copy_of_a_quarantined_record_never_reaches_gold(tmp_path, demo_policy, stub_classifier, forbidden_first):
    # The forbidden text and its near-copy share almost every word; the copy has no '*' so stage 1 and 2
    # would keep it. Whatever the order, the copy must end in quarantine.
    forbidden = {"text": "we multiply * seven by three and the answer is twenty one as the table says clearly today"}
    copy = {"text": "we multiply x seven by three and the answer is twenty one as the table says clearly today"}
    other = {"text": "adding four and five gives nine which is a plain sum without any other operation at all"}
    recs = [forbidden, copy, other] if forbidden_first else [copy, other, forbidden]
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy,
                 CurateConfig(near_dup_jaccard=0.6), classifier=stub_classifier)
    gold = [r["text"] for r in read_jsonl(tmp_path / "gold.jsonl")]
    assert gold == [other["text"]]
    q = read_jsonl(tmp_path / "quarantine.jsonl")
    assert {r["curate"]["reason"] for r in q} == {"forbidden", "near_duplicate_of_quarantined"}
    assert res.report["counts"]["by_stage"]["dedup_near_quarantined"] == 1


def test_exact_and_near_duplicates_of_gold_are_dropped(tmp_path, demo_policy, stub_classifier):
    recs = [{"text": TEXT}, {"text": TEXT.upper()}, {"text": TEXT.replace("sun", "light")},
            {"text": "completely unrelated words here about football matches and league tables this season"}]
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy,
                 CurateConfig(near_dup_jaccard=0.7), classifier=stub_classifier)
    assert len(read_jsonl(tmp_path / "gold.jsonl")) == 2
    st = res.report["counts"]["by_stage"]
    assert st["dedup_exact_dropped"] == 1 and st["dedup_near_dropped"] == 1


def test_world_problems_are_not_near_duplicates_of_each_other(tmp_path, demo_policy, stub_classifier):
    from surgical.world.corpus import world_corpus

    recs = world_corpus(split="val")[:200]
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy, CurateConfig(),
                 classifier=stub_classifier)
    assert res.report["counts"]["by_stage"].get("dedup_near_dropped", 0) == 0
    assert res.report["counts"]["by_stage"].get("dedup_near_quarantined", 0) == 0
