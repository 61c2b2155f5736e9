"""Built-in validation: does ablating what the map found remove the forget skill and spare the retain skill?

The map's top-k forget units (by ``mlp.score``) are ablated, and, as the control, k random neurons drawn from
the same layers in the same numbers. Exact-match per domain is measured before and after; the specificity
ratio is the map's (forget drop / retain drop) over the control's (``stats.specificity_ratio``). The same is
done for SAE latents, clamped by zeroing and by negative scaling.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ..models import head_dim
from .attribution import Scores
from .hooks import edit
from .patching import ablation_edits
from .stats import specificity_ratio


class WorldEvaluator:
    """Exact-match per domain on the world's val (or test) split, via ``world.teacher.evaluate_world``."""

    def __init__(self, wb, tokenizer, split: str, limit: int, forget_domains=("mul", "div"),
                 retain_domains=("add", "sub")):
        self.wb, self.tokenizer, self.split, self.limit = wb, tokenizer, split, limit
        self.forget_domains, self.retain_domains = tuple(forget_domains), tuple(retain_domains)
        self.n_per_domain = min([limit] + [len(wb.exact_match_sets[split][d]) for d in self.domains])

    @property
    def domains(self) -> tuple[str, ...]:
        return self.retain_domains + self.forget_domains

    def __call__(self, model) -> dict[str, float]:
        # The same scoring as ``world.teacher.evaluate_world(..., mc=False)`` (``exact_match_hits``), but with every
        # domain in one call: on a CPU the per-step overhead of ``generate`` dominates, and the validation runs a
        # dozen evaluations.
        from ..world.teacher import exact_match_hits, max_worked_tokens

        recs = {d: self.wb.exact_match_sets[self.split][d][:self.limit] for d in self.domains}
        flat = [r for d in self.domains for r in recs[d]]
        budget = max(max_worked_tokens(self.wb, d) for d in self.domains)
        hits = iter(exact_match_hits(model, self.tokenizer, flat, budget, batch_size=256)[0])
        return {d: sum(next(hits) for _ in recs[d]) / len(recs[d]) for d in self.domains}


class RecordEvaluator:
    """Exact-match of greedy completions against reference completions, per domain, for any model and any
    prompt+completion records (whitespace-normalised comparison; generation stops at EOS)."""

    def __init__(self, tokenizer, forget: dict[str, list], retain: dict[str, list], limit: int):
        self.tokenizer = tokenizer
        self.sets = {d: v[:limit] for d, v in {**retain, **forget}.items()}
        self.forget_domains, self.retain_domains = tuple(forget), tuple(retain)
        self.n_per_domain = min(len(v) for v in self.sets.values())

    def __call__(self, model) -> dict[str, float]:
        from ..scoring import greedy_generate

        out = {}
        for d, exs in self.sets.items():
            budget = max(len(self.tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in exs) + 2
            gens = greedy_generate(model, self.tokenizer, [e.prompt for e in exs], max_new_tokens=budget)
            out[d] = sum(" ".join(g.split()) == " ".join(e.completion.split()) for g, e in zip(gens, exs,
                                                                                              strict=True)) / len(exs)
        return out


def top_units(score: torch.Tensor, k: int) -> dict[int, list[int]]:
    """The k highest-scoring units over all layers of a (layers, units) score table, grouped by layer."""
    flat = score.reshape(-1).argsort(descending=True)[:k]
    out: dict[int, list[int]] = {}
    for i in flat.tolist():
        out.setdefault(i // score.shape[1], []).append(i % score.shape[1])
    return out


def random_units_like(selection: dict[int, list[int]], width: int, seed: int) -> dict[int, list[int]]:
    """As many random units per layer as ``selection`` has, none of them in ``selection``."""
    rng = random.Random(seed)
    out = {}
    for layer, units in selection.items():
        pool = sorted(set(range(width)) - set(units))
        out[layer] = rng.sample(pool, min(len(units), len(pool)))
    return out


def compare(before: dict[str, float], after: dict[str, float], forget_domains, retain_domains) -> dict:
    """Per-domain exact-match before and after and its change (negative = worse), plus the mean drops."""
    per_domain = {d: {"before": before[d], "after": after[d], "delta_exact_match": after[d] - before[d]}
                  for d in before}
    return {
        "per_domain": per_domain,
        "delta_exact_match": {d: v["delta_exact_match"] for d, v in per_domain.items()},
        "forget_drop": 0.0 - sum(per_domain[d]["delta_exact_match"] for d in forget_domains) / len(forget_domains),
        "retain_drop": 0.0 - sum(per_domain[d]["delta_exact_match"] for d in retain_domains) / len(retain_domains),
    }


def _paired(model, evaluator, baseline: dict, map_edits: dict, rand_edits: dict) -> dict:
    with edit(model, map_edits):
        map_res = compare(baseline, evaluator(model), evaluator.forget_domains, evaluator.retain_domains)
    with edit(model, rand_edits):
        rand_res = compare(baseline, evaluator(model), evaluator.forget_domains, evaluator.retain_domains)
    floor = 1.0 / max(evaluator.n_per_domain, 1)
    ratio = specificity_ratio(map_res["forget_drop"], map_res["retain_drop"], rand_res["forget_drop"],
                              rand_res["retain_drop"], floor)
    return {"map_ablation": map_res, "random_ablation": rand_res, "specificity_ratio": ratio}


def validate_neurons(model, scores: Scores, score: torch.Tensor, evaluator, k: int, sweep: list[int], ablation: str,
                     seed: int, baseline: dict, progress: Callable[[], None] | None = None) -> dict:
    """Ablate the top-k MLP neurons by ``score`` (layers, neurons) vs k random ones from the same layers, for k and
    each sweep value."""
    device = next(model.parameters()).device
    hd = head_dim(model)
    results = {}
    for kk in sorted({k, *sweep}):
        chosen = top_units(score, kk)
        control = random_units_like(chosen, score.shape[1], seed + kk)
        res = _paired(model, evaluator, baseline,
                      ablation_edits(scores, {("mlp", layer): u for layer, u in chosen.items()}, ablation, hd, device),
                      ablation_edits(scores, {("mlp", layer): u for layer, u in control.items()}, ablation, hd,
                                     device))
        res["units_per_layer"] = {str(layer): len(u) for layer, u in sorted(chosen.items())}
        results[kk] = res
        if progress:
            progress()
    head = results[k]
    return {
        "unit": "mlp_neuron", "k": k, "ablation": ablation, "n_per_domain": evaluator.n_per_domain,
        "forget_domains": list(evaluator.forget_domains), "retain_domains": list(evaluator.retain_domains),
        "baseline_exact_match": baseline,
        "map_ablation": head["map_ablation"], "random_ablation": head["random_ablation"],
        "specificity_ratio": head["specificity_ratio"], "units_per_layer": head["units_per_layer"],
        "sweep": [{"k": kk, "forget_drop_map": r["map_ablation"]["forget_drop"],
                   "retain_drop_map": r["map_ablation"]["retain_drop"],
                   "forget_drop_random": r["random_ablation"]["forget_drop"],
                   "retain_drop_random": r["random_ablation"]["retain_drop"],
                   "specificity_ratio": r["specificity_ratio"]} for kk, r in sorted(results.items())],
    }


def validate_latents(model, sae, layer: int, selectivity: torch.Tensor, alive: torch.Tensor, evaluator, k: int,
                     negative_scale: float, seed: int, baseline: dict) -> dict:
    """Clamp the SAE's top-k forget latents (zeroing, and negative scaling) vs k random live latents."""
    from .sae import clamp_edit

    order = [int(i) for i in selectivity.argsort(descending=True) if alive[i]]
    chosen = order[:k]
    pool = sorted(set(int(i) for i in torch.nonzero(alive).flatten()) - set(chosen))
    control = random.Random(seed).sample(pool, min(len(chosen), len(pool)))
    out = {"layer": layer, "k": len(chosen), "latents": chosen, "random_latents": control}
    for name, scale in (("zero", 0.0), ("negative", negative_scale)):
        res = _paired(model, evaluator, baseline, {("resid", layer): clamp_edit(sae, chosen, scale)},
                      {("resid", layer): clamp_edit(sae, control, scale)})
        out[name] = {"scale": scale, **res}
    return out
