"""Exact activation patching: ablate a unit for real and measure the forget and retain loss.

For the top-N MLP neurons per layer (by |estimated forget effect|), the top heads per layer (every head by
default) and every whole layer (all its MLP neurons and heads at once), real ablations: mean-ablation (the
unit set to its mean activation on retain data, the patch the attribution estimates) and, unless turned off,
zero-ablation. The Spearman correlation between the attribution estimate and the exact effect says how far
the linear estimate can be trusted.

An ablation at layer L cannot change what layers 0..L-1 compute, so ``PrefixReplay`` records every decoder
layer's clean output once per batch and replays it for the layers before the edit: a patch at layer L costs
the forward of layers L..N-1 (plus embeddings and head), on average about half a full forward. The replay
returns the very object the layer returned, so it works for any architecture whose decoder layers are
called in sequence (Llama, Qwen, Gemma, GPT-2, GPT-NeoX); ``tests/map/test_prefix_replay.py`` checks that
the losses are unchanged. No library does this for HF models (nnsight and TransformerLens re-run the
prefix), hence the hand-written code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..models import decoder_layers, head_dim
from .attribution import Scores
from .hooks import edit, head_columns, set_columns
from .stats import spearman, token_damage_sum


class PrefixReplay:
    """Each decoder layer's clean output on each batch, replayed for the layers before an edit.

    Built once per batch list (one clean forward per batch); ``nbytes`` is what it holds. Recording stops, and
    ``complete`` is False with nothing held, as soon as the outputs pass ``max_bytes``: the cap bounds the memory
    used, not only what is kept."""

    def __init__(self, model, batches: list[dict], max_bytes: float = float("inf")):
        self.model = model
        self.layers = decoder_layers(model)
        self.outputs: list[list] = []
        self.complete = True
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in batches:
                if self.nbytes > max_bytes:
                    self.outputs, self.complete = [], False
                    return
                store: list = [None] * len(self.layers)
                handles = [layer.register_forward_hook(lambda _m, _a, out, i=i, store=store: store.__setitem__(i, out))
                           for i, layer in enumerate(self.layers)]
                try:
                    b = {k: v.to(device) for k, v in batch.items()}
                    self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
                finally:
                    for h in handles:
                        h.remove()
                self.outputs.append(store)
        if self.nbytes > max_bytes:
            self.outputs, self.complete = [], False

    @property
    def nbytes(self) -> int:
        def size(x) -> int:
            if isinstance(x, torch.Tensor):
                return x.numel() * x.element_size()
            if isinstance(x, (tuple, list)):
                return sum(size(y) for y in x)
            return 0
        return sum(size(o) for store in self.outputs for o in store)

    @contextlib.contextmanager
    def replay(self, batch_index: int, first_edited_layer: int) -> Iterator[None]:
        """Inside the block, layers ``0..first_edited_layer-1`` return their recorded clean output on batch
        ``batch_index`` instead of computing it."""
        patched = []
        try:
            for i in range(first_edited_layer):
                layer = self.layers[i]
                out = self.outputs[batch_index][i]
                layer.forward = lambda *_a, _out=out, **_k: _out
                patched.append(layer)
            yield
        finally:
            for layer in patched:
                del layer.forward  # back to the class's forward


@torch.no_grad()
def mean_loss(model, batches: list[dict], edits: dict | None = None, metric: str = "loss",
              prefix: PrefixReplay | None = None) -> float:
    """Cross-entropy (or another ``stats.token_damage_sum`` metric) per scored token over ``batches`` with
    ``edits`` applied (nats). With ``prefix`` (recorded on the same ``batches``), the layers before the first
    edited one are replayed, not recomputed."""
    device = next(model.parameters()).device
    first = min((layer for _site, layer in (edits or {})), default=0)
    total, n = 0.0, 0
    with edit(model, edits or {}):
        for i, batch in enumerate(batches):
            b = {k: v.to(device) for k, v in batch.items()}
            ctx = prefix.replay(i, first) if prefix is not None else contextlib.nullcontext()
            with ctx:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
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


def patch_targets(scores: Scores, top_n: int, heads_top_n: int | None = None) -> list[dict]:
    """The units patched for real: top-N neurons per layer by |forget estimate|, the top ``heads_top_n`` heads
    per layer by |forget estimate| (every head when None), every layer."""
    targets = []
    attr = scores["mlp.attr_forget"]
    for layer in range(attr.shape[0]):
        for u in attr[layer].abs().argsort(descending=True)[:top_n].tolist():
            targets.append({"kind": "neuron", "layer": layer, "unit": u, "units": {("mlp", layer): [u]}})
    heads = scores["heads.attr_forget"]
    n_heads = heads.shape[1] if heads_top_n is None else min(heads_top_n, heads.shape[1])
    for layer in range(heads.shape[0]):
        for h in sorted(heads[layer].abs().argsort(descending=True)[:n_heads].tolist()):
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
                   progress: Callable[[], None] | None = None, metric: str = "loss",
                   heads_top_n: int | None = None, zero_ablation: bool = True,
                   prefix_cache_mb: float = 1024) -> dict:
    """Exact effects of the patch targets and the estimate-vs-exact rank correlations.

    The clean layer outputs are replayed for the layers before each edit (``PrefixReplay``) when they fit in
    ``prefix_cache_mb``; otherwise every patch runs the whole model. Without ``zero_ablation`` the zero-ablation
    columns are NaN and their correlations None."""
    device = next(model.parameters()).device
    hd = head_dim(model)
    prefix: dict[str, PrefixReplay | None] = {}
    for which in ("forget", "retain"):
        replay = PrefixReplay(model, batches[which], prefix_cache_mb * 2 ** 20) if prefix_cache_mb > 0 else None
        prefix[which] = replay if replay is not None and replay.complete else None
    kinds = (("mean", ""), ("zero", "_zero")) if zero_ablation else (("mean", ""),)
    rows = []
    for target in patch_targets(scores, top_n, heads_top_n):
        row = {k: target[k] for k in ("kind", "layer", "unit")}
        for kind, suffix in kinds:
            edits = ablation_edits(scores, target["units"], kind, hd, device)
            for which in ("forget", "retain"):
                row[f"est_{which}{suffix}"] = _estimate(scores, target, which, suffix)
                row[f"exact_{which}{suffix}"] = mean_loss(model, batches[which], edits, metric,
                                                          prefix[which]) - scores.clean_loss[which]
        if not zero_ablation:
            for which in ("forget", "retain"):
                row[f"est_{which}_zero"] = row[f"exact_{which}_zero"] = float("nan")
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
        "units_forget_zero_ablation": rho(("neuron", "head"), "forget", "_zero") if zero_ablation else None,
        "units_retain_zero_ablation": rho(("neuron", "head"), "retain", "_zero") if zero_ablation else None,
    }
    return {"rows": rows, "spearman": correlations,
            "prefix_replay": {w: p is not None for w, p in prefix.items()}}


def exact_neuron_ranking(model, scores: Scores, batches: dict[str, list[dict]], candidates: int,
                         retain_weight: float, metric: str = "loss", prefix_cache_mb: float = 1024,
                         progress: Callable[[], None] | None = None) -> tuple[torch.Tensor, dict]:
    """Rank MLP neurons by their *exact* mean-ablation effect, not its first-order estimate.

    The top ``candidates`` neurons per layer by the attribution score (estimated forget minus retain effect) are
    mean-ablated one at a time for real, on the forget and on the retain batches; each gets
    ``exact_forget - retain_weight * exact_retain`` (metric units per scored token). Every other neuron gets
    -inf, so it is never ranked. Returns the ranking tensor (layers, neurons) and a record (the candidates'
    count, the weight, and the estimate-vs-exact Spearman over this larger, less range-restricted set)."""
    device = next(model.parameters()).device
    prefix = {}
    for which in ("forget", "retain"):
        replay = PrefixReplay(model, batches[which], prefix_cache_mb * 2 ** 20) if prefix_cache_mb > 0 else None
        prefix[which] = replay if replay is not None and replay.complete else None
    score = scores["mlp.score"]
    ranking = torch.full_like(score, float("-inf"))
    est, exact = {"forget": [], "retain": []}, {"forget": [], "retain": []}
    for layer in range(score.shape[0]):
        for u in score[layer].argsort(descending=True)[:candidates].tolist():
            edits = ablation_edits(scores, {("mlp", layer): [u]}, "mean", 1, device)
            effect = {}
            for which in ("forget", "retain"):
                effect[which] = mean_loss(model, batches[which], edits, metric, prefix[which]) \
                    - scores.clean_loss[which]
                est[which].append(float(scores[f"mlp.attr_{which}"][layer, u]))
                exact[which].append(effect[which])
            ranking[layer, u] = effect["forget"] - retain_weight * effect["retain"]
            if progress:
                progress()
    record = {"candidates_per_layer": candidates, "retain_weight": retain_weight, "n_patched": len(exact["forget"]),
              "spearman_forget": spearman(est["forget"], exact["forget"]),
              "spearman_retain": spearman(est["retain"], exact["retain"]),
              "spearman_score": spearman([f - r for f, r in zip(est["forget"], est["retain"], strict=True)],
                                         [f - r for f, r in zip(exact["forget"], exact["retain"], strict=True)])}
    return ranking, record
