"""Activation statistics and attribution patching for every unit, in two sweeps over the data.

Sweep 1 (no gradients) gathers per-unit moments on forget and retain tokens, which give the selectivity
scores, the firing thresholds and the retain means used as the mean-ablation patch. Sweep 2 runs one
forward and one backward pass per batch and turns dL/da into every unit's estimated effect on the forget
and on the retain loss (``stats.attribution_effect``), for mean-ablation and for zero-ablation at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..models import decoder_layers, num_heads
from .data import scored_positions
from .hooks import SITES, stream
from .stats import (
    Moments,
    attribution_effect,
    fire_rate,
    group_sum,
    standardized_difference,
    token_damage_sum,
    unit_score,
)

SETS = ("forget", "retain")


@dataclass
class Scores:
    """Every score tensor of the map, named ``<site>.<score>``, with shape (layers, units of the site)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    clean_loss: dict[str, float] = field(default_factory=dict)  # set -> the metric per scored token (clean model)
    n_tokens: dict[str, int] = field(default_factory=dict)  # set -> scored tokens

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def retain_mean(self, site: str, layer: int) -> torch.Tensor:
        """Per-column mean activation on retain data (all positions): the mean-ablation patch."""
        return self.tensors[f"{site}.retain_mean_all"][layer]


def _sites(model) -> dict[str, list[int]]:
    layers = list(range(len(decoder_layers(model))))
    return {site: layers for site in SITES}


def _rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return t.detach()[mask].float()


def _head_norms(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads).norm(dim=-1)


def compute_scores(model, batches: dict[str, list[dict]], fire_threshold: float,
                   progress: Callable[[], None] | None = None, metric: str = "loss") -> Scores:
    """Statistics and attribution scores of every MLP neuron, head and residual dimension of ``model``.

    ``batches`` maps "forget" and "retain" to lists of collated batches (input_ids, attention_mask, labels).
    ``metric`` is what the attribution differentiates (``stats.token_damage_sum``: "loss" or "logodds").
    """
    sites = _sites(model)
    n_layers = len(sites["mlp"])
    heads = num_heads(model)
    device = next(model.parameters()).device
    tick = progress or (lambda: None)

    # ---- sweep 1: moments on scored positions (selectivity, thresholds) and retain means over all positions
    mom: dict[tuple[str, str, int], Moments] = {}
    retain_all: dict[tuple[str, int], Moments] = {}

    def moments(key, width):
        if key not in mom:
            mom[key] = Moments(width)
        return mom[key]

    with torch.no_grad():
        for set_name in SETS:
            for batch in batches[set_name]:
                b = {k: v.to(device) for k, v in batch.items()}
                scored = scored_positions(b["labels"])
                present = b["attention_mask"].bool()

                def reduce(key, t, set_name=set_name, scored=scored, present=present):
                    # each site is reduced to moments as the forward pass reaches it, then dropped
                    site, layer = key
                    moments((set_name, site, layer), t.shape[-1]).update(_rows(t, scored))
                    if site == "heads":
                        moments((set_name, "heads_norm", layer), heads).update(_rows(_head_norms(t, heads), scored))
                    if set_name == "retain":
                        if key not in retain_all:
                            retain_all[key] = Moments(t.shape[-1])
                        retain_all[key].update(_rows(t, present))

                with stream(model, sites, reduce):
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                tick()

    out = Scores()
    stat_site = {"mlp": "mlp", "heads": "heads_norm", "resid": "resid"}
    thresholds = {}
    for site in SITES:
        ss = stat_site[site]
        per_layer = []
        for layer in range(n_layers):
            f, r = mom[("forget", ss, layer)], mom[("retain", ss, layer)]
            per_layer.append({
                "forget_mean": f.mean, "retain_mean": r.mean, "forget_std": f.var.sqrt(), "retain_std": r.var.sqrt(),
                "selectivity": standardized_difference(f.mean, f.var, r.mean, r.var),
            })
            pooled = Moments(f.sum.shape[0])
            pooled.n, pooled.sumsq = f.n + r.n, f.sumsq + r.sumsq
            thresholds[(site, layer)] = (fire_threshold * pooled.rms).float().to(device)
        for name in per_layer[0]:
            out.tensors[f"{site}.{name}"] = torch.stack([row[name] for row in per_layer]).float()
        out.tensors[f"{site}.retain_mean_all"] = torch.stack(
            [retain_all[(site, layer)].mean for layer in range(n_layers)]).float()

    # ---- sweep 2: one forward + backward per batch -> attribution for every unit, and firing rates.
    # Memory: no site's gradient is materialised next to another's. Each site's activation gets a tensor hook that
    # turns dM/da into the unit effects (and frees the activation) the moment backward reaches that site, so the
    # peak is the model's own graph plus one site's gradient, not every site's gradients at once; the firing
    # rates are counted in the forward hook.
    attr = {(s, k, site): None for s in SETS for k in ("mean", "zero") for site in SITES}
    fires = {(s, site, layer): None for s in SETS for site in SITES for layer in range(n_layers)}
    patches = {(site, layer): out.retain_mean(site, layer).to(device) for site in SITES for layer in range(n_layers)}
    # Only activation gradients are asked for: backward runs to the embedding output, made to require grad so that
    # this works on a model whose parameters are frozen too.
    emb: dict[str, torch.Tensor] = {}

    def _emb_hook(_m, _a, output):
        output = output if output.requires_grad else output.detach().requires_grad_(True)
        emb["x"] = output
        return output

    grad_hook = model.get_input_embeddings().register_forward_hook(_emb_hook)
    for set_name in SETS:
        total_loss, total_n = 0.0, 0
        sums = {(k, site): torch.zeros(n_layers, patches[(site, 0)].shape[0] if site != "heads" else heads)
                for k in ("mean", "zero") for site in SITES}
        for batch in batches[set_name]:
            b = {k: v.to(device) for k, v in batch.items()}
            scored = scored_positions(b["labels"])
            held: dict[tuple[str, int], torch.Tensor] = {}

            def on_grad(g, key, sums=sums, held=held):
                site, layer = key
                a = held.pop(key)
                g = g.detach()
                for kind, patch in (("mean", patches[key]), ("zero", 0.0)):
                    effect = attribution_effect(g, a, patch)
                    if site == "heads":
                        effect = group_sum(effect, heads)
                    sums[(kind, site)][layer] += effect.cpu()

            def on_act(key, t, set_name=set_name, scored=scored, held=held):
                a = t.detach()
                x = _head_norms(a, heads) if key[0] == "heads" else a
                c = fire_rate(x[scored], thresholds[key]).cpu()
                fkey = (set_name, *key)
                fires[fkey] = c if fires[fkey] is None else fires[fkey] + c
                if t.requires_grad:  # a site no scored token depends on gets no gradient: its effect stays 0
                    held[key] = a
                    t.register_hook(lambda g, key=key, held=held: on_grad(g, key, held=held))

            with torch.enable_grad(), stream(model, sites, on_act):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                loss_sum, n = token_damage_sum(logits, b["labels"], metric)
                del logits
                torch.autograd.grad(loss_sum, [emb.pop("x")], allow_unused=True)
            held.clear()
            total_loss += float(loss_sum.detach())
            total_n += n
            tick()
        out.clean_loss[set_name] = total_loss / max(total_n, 1)
        out.n_tokens[set_name] = total_n
        for (kind, site), s in sums.items():
            attr[(set_name, kind, site)] = s / max(total_n, 1)

    grad_hook.remove()
    for site in SITES:
        for kind in ("mean", "zero"):
            suffix = "" if kind == "mean" else "_zero"
            out.tensors[f"{site}.attr_forget{suffix}"] = attr[("forget", kind, site)].float()
            out.tensors[f"{site}.attr_retain{suffix}"] = attr[("retain", kind, site)].float()
        n_f = mom[("forget", "mlp", 0)].n
        n_r = mom[("retain", "mlp", 0)].n
        rate = {s: torch.stack([fires[(s, site, layer)] for layer in range(n_layers)]).float() for s in SETS}
        out.tensors[f"{site}.fire_rate_forget"] = rate["forget"] / max(n_f, 1)
        out.tensors[f"{site}.fire_rate_retain"] = rate["retain"] / max(n_r, 1)
        out.tensors[f"{site}.fire_rate_diff"] = out.tensors[f"{site}.fire_rate_forget"] - \
            out.tensors[f"{site}.fire_rate_retain"]
        out.tensors[f"{site}.score"] = unit_score(out.tensors[f"{site}.attr_forget"], out.tensors[f"{site}.attr_retain"])
    return out
