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
    for steps in (0, {"mlp": 0, "heads": 0, "resid": 0}, {"mlp": 1, "heads": 1}, {"mlp": 1, "heads": 1, "resid": -1}):
        with pytest.raises(ValueError, match="ig_steps"):
            integrated_scores(model, scores, data, steps=steps)


def test_map_config_sites_are_the_hooked_sites():
    from surgical.map.config import IG_SITES

    assert IG_SITES == SITES


def test_ig_steps_per_site_integrates_each_site_with_its_own_steps(world, data):
    """{site: N} gives each site the estimate that a uniform run with that N gives it; a site at 0 keeps its
    attribution-patching estimate untouched (and gets no _atp copy, since nothing replaced it)."""
    model = _sharpen(make_tiny_model("llama", len(world.tokenizer), seed=0)).eval()
    fresh = lambda: compute_scores(model, data, fire_threshold=0.5, metric="logodds")  # noqa: E731
    atp = fresh()
    uniform = {n: fresh() for n in (1, 3)}
    for n, scores in uniform.items():
        integrated_scores(model, scores, data, steps=n, metric="logodds")
    mixed = fresh()
    record = integrated_scores(model, mixed, data, steps={"mlp": 1, "heads": 3, "resid": 0}, metric="logodds")
    assert record["steps"] == {"mlp": 1, "heads": 3, "resid": 0}
    assert record["attribution_patching_sites"] == ["resid"]
    # 2 sets x 2 ablation kinds x 2 layers x 1 batch each (4 sequences per batch, 8 per set: 2 batches) x steps
    n_batches = len(data["forget"])
    assert record["forward_backward_passes"] == 2 * 2 * 2 * n_batches * (1 + 3)
    for name in ("attr_forget", "attr_retain", "attr_forget_zero", "attr_retain_zero", "score"):
        assert torch.allclose(mixed[f"mlp.{name}"], uniform[1][f"mlp.{name}"], atol=1e-6)
        assert torch.allclose(mixed[f"heads.{name}"], uniform[3][f"heads.{name}"], atol=1e-6)
        assert torch.equal(mixed[f"resid.{name}"], atp[f"resid.{name}"])
    assert "resid.attr_forget_atp" not in mixed.tensors and "heads.attr_forget_atp" in mixed.tensors
    # the two step counts do give the heads different estimates (else this test could not tell them apart)
    assert not torch.allclose(uniform[1]["heads.attr_forget"], uniform[3]["heads.attr_forget"], atol=1e-4)


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


def test_map_run_with_ig_steps_per_site_integrates_only_the_named_sites(world, world_suite, tmp_path):
    from safetensors.torch import load_file

    from surgical.map.config import MapConfig
    from surgical.map.run import run

    model = make_tiny_model("llama", len(world.tokenizer))
    forget = suite_examples(world_suite, ("mul", "div"), 12, seed=0)
    retain = suite_examples(world_suite, ("add", "sub"), 12, seed=1)
    cfg = MapConfig(n_forget=12, n_retain=12, batch_size=12, exact_top_n=2, validation_k=4, validation_k_sweep=[],
                    sae=False, threads=1, ig_steps={"mlp": 0, "heads": 2, "resid": 0})
    summary = run(cfg, model, world.tokenizer, forget, retain, tmp_path, None).summary
    record = summary["attribution"]
    assert record["method"] == "integrated_gradients" and record["steps"] == {"mlp": 0, "heads": 2, "resid": 0}
    assert record["attribution_patching_sites"] == ["mlp", "resid"]
    # 2 sets x 2 ablation kinds x 1 site x 2 layers x 1 batch x 2 steps
    assert record["forward_backward_passes"] == 16
    tensors = load_file(str(tmp_path / "map.safetensors"))
    assert "heads.attr_forget_atp" in tensors and "mlp.attr_forget_atp" not in tensors
