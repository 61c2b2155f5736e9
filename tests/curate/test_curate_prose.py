"""The mixed-topic prose corpus: deterministic, labelled, and curated with precision/recall reported."""

from __future__ import annotations

from surgical.curate.config import CurateConfig
from surgical.curate.prose import TOPICS, prose_corpus, prose_policy
from surgical.curate.run import curate


def test_prose_corpus_is_deterministic_and_labelled():
    a, b = prose_corpus(40, "football", seed=3), prose_corpus(40, "football", seed=3)
    assert a == b
    assert {r["domain"] for r in a} == set(TOPICS)
    assert all((r["label"] == "forbidden") == (r["domain"] == "football") for r in a)
    assert prose_corpus(40, "football", seed=4) != a


def test_prose_policy_exemplars_are_not_in_the_corpus():
    pol = prose_policy("astronomy")
    corpus = {r["text"] for r in prose_corpus(200, "astronomy")}
    assert not corpus & set(pol.forbidden[0].exemplars)


def test_prose_curation_reports_precision_and_recall(tmp_path, minilm, monkeypatch):
    from surgical.curate import classifier as clf_mod

    monkeypatch.setattr(clf_mod, "make_embedder", lambda *a, **k: minilm)
    recs = prose_corpus(60, "astronomy", seed=1)
    res = curate(((r["id"], r) for r in recs), tmp_path, prose_policy("astronomy"), CurateConfig(classify="all"))
    rep = res.report
    dropped = sum(v for k, v in rep["counts"]["by_stage"].items() if k.endswith("_dropped"))
    assert rep["forbidden_recall"]["n"] + rep["overfilter_rate"]["n"] + dropped == 60  # template near-copies
    print({k: rep[k] for k in ("forbidden_recall", "overfilter_rate", "precision")})
    assert rep["forbidden_recall"]["value"] >= 0.8
    assert rep["overfilter_rate"]["value"] <= 0.1
    assert rep["precision"] >= 0.8
