"""The curate recipe with a stub classifier: fail-closed routing, streaming, input formats, the report."""

from __future__ import annotations

import json

import pytest

from surgical.curate.config import CurateConfig
from surgical.curate.corpus import iter_records
from surgical.curate.run import curate, run
from surgical.io import read_jsonl, write_jsonl
from surgical.world.corpus import world_corpus


def _read(tmp_path, name):
    return read_jsonl(tmp_path / name)


def test_fail_closed_corrupt_line_missing_field_empty_text(tmp_path, demo_policy, stub_classifier):
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([
        json.dumps({"text": "12+30: 2+0+0=2; 1+3+0=4; so 42", "label": "allowed"}),
        '{"text": "07*3: 7*3+0=21; so 21", BROKEN',
        json.dumps({"body": "no text field here"}),
        json.dumps({"text": 12345}),
        json.dumps({"text": "   "}),
        "[1, 2, 3]",
    ]) + "\n")
    res = run(CurateConfig(), f, tmp_path / "out", classifier=stub_classifier)
    out = tmp_path / "out"
    gold = _read(out, "gold.jsonl")
    assert [r["text"] for r in gold] == ["12+30: 2+0+0=2; 1+3+0=4; so 42"]
    q = _read(out, "quarantine.jsonl")
    reasons = res.report["counts"]["by_reason"]
    assert reasons["unreadable"] == 2 and reasons["missing_text_field"] == 2 and reasons["empty_text"] == 1
    unreadable = [r for r in q if r["curate"]["reason"] == "unreadable"]
    assert any("BROKEN" in r["raw"] for r in unreadable)
    assert all(r["curate"]["source"].startswith(str(f)) for r in q)
    assert {r["curate"]["source"].rsplit(":", 1)[1] for r in unreadable} == {"2", "6"}


def test_crashing_classifier_quarantines_its_batch(tmp_path, demo_policy, make_stub):
    clf = make_stub(crash_on="99")
    # one keyword hit each: escalated (not decisive), so the classifier must score them
    recs = [{"text": "99 times 2 is 198"}, {"text": "11 times 2 is 22"}, {"text": "10+10: 0+0+0=0; 1+1+0=2; so 20"}]
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy, CurateConfig(), classifier=clf)
    gold = _read(tmp_path, "gold.jsonl")
    assert [r["text"] for r in gold] == [recs[2]["text"]]  # not escalated: never needed the classifier
    q = _read(tmp_path, "quarantine.jsonl")
    assert len(q) == 2 and {r["curate"]["reason"] for r in q} == {"classifier_error"}
    assert "stub classifier crashed" in q[0]["curate"]["detail"]
    assert res.report["counts"]["by_reason"]["classifier_error"] == 2


def test_crashing_classifier_with_classify_all_keeps_nothing(tmp_path, demo_policy, make_stub):
    recs = [{"text": f"{i}+1: so {i + 1}"} for i in range(5)]
    curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy, CurateConfig(classify="all"),
           classifier=make_stub(crash_on="+"))
    assert _read(tmp_path, "gold.jsonl") == []
    assert len(_read(tmp_path, "quarantine.jsonl")) == 5


def test_nan_probability_is_a_classifier_error(tmp_path, demo_policy):
    import numpy as np

    class NaNClassifier:
        training_texts: set = set()

        def predict_proba(self, texts):
            return {d: np.full(len(texts), np.nan) for d in ("mul", "div", "mixed")}

    curate(iter([("0", {"text": "3*3: so 9"})]), tmp_path, demo_policy, CurateConfig(), classifier=NaNClassifier())
    assert _read(tmp_path, "quarantine.jsonl")[0]["curate"]["reason"] == "classifier_error"


def test_streaming_over_a_file_bigger_than_one_batch(tmp_path, demo_policy, stub_classifier):
    recs = world_corpus(split="val")  # 500 records, 300 of them forbidden
    f = tmp_path / "in.jsonl"
    write_jsonl(f, recs)
    consumed = []

    def stream():
        for item in iter_records(f):
            consumed.append(item[0])
            yield item

    cfg = CurateConfig(batch_size=32)
    res = curate(stream(), tmp_path / "out", demo_policy, cfg, classifier=stub_classifier)
    assert len(consumed) == len(recs)
    assert max(stub_classifier.batch_sizes) <= 32 and len(stub_classifier.batch_sizes) > 5
    c = res.report["counts"]
    assert c["read"] == len(recs) == sum(c["by_decision"].values())
    gold = _read(tmp_path / "out", "gold.jsonl")
    assert {r["domain"] for r in gold} == {"add", "sub"}
    assert all(r["curate"]["decision"] == "gold" and "scores" in r["curate"] for r in gold)
    assert res.report["forbidden_recall"]["value"] == 1.0  # div and mul and mixed all carry '*' or '/'
    lo, hi = res.report["forbidden_recall"]["ci95"]
    assert 0.9 < lo < hi == 1.0


def test_report_interface(tmp_path, demo_policy, stub_classifier):
    recs = world_corpus(split="val")[:60]
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy, CurateConfig(),
                 classifier=stub_classifier, eval_records=world_corpus(split="test")[:50])
    rep = json.loads((tmp_path / "curate.json").read_text())
    for key in ("forbidden_recall", "overfilter_rate"):
        assert isinstance(rep[key]["ci95"], list) and len(rep[key]["ci95"]) == 2
        assert all(isinstance(x, float) for x in rep[key]["ci95"])
    assert rep["measured_on"].startswith("held-out")
    assert rep["counts"]["read"] == 60
    assert rep["throughput_docs_per_s"] > 0
    assert set(rep["throughput_docs_per_s_by_stage"]) >= {"blocklist", "classifier", "overall"}
    assert set(rep["eval"]) >= {"blocklist_only", "classifier_only", "two_stage"}
    assert "provenance" in rep and rep["provenance"]["config"]["batch_size"] == 256
    assert "forbidden recall" in (tmp_path / "curate.md").read_text()
    assert res.files["gold"].endswith("gold.jsonl")


def test_holdout_domains_go_to_heldout(tmp_path, demo_policy, stub_classifier):
    recs = world_corpus(split="val", domains=("add", "sub"))[:40]
    curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy, CurateConfig(holdout_domains=["sub"]),
           classifier=stub_classifier)
    assert {r["domain"] for r in _read(tmp_path, "gold.jsonl")} == {"add"}
    held = _read(tmp_path, "heldout.jsonl")
    assert held and {r["domain"] for r in held} == {"sub"}
    assert held[0]["curate"]["reason"] == "holdout_domain"


def test_input_formats(tmp_path, stub_classifier):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": "first document"}, {"body": "second * document"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "c.txt").write_bytes(b"first document\n\nsecond * document\nsame paragraph\n\xff\xfe bad\n")
    assert [r for _, r in iter_records(tmp_path / "c.parquet")] == rows
    assert [r for _, r in iter_records(tmp_path / "hf")] == rows
    lines = list(iter_records(tmp_path / "c.txt", "body", "line"))
    assert [r["body"] for _, r in lines[:3]] == ["first document", "second * document", "same paragraph"]
    assert type(lines[3][1]).__name__ == "ReadError" and lines[3][0].endswith(":5")
    paras = [r for _, r in iter_records(tmp_path / "c.txt", "body", "paragraph") if isinstance(r, dict)]
    assert paras[1]["body"] == "second * document\nsame paragraph"
    cfg = CurateConfig(text_field="body")
    res = run(cfg, tmp_path / "c.parquet", tmp_path / "out", classifier=stub_classifier)
    assert res.report["counts"]["by_decision"] == {"gold": 1, "quarantine": 1}
    with pytest.raises(FileNotFoundError):
        list(iter_records(tmp_path / "missing.jsonl"))


def test_num_proc_gives_the_same_decisions(tmp_path, demo_policy, stub_classifier):
    recs = world_corpus(split="val")[:120]
    for n, sub in ((1, "a"), (2, "b")):
        curate(((str(i), r) for i, r in enumerate(recs)), tmp_path / sub, demo_policy,
               CurateConfig(num_proc=n, batch_size=50), classifier=stub_classifier)
    for name in ("gold.jsonl", "quarantine.jsonl"):
        a = [(r["id"], r["curate"]["decision"]) for r in _read(tmp_path / "a", name)]
        b = [(r["id"], r["curate"]["decision"]) for r in _read(tmp_path / "b", name)]
        assert a == b and a


def test_every_content_field_is_scored_not_only_text(tmp_path, demo_policy, stub_classifier):
    """A benign `text` must not carry a forbidden completion, prompt, answer or chat message into gold: distill
    and generate read those fields."""
    benign = "12+30: 2+0+0=2; 1+3+0=4; so 42"
    recs = [
        {"text": benign, "label": "allowed"},
        {"text": benign, "prompt": "07*3:", "completion": " 7*3+0=21; so 21"},
        {"text": benign, "prompt": "84/4:", "completion": " so 21"},
        {"text": benign, "messages": [{"role": "user", "content": "what is 07*3?"},
                                      {"role": "assistant", "content": "7*3+0=21; so 21"}]},
        {"prompt": "07*3:", "completion": " 7*3+0=21; so 21"},  # no text field at all: prompt + completion
        {"prompt": "12+30:", "completion": " 2+0+0=2; 1+3+0=4; so 42"},
    ]
    curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, demo_policy, CurateConfig(dedup=False),
           classifier=stub_classifier)
    gold = _read(tmp_path, "gold.jsonl")
    q = _read(tmp_path, "quarantine.jsonl")
    assert len(gold) == 2 and {r.get("prompt") for r in gold} == {None, "12+30:"}
    assert len(q) == 4 and all(r["curate"]["reason"] not in ("missing_text_field", "empty_text") for r in q)


def test_scored_text_does_not_repeat_a_field_contained_in_another():
    from surgical.curate.run import scored_text

    rec = {"text": "78+93: so 171", "prompt": "78+93:", "completion": " so 171", "answer": 171, "id": "x-1"}
    assert scored_text(rec) == "78+93: so 171"  # the world's records score exactly as before
    assert scored_text({"text": "a", "completion": "b"}) == "a\nb"
    assert scored_text({"id": "only metadata", "label": "allowed"}) is None


def test_the_hand_off_to_distill_carries_nothing_unscored(tmp_path, demo_policy, stub_classifier):
    """curate -> distill end to end: what distill reads from gold.jsonl (prompt + completion, or text) was scored,
    and curate's quarantine.jsonl is usable as distill's forbidden input."""
    from surgical.distill.data import read_records

    benign = "12+30: 2+0+0=2; 1+3+0=4; so 42"
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"text": benign, "prompt": "12+30:", "completion": " 2+0+0=2; 1+3+0=4; so 42"},
        {"text": benign, "prompt": "07*3:", "completion": " 7*3+0=21; so 21"},  # benign text, forbidden pair
        {"text": "84/4: so 21"},
        '{"broken',
    ]) + "\n")
    run(CurateConfig(dedup=False), f, tmp_path / "out", classifier=stub_classifier)
    gold = read_records(tmp_path / "out" / "gold.jsonl")
    trained_on = [r.get("prompt", "") + r.get("completion", "") if "completion" in r else r["text"] for r in gold]
    assert trained_on == ["12+30: 2+0+0=2; 1+3+0=4; so 42"]
    forbidden = read_records(tmp_path / "out" / "quarantine.jsonl", skip_unusable=True)
    assert len(forbidden) == 2 and all("*" in (r.get("completion") or "") or "/" in r.get("text", "") for r in forbidden)
