"""Exact patching replays the clean layer outputs before each edit: the losses must not change."""

import math

import pytest
import torch

from surgical.map.attribution import compute_scores
from surgical.map.data import batches, suite_examples
from surgical.map.patching import PrefixReplay, ablation_edits, exact_patching, mean_loss
from surgical.models import decoder_layers, head_dim, make_tiny_model


@pytest.fixture
def data(world, world_suite):
    forget = suite_examples(world_suite, ("mul", "div"), 12, seed=0)
    retain = suite_examples(world_suite, ("add", "sub"), 12, seed=1)
    return {"forget": batches(world.tokenizer, forget, 6, 64), "retain": batches(world.tokenizer, retain, 6, 64)}


def test_replayed_prefix_gives_the_same_loss(family, world, data):
    model = make_tiny_model(family, len(world.tokenizer), seed=0)
    scores = compute_scores(model, data, fire_threshold=0.5)
    n_layers = len(decoder_layers(model))
    prefix = PrefixReplay(model, data["forget"])
    assert prefix.nbytes > 0
    for layer in range(n_layers):
        edits = ablation_edits(scores, {("mlp", layer): [0, 3], ("heads", layer): [1]}, "mean", head_dim(model))
        full = mean_loss(model, data["forget"], edits)
        replayed = mean_loss(model, data["forget"], edits, prefix=prefix)
        assert replayed == pytest.approx(full, rel=1e-5, abs=1e-6), layer
    # after the block the layers compute again: a replay left behind would freeze the model's output
    assert "forward" not in vars(decoder_layers(model)[0])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in decoder_layers(model)[0].parameters():
            p.add_(torch.randn_like(p))
    assert abs(mean_loss(model, data["forget"]) - scores.clean_loss["forget"]) > 1e-5


def test_the_replay_is_not_a_no_op(world, data):
    """A replay recorded on other batches gives other losses: the cached outputs are really used."""
    model = make_tiny_model("llama", len(world.tokenizer), seed=0)
    scores = compute_scores(model, data, fire_threshold=0.5)
    edits = ablation_edits(scores, {("mlp", 1): [0]}, "mean", head_dim(model))
    wrong = PrefixReplay(model, data["retain"][::-1])
    try:
        other = mean_loss(model, data["forget"], edits, prefix=wrong)
    except RuntimeError:  # shapes differ: also proof that the cache is used
        return
    assert other != pytest.approx(mean_loss(model, data["forget"], edits), rel=1e-4)


def test_exact_patching_options(world, data):
    model = make_tiny_model("llama", len(world.tokenizer), seed=0)
    scores = compute_scores(model, data, fire_threshold=0.5)
    full = exact_patching(model, scores, data, top_n=2, prefix_cache_mb=0)
    fast = exact_patching(model, scores, data, top_n=2)
    assert fast["prefix_replay"] == {"forget": True, "retain": True}
    assert full["prefix_replay"] == {"forget": False, "retain": False}
    for a, b in zip(full["rows"], fast["rows"], strict=True):
        for key in ("exact_forget", "exact_retain", "exact_forget_zero", "exact_retain_zero"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)
    n_layers, n_heads = scores["heads.score"].shape
    lean = exact_patching(model, scores, data, top_n=2, heads_top_n=1, zero_ablation=False)
    heads = [r for r in lean["rows"] if r["kind"] == "head"]
    assert len(heads) == n_layers
    for r in heads:  # the head with the largest |forget estimate| in its layer
        assert r["unit"] == int(scores["heads.attr_forget"][r["layer"]].abs().argmax())
    assert all(math.isnan(r["exact_forget_zero"]) for r in lean["rows"])
    assert lean["spearman"]["units_forget_zero_ablation"] is None
    assert len(full["rows"]) == n_layers * (2 + n_heads + 1)


def test_the_memory_cap_stops_recording(world, data):
    """Over the cap the replay holds nothing and says so; exact patching then runs full forwards."""
    model = make_tiny_model("llama", len(world.tokenizer), seed=0)
    full = PrefixReplay(model, data["forget"])
    capped = PrefixReplay(model, data["forget"], max_bytes=full.nbytes / 2)
    assert full.complete and not capped.complete and capped.nbytes == 0
    scores = compute_scores(model, data, fire_threshold=0.5)
    tiny_cap = exact_patching(model, scores, data, top_n=1, prefix_cache_mb=full.nbytes / 2 / 2 ** 20)
    assert tiny_cap["prefix_replay"] == {"forget": False, "retain": False}
