"""Built-in validation: does ablating what the map found remove the forget skill and spare the retain skill?

The map's top-k forget units (by ``mlp.score``) are ablated, and, as the control, k random neurons drawn from
the same layers in the same numbers. Exact-match per domain is measured before and after; the specificity
ratio is the map's (forget drop / retain drop) over the control's (``stats.specificity_ratio``).
"Exact-match" in the field names is historical: the figure is the suite's own metric of each domain
(``SuiteEvaluator``: MC accuracy, or the QA answer probability / accuracy). The same is
done for SAE latents, clamped by zeroing and by negative scaling.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from ..models import head_dim
from .attribution import Scores
from .hooks import edit
from .patching import ablation_edits
from .stats import specificity_ratio

QA_METRICS = ("answer_prob", "accuracy")


class SuiteEvaluator:
    """The suite's own metric per domain, on ``split`` (the test split stands in where a domain has no such
    split), at most ``limit`` records per domain: MC accuracy (lm-eval ``acc``, as ``scoring.mc_hits``) where the
    domain has MC data; otherwise, on QA data, ``qa_metric``: ``answer_prob`` = the reference's per-token
    geometric-mean probability given the prompt (the record's ``target``, else its first answer; continuous, so
    a drop shows on free text and on a model that gets nothing exactly right) or ``accuracy`` = greedy
    generation scored by the domain's scorer (``scoring.qa_hits``). Every value is in [0, 1], higher = better.

    Called on a model it returns {domain: metric}, retain domains first. All MC domains are scored in one
    ``mc_predictions`` call and all ``answer_prob`` domains in one ``continuation_logprobs`` call (validation
    runs a dozen evaluations)."""

    def __init__(self, suite, tokenizer, forget_domains, retain_domains, split: str = "val", limit: int = 50,
                 qa_metric: str = "answer_prob", batch_size: int = 64, prefer: str = "mc"):
        from ..suite import SuiteError

        if qa_metric not in QA_METRICS:
            raise ValueError(f"qa_metric {qa_metric!r}; expected one of {QA_METRICS}")
        self.suite, self.tokenizer, self.split, self.limit = suite, tokenizer, split, limit
        self.qa_metric, self.batch_size = qa_metric, batch_size
        self.forget_domains, self.retain_domains = tuple(forget_domains), tuple(retain_domains)
        if not self.forget_domains or not self.retain_domains:
            raise SuiteError("map validation needs at least one forget and one retain domain")
        self.kind: dict[str, str] = {}
        self.records: dict[str, list[dict]] = {}
        self.splits: dict[str, str] = {}
        for d in self.domains:
            if d not in suite.domains:
                raise SuiteError(f"suite {suite.name!r} has no domain {d!r}")
            data = suite[d]
            # a confident teacher's MC barely moves when units are ablated; "qa" measures on the QA data where
            # a domain has both
            kind = "qa" if prefer == "qa" and data.qa else ("mc" if data.mc else "qa")
            recs = data.split_of(kind, split)[:limit]
            if not recs:
                raise SuiteError(f"suite {suite.name!r}: domain {d!r} has no {kind} records")
            self.kind[d], self.records[d] = kind, recs
            self.splits[d] = split if split in getattr(data, kind) else "test"
        self.n_per_domain = min(len(r) for r in self.records.values())

    @property
    def domains(self) -> tuple[str, ...]:
        return self.retain_domains + self.forget_domains

    @property
    def metric_names(self) -> dict[str, str]:
        return {d: "mc_acc" if self.kind[d] == "mc" else f"qa_{self.qa_metric}" for d in self.domains}

    def describe(self) -> dict:
        return {"metric": self.metric_names, "split": dict(self.splits),
                "n": {d: len(r) for d, r in self.records.items()}}

    def __call__(self, model) -> dict[str, float]:
        from ..scoring import continuation_logprobs, mc_predictions, qa_hits
        from ..suite import format_prompt

        out: dict[str, float] = {}
        mc = [d for d in self.domains if self.kind[d] == "mc"]
        if mc:  # one call for every MC domain: each choice carries its domain's delimiter (= mc_hits)
            flat = []
            for d in mc:
                data = self.suite[d]
                delim = data.spec.target_delimiter
                flat += [{"question": format_prompt(self.tokenizer, r["question"], data.chat),
                          "choices": [delim + c for c in r["choices"]], "gold": r["gold"]} for r in self.records[d]]
            preds = iter(mc_predictions(model, self.tokenizer, flat, batch_size=self.batch_size,
                                        target_delimiter=""))
            for d in mc:
                out[d] = sum(next(preds)["correct"] for _ in self.records[d]) / len(self.records[d])
        qa = [d for d in self.domains if self.kind[d] == "qa"]
        if qa and self.qa_metric == "accuracy":
            for d in qa:
                hits, _ = qa_hits(model, self.tokenizer, self.suite[d], self.records[d], batch_size=self.batch_size)
                out[d] = sum(hits) / len(hits)
        elif qa:
            pairs = []
            for d in qa:
                data = self.suite[d]
                pairs += [(format_prompt(self.tokenizer, r["prompt"], data.chat),
                           r.get("target") or data.spec.target_delimiter + r["answers"][0]) for r in self.records[d]]
            scores = iter(continuation_logprobs(model, self.tokenizer, pairs, batch_size=self.batch_size))
            for d in qa:
                probs = [math.exp(lp / n) if n else 0.0 for lp, n in (next(scores) for _ in self.records[d])]
                out[d] = sum(probs) / len(probs)
        return {d: out[d] for d in self.domains}


def records_suite(forget: dict[str, list], retain: dict[str, list]):
    """An in-memory suite of QA domains from prompt+completion examples ({domain: [Example]}): prompt -> the
    completion as ``target`` and answer (what ``SuiteEvaluator`` scores when the map runs on bare JSONL files)."""
    from ..suite import DomainData, DomainSpec, Suite, SuiteSpec

    specs, domains = [], {}
    for role, sets in (("forget", forget), ("retain", retain)):
        for d, exs in sets.items():
            spec = DomainSpec(name=d, role=role, qa="<records>", scorer="normalized", target_delimiter="")
            recs = [{"prompt": e.prompt, "answers": [e.completion], "target": e.completion} for e in exs]
            specs.append(spec)
            domains[d] = DomainData(spec, False, qa={"test": recs})
    return Suite(SuiteSpec(name="records", domains=specs), None, domains, {})


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
    """Per-domain metric before and after and its change (negative = worse), plus the mean drops."""
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
        "baseline_exact_match": baseline, "baseline": baseline,
        **({"metric": evaluator.describe()} if hasattr(evaluator, "describe") else {}),
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
