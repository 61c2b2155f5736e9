"""The stage-2 classifier on real all-MiniLM-L6-v2 embeddings (loaded once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from surgical.curate.classifier import (
    ClassifierConfigError,
    EmbedderLoadError,
    MiniLMEmbedder,
    PolicyClassifier,
    _mean_pool,
)
from surgical.policy import ForbiddenDomain, Policy


def test_mean_pool_by_hand():
    import torch

    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert _mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_minilm_embeddings_are_unit_norm_and_order_independent(minilm):
    texts = ["a short one", "a much longer sentence about the weather in the mountains today", "mid length text"]
    x = minilm.encode(texts)
    assert x.shape == (3, 384)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    y = minilm.encode(texts[::-1])[::-1]  # length-sorted batching must not reorder the output
    assert np.allclose(x, y, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_missing_model_fails_loudly(tmp_path):
    with pytest.raises(EmbedderLoadError, match="cannot load"):
        MiniLMEmbedder(tmp_path)


def test_policy_without_exemplars_is_an_error(minilm):
    pol = Policy(forbidden=[ForbiddenDomain(name="x", keywords=["x"])])
    with pytest.raises(ClassifierConfigError, match=r"forbidden\.0\.exemplars"):
        PolicyClassifier(pol, minilm)


def test_demo_classifier_separates_held_out_world_problems(minilm, demo_policy, world):
    clf = PolicyClassifier(demo_policy, minilm)
    texts, labels = [], []
    for d in ("add", "sub", "mul", "div", "mixed"):
        for p in world.splits.test[d][:8]:
            texts.append(p.worked_text)
            labels.append(p.forbidden)
    probs = clf.predict_proba(texts)
    flagged = np.max(np.stack([probs[d.name] >= d.classifier_threshold for d in demo_policy.forbidden]), axis=0)
    labels = np.array(labels)
    assert flagged[labels].mean() >= 0.95  # recall on held-out forbidden problems
    assert flagged[~labels].mean() <= 0.1  # over-filtering on held-out allowed problems


def test_teacher_hidden_state_classifier(tmp_path, world_tokenizer, demo_policy):
    import torch
    from transformers import AutoModelForCausalLM

    from surgical.curate.classifier import TeacherEmbedder, make_embedder
    from surgical.models import tiny_config

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(world_tokenizer))).save_pretrained(tmp_path)
    world_tokenizer.save_pretrained(tmp_path)
    emb = make_embedder("teacher", str(tmp_path), layer=-1)
    assert isinstance(emb, TeacherEmbedder)
    x = emb.encode(["07+45:", "07*3: 7*3+0=21; so 21"])
    assert x.shape == (2, 32) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    clf = PolicyClassifier(demo_policy, emb)
    probs = clf.predict_proba(["12*3: 2*3+0=6; 1*3+0=3; so 36"])
    assert set(probs) == {"mul", "div", "mixed"} and all(0 <= p[0] <= 1 for p in probs.values())
    with pytest.raises(EmbedderLoadError, match="classifier_model"):
        make_embedder("teacher", "")
