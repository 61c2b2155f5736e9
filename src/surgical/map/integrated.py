"""Integrated-gradients attribution: every unit's ablation effect, integrated along a path instead of read off the
clean model's gradient.

Attribution patching (``attribution.compute_scores``) estimates a unit's ablation effect as dM/da * (patch - a)
at the clean activations. On a small, saturated model that first-order estimate ranks heads and whole layers badly
(measured on the demo teacher: Spearman vs exact patching 0.24 for heads, -0.2 for layers). Integrated gradients
(Sundararajan et al. 2017) as used for circuit discovery (Marks et al. 2024, "Sparse Feature Circuits"; Hanna et
al. 2024, EAP-IG) average the gradient along the straight path that moves one site of one layer, all its columns
at once, from the clean activations to the patch: for unit i of site s at layer L,

    effect_i ~= sum over positions of (patch_i - a_i) * (1/m) * sum_k dM/da_i at a + alpha_k (patch - a),

with alpha_k = (k + 1/2) / m (the midpoint rule; m = ``steps``). The effects of a site's units then add up to the
effect of ablating the whole site (IG's completeness, up to the quadrature error), which is what makes whole-layer
estimates meaningful. Cost: ``steps`` forward and backward passes per (site, layer, ablation kind) and batch,
against one pass per batch for attribution patching; the layers before the edited one are replayed from a clean
pass (``patching.PrefixReplay``) when they fit in memory. No library computes this on an HF model's hooked sites
(captum's LayerIntegratedGradients integrates a module's output for one target, not each unit's mean-ablation
effect on a token metric), hence the hand-written loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch

from ..models import decoder_layers, num_heads
from .attribution import SETS, Scores
from .hooks import SITES, edit
from .patching import PrefixReplay
from .stats import group_sum, token_damage_sum, unit_score


def _site_effect(model, batch: dict, site: str, layer: int, patch: torch.Tensor | float, steps: int, metric: str,
                 replay: PrefixReplay | None, batch_index: int) -> tuple[torch.Tensor, int]:
    """Summed IG effect of every column of (site, layer) on one batch (metric units, summed over scored tokens),
    and the batch's scored-token count."""
    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    total = None
    count = 0
    for k in range(steps):
        alpha = (k + 0.5) / steps
        held: dict[str, torch.Tensor] = {}

        def move(t: torch.Tensor, alpha=alpha, held=held) -> torch.Tensor:
            clean = t.detach()
            delta = (patch.to(clean.dtype) - clean) if isinstance(patch, torch.Tensor) else (patch - clean)
            x = (clean + alpha * delta).requires_grad_(True)
            held["x"], held["delta"] = x, delta
            return x

        ctx = replay.replay(batch_index, layer) if replay is not None else contextlib.nullcontext()
        with torch.enable_grad(), ctx, edit(model, {(site, layer): move}):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            loss, count = token_damage_sum(logits, b["labels"], metric)
            del logits
            (grad,) = torch.autograd.grad(loss, [held["x"]], allow_unused=True)
        if grad is None:  # no scored token depends on this site
            continue
        effect = (grad * held["delta"]).reshape(-1, grad.shape[-1]).sum(0).detach().cpu() / steps
        total = effect if total is None else total + effect
    return total, count


def integrated_scores(model, scores: Scores, batches: dict[str, list[dict]], steps: int | Mapping[str, int],
                      metric: str = "loss", prefix_cache_mb: float = 1024,
                      progress: Callable[[], None] | None = None) -> dict:
    """Replace the attribution-patching estimates in ``scores`` (``<site>.attr_{forget,retain}[_zero]``, and the
    ``<site>.score`` built from them) by integrated-gradients ones, keeping the first-order ones as
    ``<site>.attr_..._atp``. ``steps`` is one count for every site, or one per site (``{"mlp": 1, "heads": 4,
    "resid": 1}``), where 0 keeps that site's attribution-patching estimate. Returns a record for map.json
    (steps, passes, whether the prefix was replayed)."""
    per_site = _steps_per_site(steps)
    n_layers = len(decoder_layers(model))
    heads = num_heads(model)
    device = next(model.parameters()).device
    tick = progress or (lambda: None)
    passes = 0
    replayed = {}
    for which in SETS:
        replay = PrefixReplay(model, batches[which], prefix_cache_mb * 2 ** 20) if prefix_cache_mb > 0 else None
        replay = replay if replay is not None and replay.complete else None
        replayed[which] = replay is not None
        for kind, suffix in (("mean", ""), ("zero", "_zero")):
            for site in SITES:
                if not per_site[site]:
                    continue
                name = f"{site}.attr_{which}{suffix}"
                rows = []
                for layer in range(n_layers):
                    patch = scores.retain_mean(site, layer).to(device) if kind == "mean" else 0.0
                    total, n = None, 0
                    for i, batch in enumerate(batches[which]):
                        effect, count = _site_effect(model, batch, site, layer, patch, per_site[site], metric,
                                                     replay, i)
                        passes += per_site[site]
                        n += count
                        if effect is not None:
                            total = effect if total is None else total + effect
                        tick()
                    width = scores[name].shape[1]
                    if total is None:
                        row = torch.zeros(width)
                    else:
                        row = group_sum(total, heads) if site == "heads" else total
                    rows.append(row.float() / max(n, 1))
                scores.tensors[f"{name}_atp"] = scores.tensors[name]
                scores.tensors[name] = torch.stack(rows)
    for site in SITES:
        scores.tensors[f"{site}.score"] = unit_score(scores[f"{site}.attr_forget"], scores[f"{site}.attr_retain"])
    uniform = len(set(per_site.values())) == 1
    return {"method": "integrated_gradients", "steps": per_site["mlp"] if uniform else per_site, "rule": "midpoint",
            "path": "one (site, layer) at a time, all its columns from clean to the patch",
            "attribution_patching_sites": [s for s in SITES if not per_site[s]],
            "forward_backward_passes": passes, "prefix_replay": replayed}


def _steps_per_site(steps: int | Mapping[str, int]) -> dict[str, int]:
    per_site = dict(steps) if isinstance(steps, Mapping) else dict.fromkeys(SITES, steps)
    if set(per_site) != set(SITES) or any(n < 0 for n in per_site.values()) or not any(per_site.values()):
        raise ValueError(f"map.ig_steps: {steps}; expected N >= 1, or {{site: N >= 0}} for each of "
                         f"{', '.join(SITES)} with one N >= 1 (0 everywhere means attribution patching, no IG)")
    return per_site


def n_ig_ticks(batches: dict[str, list[dict]], n_layers: int, steps: int | Mapping[str, int] = 1) -> int:
    """Progress ticks of ``integrated_scores``: one per (set, ablation kind, integrated site, layer, batch)."""
    n_sites = sum(1 for n in _steps_per_site(steps).values() if n)
    return sum(len(v) for v in batches.values()) * 2 * n_sites * n_layers
