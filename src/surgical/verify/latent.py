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

from ..data import prompt_ids, prompt_ids_batch
from ..models import decoder_layers, final_norm, layer_output, replace_layer_output
from .bootstrap import bootstrap_ci, majority_rate
from .probes import knowledge_probes, primary_hits, primary_prompts


def _right_padded(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    seqs = prompt_ids_batch(tokenizer, texts)
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


def probe_items(suite, domains: Sequence[str], n_train: int, n_test: int, split: str, seed: int):
    """(train texts, train labels, test texts, test labels, label description) for the latent probes.

    A domain with ``probe`` records (``{text, label}``; the world's: the answer's last digit where the worked
    solution writes it) uses them. Otherwise the label exists for any MC data: the question followed by its
    gold choice (1) or by one wrong choice drawn at random (0), read at the choice's last token; the probe is
    trained on the val split's items (the first half of the test items when there is no val split) and scored
    on the test items (the other half)."""
    rng = random.Random(seed)
    with_probe = [d for d in domains if suite[d].probe]
    if with_probe:
        seen: set[str] = set()
        train, test = [], []
        for d in with_probe:
            for part, out in (("train", train), ("test", test)):
                for r in suite[d].probe[part]:
                    if r["text"] not in seen:  # domains may share one probe file
                        seen.add(r["text"])
                        out.append(r)
        train = rng.sample(train, min(n_train, len(train)))
        test = test[:n_test]
        return ([r["text"] for r in train], [r["label"] for r in train], [r["text"] for r in test],
                [r["label"] for r in test], "the suite's probe labels")
    tr_recs, te_recs = [], []
    for d in domains:
        dd = suite[d]
        delim = dd.spec.target_delimiter
        test = [(delim, r) for r in dd.split_of("mc", split)]
        if dd.has_val("mc") and split != "val":
            tr_recs += [(delim, r) for r in dd.mc["val"]]
            te_recs += test
        else:
            half = len(test) // 2
            tr_recs += test[:half]
            te_recs += test[half:]
    if not tr_recs or not te_recs:
        return [], [], [], [], "none: no probe records and no MC items"

    def pairs(recs, k):
        texts, labels = [], []
        for delim, r in recs[:k]:
            wrong = rng.choice([j for j in range(len(r["choices"])) if j != r["gold"]])
            texts += [r["question"] + delim + r["choices"][r["gold"]], r["question"] + delim + r["choices"][wrong]]
            labels += [1, 0]
        return texts, labels

    tr_x, tr_y = pairs(rng.sample(tr_recs, len(tr_recs)), max(1, n_train // 2))
    te_x, te_y = pairs(te_recs, max(1, n_test // 2))
    return tr_x, tr_y, te_x, te_y, "MC gold choice vs a wrong choice (question + choice, at its last token)"


def layer_probes(model, tokenizer, items, n_boot: int, seed: int, batch_size: int = 64) -> list[dict]:
    """Held-out accuracy (with CI) of the last-digit probe on every layer's output (at each context's last
    token)."""
    tr_x, tr_y, te_x, te_y = items[:4]
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
    """Per layer: top-1 accuracy of (final norm -> LM head)(layer output) on the completion's tokens of
    ``{prompt, completion}`` records, teacher-forced (the prompt's tokens are not scored)."""
    if not records:
        return []
    norm, head = final_norm(model), model.get_output_embeddings()
    texts = [r["prompt"] + r["completion"] for r in records]
    prompt_lens = [len(prompt_ids(tokenizer, r["prompt"])) for r in records]
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


def direction_ablation_attack(model, tokenizer, suite, forget_domains, retain_domains, cfg,
                              reference_hits: dict[str, list[bool]] | None) -> dict:
    """Directions from the validation split (the test split's items where a domain has none, and the report
    says so); probes re-run on the eval split with the directions ablated.

    ``refused`` = forbidden validation items the reference answers (all of them without a reference) that
    the student gets wrong; ``answered`` = allowed validation items the student answers (each domain's primary
    metric: QA, else MC). With too few of either (fewer than 4), all forbidden versus all allowed items are
    used, and the report says so."""
    n = cfg.ablation_items
    refused, answered = [], []
    in_sample = [d for d in [*forget_domains, *retain_domains]
                 if not suite[d].has_val("qa" if suite[d].qa else "mc")]
    for d in forget_domains:
        prompts = primary_prompts(suite[d], "val", n)
        hits = primary_hits(model, tokenizer, suite[d], "val", n, cfg.batch_size)
        ref = (reference_hits or {}).get(d) or [True] * len(prompts)
        refused += [p for p, h, rh in zip(prompts, hits, ref, strict=False) if rh and not h]
    for d in retain_domains:
        prompts = primary_prompts(suite[d], "val", n)
        hits = primary_hits(model, tokenizer, suite[d], "val", n, cfg.batch_size)
        answered += [p for p, h in zip(prompts, hits, strict=True) if h]
    contrast = "student-refused vs student-answered"
    if len(refused) < 4 or len(answered) < 4:
        refused = [p for d in forget_domains for p in primary_prompts(suite[d], "val", n)]
        answered = [p for d in retain_domains for p in primary_prompts(suite[d], "val", n)]
        contrast = "all forbidden vs all allowed (too few refused or answered items)"
    directions = diff_in_means(last_token_states(model, tokenizer, refused, cfg.batch_size),
                               last_token_states(model, tokenizer, answered, cfg.batch_size))
    from .jailbreaks import summarise_sides

    kw = dict(split=cfg.split, n_items=cfg.n_items, n_boot=cfg.bootstrap_samples, seed=cfg.seed,
              batch_size=cfg.batch_size, ppl=False)
    with ablated(model, directions):
        res = {"forget": knowledge_probes(model, tokenizer, suite, forget_domains, **kw),
               "retain": knowledge_probes(model, tokenizer, suite, retain_domains, mc=False, **kw)}
    return {"contrast": contrast, "n_refused": len(refused), "n_answered": len(answered), "by_domain": res,
            "directions_in_sample": in_sample, **summarise_sides(res)}


def lens_records(suite, domains, split: str, n: int) -> list[dict]:
    """{prompt, completion} records for the logit lens: perplexity texts, else QA prompts with their reference
    ``target``, else MC questions with their gold choice."""
    out = []
    for d in domains:
        dd = suite[d]
        if dd.perplexity:
            out += [r for r in dd.split_of("perplexity", split) if r["prompt"]][:n]
        elif any("target" in r for r in dd.split_of("qa", split)):
            out += [{"prompt": r["prompt"], "completion": r["target"]} for r in dd.split_of("qa", split)
                    if r.get("target")][:n]
        else:
            out += [{"prompt": r["question"], "completion": dd.spec.target_delimiter + r["choices"][r["gold"]]}
                    for r in dd.split_of("mc", split)[:n]]
    return out


def latent_report(model, tokenizer, suite, forget_domains, retain_domains, cfg, references: dict,
                  full: bool = True, measure_reference=None) -> dict:
    """Probe accuracy by layer for the model, each reference and a random-init twin; logit lens by layer.
    ``full`` False (the compare profile): the model's probes only. ``measure_reference(name, compute)`` returns a
    reference's by-layer probes, e.g. from the battery's reference memo (default: ``compute()``)."""
    items = probe_items(suite, forget_domains, cfg.probe_train_items, cfg.probe_test_items, cfg.split, cfg.seed)
    if len(set(items[1])) < 2 or not items[2]:
        return {"skipped": f"no usable latent-probe items ({items[4]})", "label": items[4]}
    kw = dict(n_boot=cfg.bootstrap_samples, seed=cfg.seed, batch_size=cfg.batch_size)
    out = {"label": items[4], "majority_baseline": majority_rate(items[3]),
           "n_train": len(items[0]), "n_test": len(items[2]),
           "by_layer": {"model": layer_probes(model, tokenizer, items, **kw)}}
    if not full:
        out["skipped_by_profile"] = ["random_init", "references", "logit_lens"]
        return out
    out["by_layer"]["random_init"] = layer_probes(random_init_like(model, cfg.seed), tokenizer, items, **kw)
    measure_reference = measure_reference or (lambda _name, compute: compute())
    for name, ref in references.items():
        out["by_layer"][name] = measure_reference(name, lambda ref=ref: layer_probes(ref, tokenizer, items, **kw))
    lens = {}
    for side, domains in (("forget", forget_domains), ("retain", retain_domains)):
        lens[side] = logit_lens(model, tokenizer, lens_records(suite, domains, cfg.split,
                                                               max(1, cfg.probe_test_items // 2)), cfg.batch_size)
    out["logit_lens"] = lens
    return out
