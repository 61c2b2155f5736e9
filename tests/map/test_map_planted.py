"""Scores on tiny models where the answer is known: a planted neuron that fires only on forget tokens, and hooks
that read and write every family's units."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgical.map.attribution import compute_scores
from surgical.map.data import batches, suite_examples
from surgical.map.hooks import capture, edit, head_columns, set_columns
from surgical.map.patching import ablation_edits, exact_patching, mean_loss
from surgical.models import (
    attn_out_proj,
    decoder_layers,
    final_norm,
    head_dim,
    hidden_size,
    make_tiny_model,
    mlp_down_proj,
    mlp_width,
    num_heads,
)

PLANTED_LAYER, PLANTED_NEURON = 1, 13


def _set_input_row(module: nn.Module, j: int, vec: torch.Tensor) -> None:
    """Neuron j of a Linear (out, in) or GPT-2 Conv1D (in, out) reads ``vec``."""
    if isinstance(module, nn.Linear):
        module.weight[j] = vec
    else:
        module.weight[:, j] = vec
    if getattr(module, "bias", None) is not None:
        module.bias[j] = 0.0


def _set_output_col(module: nn.Module, j: int, vec: torch.Tensor) -> None:
    if isinstance(module, nn.Linear):
        module.weight[:, j] = vec
    else:
        module.weight[j, :] = vec


def _remove_direction_from_output(module: nn.Module, v: torch.Tensor) -> None:
    """Nothing the module writes into the residual stream has a component along ``v``."""
    if isinstance(module, nn.Linear):
        module.weight -= torch.outer(v, v @ module.weight)
    else:
        module.weight -= torch.outer(module.weight @ v, v)
    if getattr(module, "bias", None) is not None:
        module.bias -= (module.bias @ v) * v


@torch.no_grad()
def plant_forget_neuron(model, tokenizer, write_scale: float = 0.2):
    """Make MLP neuron PLANTED_NEURON of PLANTED_LAYER fire only on the '*' and '/' tokens (which occur only in
    mul/div text) and push the logits of the digits, which follow those tokens in worked mul/div solutions."""
    d = hidden_size(model)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(d, generator=gen)
    v = F.normalize(v - v.mean(), dim=0)  # zero-mean, so LayerNorm's centring keeps it
    emb = model.get_input_embeddings().weight
    emb -= torch.outer(emb @ v, v)  # no other token reads along v
    for layer in decoder_layers(model):  # and no layer writes along v: only '*' and '/' carry it
        _remove_direction_from_output(attn_out_proj(layer), v)
        _remove_direction_from_output(mlp_down_proj(layer), v)
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2's learned positions
    if wpe is not None:
        wpe.weight -= torch.outer(wpe.weight @ v, v)
    for ch in "*/":
        emb[tokenizer.convert_tokens_to_ids(ch)] += 2.0 * v
    out_emb = model.get_output_embeddings().weight
    digits = [tokenizer.convert_tokens_to_ids(str(i)) for i in range(10)]
    u = out_emb[digits].mean(0) - out_emb.mean(0)
    u = u - u.mean() - (u @ v) * v
    u = F.normalize(u, dim=0)
    mlp = decoder_layers(model)[PLANTED_LAYER].mlp
    for name in ("gate_proj", "up_proj", "c_fc", "dense_h_to_4h"):
        if hasattr(mlp, name):
            _set_input_row(getattr(mlp, name), PLANTED_NEURON, v)
    _set_output_col(mlp_down_proj(decoder_layers(model)[PLANTED_LAYER]), PLANTED_NEURON, write_scale * u)
    final_norm(model).weight *= 8.0  # a random init's logits are near-flat; let the planted write move them


@pytest.fixture
def planted_data(world, world_suite):
    forget = suite_examples(world_suite, ("mul", "div"), 24, seed=0)
    retain = suite_examples(world_suite, ("add", "sub"), 24, seed=1)
    return {"forget": batches(world.tokenizer, forget, 12, 128), "retain": batches(world.tokenizer, retain, 12, 128)}


def test_planted_forget_neuron_ranks_first(family, world, planted_data):
    model = make_tiny_model(family, len(world.tokenizer), seed=0)
    plant_forget_neuron(model, world.tokenizer)
    scores = compute_scores(model, planted_data, fire_threshold=0.5)
    n_layers, width = scores["mlp.score"].shape
    assert (n_layers, width) == (len(decoder_layers(model)), mlp_width(model))
    planted = PLANTED_LAYER * width + PLANTED_NEURON
    # the map's ranking (and the attribution estimate behind it) puts the planted neuron first
    for name in ("mlp.score", "mlp.attr_forget"):
        assert int(scores[name].reshape(-1).argmax()) == planted, name
    # it fires on forget tokens only, with the same activation each time, so its statistics are known by hand:
    # firing rate p on forget, 0 on retain, and Cohen's d = sqrt(2p / (1 - p)) (retain variance 0)
    p = float(scores["mlp.fire_rate_forget"][PLANTED_LAYER, PLANTED_NEURON])
    assert p > 0.02
    assert float(scores["mlp.fire_rate_retain"][PLANTED_LAYER, PLANTED_NEURON]) == 0.0
    assert float(scores["mlp.selectivity"][PLANTED_LAYER, PLANTED_NEURON]) == pytest.approx(
        (2 * p / (1 - p)) ** 0.5, rel=1e-3)
    assert abs(float(scores["mlp.attr_retain"][PLANTED_LAYER, PLANTED_NEURON])) < 1e-6
    # exact patching agrees: zero-ablating it raises the forget loss and leaves the retain loss alone
    edits = ablation_edits(scores, {("mlp", PLANTED_LAYER): [PLANTED_NEURON]}, "zero", head_dim(model))
    d_forget = mean_loss(model, planted_data["forget"], edits) - scores.clean_loss["forget"]
    d_retain = mean_loss(model, planted_data["retain"], edits) - scores.clean_loss["retain"]
    assert d_forget > 0.02 and abs(d_retain) < 1e-5
    exact = exact_patching(model, scores, planted_data, top_n=3)
    top = next(r for r in exact["rows"] if r["kind"] == "neuron" and r["layer"] == PLANTED_LAYER)
    assert top["unit"] == PLANTED_NEURON and top["est_forget"] > 0 and top["exact_forget"] > 0.02
    # the exactly patched neuron with the largest forget effect is the planted one
    neurons = [r for r in exact["rows"] if r["kind"] == "neuron"]
    assert max(neurons, key=lambda r: r["exact_forget"])["unit"] == PLANTED_NEURON


def test_a_random_model_has_no_such_neuron(world, planted_data):
    """The control: without planting, the same neuron is not singled out."""
    model = make_tiny_model("llama", len(world.tokenizer), seed=0)
    scores = compute_scores(model, planted_data, fire_threshold=0.5)
    width = scores["mlp.score"].shape[1]
    assert int(scores["mlp.score"].reshape(-1).argmax()) != PLANTED_LAYER * width + PLANTED_NEURON


def test_hooks_capture_and_identity_edit_every_family(family, world):
    model = make_tiny_model(family, len(world.tokenizer))
    ids = world.tokenizer(["12+34:", "41*75:"], return_tensors="pt")["input_ids"]
    clean = model(ids).logits
    sites = {"mlp": [0, 1], "heads": [0, 1], "resid": [0, 1]}
    with capture(model, sites) as acts:
        model(ids)
    assert acts[("mlp", 0)].shape == (2, ids.shape[1], mlp_width(model))
    assert acts[("heads", 1)].shape == (2, ids.shape[1], num_heads(model) * head_dim(model))
    assert acts[("resid", 1)].shape == (2, ids.shape[1], hidden_size(model))
    # the residual after layer 0 is HF's hidden_states[1] (the last entry is after the final norm, so not that one)
    assert torch.allclose(acts[("resid", 0)], model(ids, output_hidden_states=True).hidden_states[1], atol=1e-5)
    with edit(model, {("mlp", 0): lambda t: t}):
        assert torch.allclose(model(ids).logits, clean)
    # writing back the captured head outputs of head 0 changes nothing; zeroing every head changes the logits
    cols = head_columns([0], head_dim(model))
    with edit(model, {("heads", 0): set_columns(cols, acts[("heads", 0)][0, -1, cols])}):
        changed = model(ids).logits
    assert not torch.allclose(changed, clean)  # a constant patch over all positions is a real change
    with edit(model, {("heads", 0): set_columns(torch.arange(num_heads(model) * head_dim(model)), 0.0)}):
        assert not torch.allclose(model(ids).logits, clean)
    assert torch.allclose(model(ids).logits, clean)  # hooks are gone after the block


def test_exact_ranking_puts_the_planted_neuron_first_with_real_ablation_effects(world, planted_data):
    from surgical.map.patching import exact_neuron_ranking

    model = make_tiny_model("llama", len(world.tokenizer), seed=0)
    plant_forget_neuron(model, world.tokenizer)
    scores = compute_scores(model, planted_data, fire_threshold=0.5)
    ranking, rec = exact_neuron_ranking(model, scores, planted_data, candidates=4, retain_weight=2.0)
    n_layers, width = ranking.shape
    assert int(ranking.reshape(-1).argmax()) == PLANTED_LAYER * width + PLANTED_NEURON
    assert rec["n_patched"] == 4 * n_layers and int(torch.isfinite(ranking).sum()) == 4 * n_layers
    # every finite entry is the real mean-ablation effect, forget minus 2 x retain, of that neuron
    layer, unit = [int(i) for i in torch.nonzero(torch.isfinite(ranking))[-1]]
    edits = ablation_edits(scores, {("mlp", layer): [unit]}, "mean", head_dim(model))
    d_f = mean_loss(model, planted_data["forget"], edits) - scores.clean_loss["forget"]
    d_r = mean_loss(model, planted_data["retain"], edits) - scores.clean_loss["retain"]
    assert float(ranking[layer, unit]) == pytest.approx(d_f - 2.0 * d_r, abs=1e-5)
    # the candidates are the attribution score's top 4 of each layer
    for lay in range(n_layers):
        top = set(scores["mlp.score"][lay].argsort(descending=True)[:4].tolist())
        assert set(torch.nonzero(torch.isfinite(ranking[lay])).flatten().tolist()) == top
