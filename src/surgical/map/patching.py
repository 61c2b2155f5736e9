"""Exact activation patching: ablate a unit for real and measure the forget and retain loss.

For the top-N MLP neurons per layer (by |estimated forget effect|), every attention head and every whole
layer (all its MLP neurons and heads at once), two real ablations: mean-ablation (the unit set to its mean
activation on retain data, the patch the attribution estimates) and zero-ablation. The Spearman correlation
between the attribution estimate and the exact effect says how far the linear estimate can be trusted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models import head_dim
from .attribution import Scores
from .hooks import edit, head_columns, set_columns
from .stats import spearman, token_damage_sum


@torch.no_grad()
def mean_loss(model, batches: list[dict], edits: dict | None = None, metric: str = "loss") -> float:
    """Cross-entropy (or another ``stats.token_damage_sum`` metric) per scored token over ``batches`` with
    ``edits`` applied (nats)."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with edit(model, edits or {}):
        for batch in batches:
            b = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss, count = token_damage_sum(logits, b["labels"], metric)
            total, n = total + float(loss), n + count
    return total / max(n, 1)


def ablation_edits(scores: Scores, units: dict[tuple[str, int], torch.Tensor], kind: str, hd: int,
                   device="cpu") -> dict:
    """Edits that ablate ``units`` ({(site, layer): unit indices}); heads are given as head indices."""
    edits = {}
    for (site, layer), idx in units.items():
        idx = torch.as_tensor(idx, dtype=torch.long)
        cols = head_columns(idx, hd) if site == "heads" else idx
        value = scores.retain_mean(site, layer)[cols].to(device) if kind == "mean" else 0.0
        edits[(site, layer)] = set_columns(cols.to(device), value)
    return edits


def patch_targets(scores: Scores, top_n: int) -> list[dict]:
    """The units patched for real: top-N neurons per layer by |forget estimate|, every head, every layer."""
    targets = []
    attr = scores["mlp.attr_forget"]
    for layer in range(attr.shape[0]):
        for u in attr[layer].abs().argsort(descending=True)[:top_n].tolist():
            targets.append({"kind": "neuron", "layer": layer, "unit": u, "units": {("mlp", layer): [u]}})
    heads = scores["heads.attr_forget"]
    for layer in range(heads.shape[0]):
        for h in range(heads.shape[1]):
            targets.append({"kind": "head", "layer": layer, "unit": h, "units": {("heads", layer): [h]}})
        targets.append({"kind": "layer", "layer": layer, "unit": -1, "units": {
            ("mlp", layer): list(range(attr.shape[1])), ("heads", layer): list(range(heads.shape[1]))}})
    return targets


def _estimate(scores: Scores, target: dict, which: str, suffix: str) -> float:
    total = 0.0
    for (site, layer), idx in target["units"].items():
        total += float(scores[f"{site}.attr_{which}{suffix}"][layer, idx].sum())
    return total


def exact_patching(model, scores: Scores, batches: dict[str, list[dict]], top_n: int,
                   progress: Callable[[], None] | None = None, metric: str = "loss") -> dict:
    """Exact effects of the patch targets and the estimate-vs-exact rank correlations."""
    device = next(model.parameters()).device
    hd = head_dim(model)
    rows = []
    for target in patch_targets(scores, top_n):
        row = {k: target[k] for k in ("kind", "layer", "unit")}
        for kind, suffix in (("mean", ""), ("zero", "_zero")):
            edits = ablation_edits(scores, target["units"], kind, hd, device)
            for which in ("forget", "retain"):
                row[f"est_{which}{suffix}"] = _estimate(scores, target, which, suffix)
                row[f"exact_{which}{suffix}"] = mean_loss(model, batches[which], edits, metric) - \
                    scores.clean_loss[which]
        rows.append(row)
        if progress:
            progress()

    def rho(kinds: tuple[str, ...], which: str, suffix: str = "") -> float:
        sel = [r for r in rows if r["kind"] in kinds]
        return spearman([r[f"est_{which}{suffix}"] for r in sel], [r[f"exact_{which}{suffix}"] for r in sel])

    correlations = {
        "units_forget": rho(("neuron", "head"), "forget"),
        "units_retain": rho(("neuron", "head"), "retain"),
        "neurons_forget": rho(("neuron",), "forget"),
        "neurons_retain": rho(("neuron",), "retain"),
        "heads_forget": rho(("head",), "forget"),
        "heads_retain": rho(("head",), "retain"),
        "layers_forget": rho(("layer",), "forget"),
        "layers_retain": rho(("layer",), "retain"),
        "units_forget_zero_ablation": rho(("neuron", "head"), "forget", "_zero"),
        "units_retain_zero_ablation": rho(("neuron", "head"), "retain", "_zero"),
    }
    return {"rows": rows, "spearman": correlations}
