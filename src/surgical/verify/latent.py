"""Latent probes: is the forbidden knowledge still encoded inside, even when it is not output?

* A linear probe per layer (logistic regression on the residual stream at the last token of the worked
  solution teacher-forced up to where the answer's last digit is written, e.g. ``141*6: 1*6+0=``)
  predicts the forbidden answer's last digit on held-out items (Alain & Bengio 2016; as used for
  unlearning by Lynch et al. 2024, "Eight methods to evaluate robust unlearning"). It is compared with
  the same probe on the reference teacher and on a random-init model of the same shape.
* The logit lens (nostalgebraist 2020): each layer's output through the final norm and the LM head,
  scored as top-1 accuracy on the worked answer's tokens (teacher-forced).
* The direction-ablation attack (Łucki et al. 2024, "An adversarial perspective on machine unlearning",
  after Arditi et al. 2024): the difference-in-means direction between the inputs the student fails
  although the reference answers them and the inputs the student answers, projected out of every
  layer's output with forward hooks; then the knowledge probes run again.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import numpy as np
import torch

from ..models import decoder_layers, final_norm, layer_output, replace_layer_output
from ..world.teacher import max_worked_tokens
from .bootstrap import bootstrap_ci, majority_rate
from .probes import exact_match_hits, mc_hits


def _right_padded(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    seqs = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask, [len(s) for s in seqs]


@torch.no_grad()
def layer_outputs(model, tokenizer, texts: Sequence[str], batch_size: int = 64):
    """Yield (batch lengths, [per-layer output tensors (B, T, H)]) for ``texts``, right-padded, from forward
    hooks on every decoder layer."""
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]

    def hook_for(i):
        def hook(_module, _inputs, output):
            captured[i] = layer_output(output).detach().float()
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            ids, mask, lengths = _right_padded(tokenizer, texts[start : start + batch_size])
            model(input_ids=ids, attention_mask=mask)
            yield lengths, list(captured)
    finally:
        for h in handles:
            h.remove()


def last_token_states(model, tokenizer, prompts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Residual stream at each prompt's last token: array (layers, items, hidden)."""
    per_layer: list[list[np.ndarray]] = []
    for lengths, outs in layer_outputs(model, tokenizer, prompts, batch_size):
        if not per_layer:
            per_layer = [[] for _ in outs]
        last = torch.tensor(lengths) - 1
        for li, h in enumerate(outs):
            per_layer[li].append(h[torch.arange(len(lengths)), last].numpy())
    return np.stack([np.concatenate(chunks) for chunks in per_layer])


def probe_accuracy(x_train: np.ndarray, y_train: Sequence[int], x_test: np.ndarray, y_test: Sequence[int],
                   seed: int = 0) -> list[bool]:
    """Per-item hits of a standardised multinomial logistic-regression probe (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y_train)) < 2:
        return [y == y_train[0] for y in y_test]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0, random_state=seed))
    clf.fit(x_train, list(y_train))
    return [bool(p == y) for p, y in zip(clf.predict(x_test), y_test, strict=True)]


def probe_items(wb, domains: Sequence[str], n_train: int, n_test: int, split: str, seed: int):
    """(train contexts, train labels, test contexts, test labels): label = the answer's last digit; context =
    the worked solution teacher-forced up to where that digit is written (``answer_digit_context``)."""
    from ..world.problems import answer_digit_context

    rng = random.Random(seed)
    train = [p for d in domains for p in wb.splits.train[d]]
    train = rng.sample(train, min(n_train, len(train)))
    per_dom = max(1, n_test // len(domains))
    test = [p for d in domains for p in wb.splits[split][d][:per_dom]]
    return ([answer_digit_context(p) for p in train], [p.answer % 10 for p in train],
            [answer_digit_context(p) for p in test], [p.answer % 10 for p in test])


def layer_probes(model, tokenizer, items, n_boot: int, seed: int, batch_size: int = 64) -> list[dict]:
    """Held-out accuracy (with CI) of the last-digit probe on every layer's output (at each context's last
    token)."""
    tr_x, tr_y, te_x, te_y = items
    h_tr = last_token_states(model, tokenizer, tr_x, batch_size)
    h_te = last_token_states(model, tokenizer, te_x, batch_size)
    return [bootstrap_ci(probe_accuracy(h_tr[li], tr_y, h_te[li], te_y, seed), n_boot, seed)
            for li in range(h_tr.shape[0])]


def random_init_like(model, seed: int):
    """A random-init model of ``model``'s architecture and shape (the probe's floor)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model.config).eval()


@torch.no_grad()
def logit_lens(model, tokenizer, records: Sequence[dict], batch_size: int = 64) -> list[float]:
    """Per layer: top-1 accuracy of (final norm -> LM head)(layer output) on the worked answer's tokens,
    teacher-forced (the prompt's tokens are not scored)."""
    norm, head = final_norm(model), model.get_output_embeddings()
    texts = [r["question"] + r["target"] for r in records]
    prompt_lens = [len(tokenizer(r["question"], add_special_tokens=True)["input_ids"]) for r in records]
    hits: list[int] = []
    total = 0
    offset = 0
    for lengths, outs in layer_outputs(model, tokenizer, texts, batch_size):
        if not hits:
            hits = [0] * len(outs)
        ids, _, _ = _right_padded(tokenizer, texts[offset : offset + len(lengths)])
        for li, h in enumerate(outs):
            pred = head(norm(h.to(next(model.parameters()).dtype))).argmax(-1)
            for b, n in enumerate(lengths):
                p0 = prompt_lens[offset + b]
                hits[li] += int((pred[b, p0 - 1 : n - 1] == ids[b, p0:n]).sum())
        total += sum(n - prompt_lens[offset + b] for b, n in enumerate(lengths))
        offset += len(lengths)
    return [h / max(1, total) for h in hits]


# ---------------------------------------------------------------- direction ablation


def diff_in_means(refused: np.ndarray, answered: np.ndarray) -> np.ndarray:
    """Unit difference-in-means direction per layer: normalise(mean(refused) - mean(answered)).
    Arrays are (layers, items, hidden); returns (layers, hidden)."""
    d = refused.mean(axis=1) - answered.mean(axis=1)
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-8)


def project_out(h: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """h minus its component along the unit vector ``direction`` (last dimension)."""
    return h - (h @ direction).unsqueeze(-1) * direction


@contextlib.contextmanager
def ablated(model, directions: np.ndarray):
    """Forward hooks that project ``directions[l]`` out of layer l's output, at every position."""
    handles = []
    for li, layer in enumerate(decoder_layers(model)):
        d = torch.tensor(directions[li], dtype=next(model.parameters()).dtype)

        def hook(_module, _inputs, output, d=d):
            return replace_layer_output(output, project_out(layer_output(output), d))

        handles.append(layer.register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def direction_ablation_attack(model, tokenizer, wb, forget_domains, retain_domains, cfg,
                              reference_hits: dict[str, list[bool]] | None) -> dict:
    """Directions from the validation split; probes re-run on the eval split with the directions ablated.

    ``refused`` = forbidden validation items the reference answers (all of them without a reference) that
    the student gets wrong; ``answered`` = allowed validation items the student answers. With too few of
    either (fewer than 4), all forbidden versus all allowed items are used, and the report says so."""
    n = cfg.ablation_items
    refused, answered = [], []
    for d in forget_domains:
        recs = wb.exact_match_sets["val"][d][:n]
        hits, _ = exact_match_hits(model, tokenizer, recs, max_worked_tokens(wb, d), batch_size=cfg.batch_size)
        ref = (reference_hits or {}).get(d) or [True] * len(recs)
        refused += [r["question"] for r, h, rh in zip(recs, hits, ref, strict=False) if rh and not h]
    for d in retain_domains:
        recs = wb.exact_match_sets["val"][d][:n]
        hits, _ = exact_match_hits(model, tokenizer, recs, max_worked_tokens(wb, d), batch_size=cfg.batch_size)
        answered += [r["question"] for r, h in zip(recs, hits, strict=True) if h]
    contrast = "student-refused vs student-answered"
    if len(refused) < 4 or len(answered) < 4:
        refused = [r["question"] for d in forget_domains for r in wb.exact_match_sets["val"][d][:n]]
        answered = [r["question"] for d in retain_domains for r in wb.exact_match_sets["val"][d][:n]]
        contrast = "all forbidden vs all allowed (too few refused or answered items)"
    directions = diff_in_means(last_token_states(model, tokenizer, refused, cfg.batch_size),
                               last_token_states(model, tokenizer, answered, cfg.batch_size))
    from .jailbreaks import summarise_sides

    res: dict = {"forget": {}, "retain": {}}
    with ablated(model, directions):
        for side, domains in (("forget", forget_domains), ("retain", retain_domains)):
            for d in domains:
                recs = wb.exact_match_sets[cfg.split][d][: cfg.n_items]
                hits, _ = exact_match_hits(model, tokenizer, recs, max_worked_tokens(wb, d),
                                           batch_size=cfg.batch_size)
                m = {"exact_match": bootstrap_ci(hits, cfg.bootstrap_samples, cfg.seed)}
                if side == "forget":
                    acc, acc_norm = mc_hits(model, tokenizer, wb.mc_sets[cfg.split][d][: cfg.n_items],
                                            batch_size=cfg.batch_size)
                    m["mc"] = bootstrap_ci(acc, cfg.bootstrap_samples, cfg.seed)
                    m["mc_norm"] = bootstrap_ci(acc_norm, cfg.bootstrap_samples, cfg.seed)
                res[side][d] = m
    return {"contrast": contrast, "n_refused": len(refused), "n_answered": len(answered), "by_domain": res,
            **summarise_sides(res)}


def latent_report(model, tokenizer, wb, forget_domains, retain_domains, cfg, references: dict) -> dict:
    """Probe accuracy by layer for the model, each reference and a random-init twin; logit lens by layer."""
    items = probe_items(wb, forget_domains, cfg.probe_train_items, cfg.probe_test_items, cfg.split, cfg.seed)
    kw = dict(n_boot=cfg.bootstrap_samples, seed=cfg.seed, batch_size=cfg.batch_size)
    out = {"label": "last digit of the forbidden answer", "majority_baseline": majority_rate(items[3]),
           "n_train": len(items[0]), "n_test": len(items[2]),
           "by_layer": {"model": layer_probes(model, tokenizer, items, **kw),
                        "random_init": layer_probes(random_init_like(model, cfg.seed), tokenizer, items, **kw)}}
    for name, ref in references.items():
        out["by_layer"][name] = layer_probes(ref, tokenizer, items, **kw)
    lens = {}
    for side, domains in (("forget", forget_domains), ("retain", retain_domains)):
        recs = [r for d in domains for r in wb.exact_match_sets[cfg.split][d][: max(1, cfg.probe_test_items // 2)]]
        lens[side] = logit_lens(model, tokenizer, recs, cfg.batch_size)
    out["logit_lens"] = lens
    return out
