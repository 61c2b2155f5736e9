"""Integrated-gradients attribution (map.ig_steps): the units' effects of a site add up to the exact effect of
ablating the whole site (IG's completeness), where attribution patching's first-order estimate does not."""

import copy

import pytest
import torch

from surgical.map.attribution import compute_scores
from surgical.map.data import batches, suite_examples
from surgical.map.hooks import SITES
from surgical.map.integrated import integrated_scores
from surgical.map.patching import ablation_edits, mean_loss
from surgical.models import decoder_layers, head_dim, make_tiny_model


@pytest.fixture
def data(world, world_suite):
    forget = suite_examples(world_suite, ("mul", "div"), 8, seed=0)
    retain = suite_examples(world_suite, ("add", "sub"), 8, seed=1)
    return {"forget": batches(world.tokenizer, forget, 4, 64), "retain": batches(world.tokenizer, retain, 4, 64)}


def _sharpen(model, scale: float = 3.0):
    """Scale the weights up so the tiny model is far from linear in its activations (a random init at small
    scale is nearly linear, where any estimate is complete)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(scale)
    return model


def _whole_site_effects(model, scores, data, which, kind):
    n_layers = len(decoder_layers(model))
    out = {}
    for site in SITES:
        for layer in range(n_layers):
            width = scores[f"{site}.attr_{which}"].shape[1]
            edits = ablation_edits(scores, {(site, layer): list(range(width))}, kind, head_dim(model))
            out[(site, layer)] = mean_loss(model, data[which], edits, "logodds") - scores.clean_loss[which]
    return out


def test_ig_effects_add_up_to_the_whole_site_ablation(family, world, data):
    model = _sharpen(make_tiny_model(family, len(world.tokenizer), seed=0)).eval()
    scores = compute_scores(model, data, fire_threshold=0.5, metric="logodds")
    atp = copy.deepcopy(scores.tensors)
    record = integrated_scores(model, scores, data, steps=24, metric="logodds")
    assert record["steps"] == 24 and record["prefix_replay"] == {"forget": True, "retain": True}
    err_ig, err_atp, scale = 0.0, 0.0, 0.0
    for which in ("forget", "retain"):
        for kind, suffix in (("mean", ""), ("zero", "_zero")):
            exact = _whole_site_effects(model, scores, data, which, kind)
            name = f"attr_{which}{suffix}"
            for (site, layer), value in exact.items():
                if kind == "zero" and site == "resid":
                    # the zero path of a whole residual stream ends in the normalisation's singularity at 0
                    # (x / rms(x)): steep near alpha = 1, beyond what a fixed midpoint rule resolves
                    continue
                ig_sum = float(scores[f"{site}.{name}"][layer].sum())
                atp_sum = float(atp[f"{site}.{name}"][layer].sum())
                assert torch.equal(scores[f"{site}.{name}_atp"], atp[f"{site}.{name}"])  # the old estimate is kept
                assert ig_sum == pytest.approx(value, rel=0.03, abs=0.02), (which, kind, site, layer)
                err_ig += abs(ig_sum - value)
                err_atp += abs(atp_sum - value)
                scale += abs(value)
    # the model is nonlinear enough that the first-order estimate is visibly off, and IG removes most of that
    assert err_atp > 0.1 * scale
    assert err_ig < 0.2 * err_atp
    # the ranking score is rebuilt from the integrated estimates
    assert torch.allclose(scores["mlp.score"], scores["mlp.attr_forget"] - scores["mlp.attr_retain"])


def test_ig_steps_zero_is_refused(world, data):
    model = make_tiny_model("llama", len(world.tokenizer), seed=0)
    scores = compute_scores(model, data, fire_threshold=0.5)
    with pytest.raises(ValueError, match="ig_steps"):
        integrated_scores(model, scores, data, steps=0)


def test_map_run_with_ig_steps_records_the_method_and_keeps_the_first_order_estimates(world, world_suite, tmp_path):
    from safetensors.torch import load_file

    from surgical.map.config import MapConfig
    from surgical.map.data import sample
    from surgical.map.run import run

    model = make_tiny_model("llama", len(world.tokenizer))
    forget = suite_examples(world_suite, ("mul", "div"), 12, seed=0)
    retain = suite_examples(world_suite, ("add", "sub"), 12, seed=1)
    cfg = MapConfig(n_forget=12, n_retain=12, batch_size=12, exact_top_n=2, validation_k=4, validation_k_sweep=[],
                    sae=False, threads=1, ig_steps=2)
    summary = run(cfg, model, world.tokenizer, forget, retain, tmp_path, None).summary
    assert summary["attribution"]["method"] == "integrated_gradients" and summary["attribution"]["steps"] == 2
    # 2 sets x 2 ablation kinds x 3 sites x 2 layers x 1 batch x 2 steps
    assert summary["attribution"]["forward_backward_passes"] == 48
    assert "integrated_gradients_s" in summary["timings_s"]
    tensors = load_file(str(tmp_path / "map.safetensors"))
    # the first-order estimates of the same data are kept beside the integrated ones, which differ from them
    data = {"forget": batches(world.tokenizer, sample(forget, 12, 0), 12, cfg.max_length),
            "retain": batches(world.tokenizer, sample(retain, 12, 1), 12, cfg.max_length)}
    atp = compute_scores(model, data, cfg.fire_threshold, metric=cfg.metric)
    assert torch.allclose(tensors["mlp.attr_forget_atp"], atp["mlp.attr_forget"], atol=1e-6)
    assert not torch.equal(tensors["mlp.attr_forget"], tensors["mlp.attr_forget_atp"])
    assert torch.allclose(tensors["mlp.score"], tensors["mlp.attr_forget"] - tensors["mlp.attr_retain"])
