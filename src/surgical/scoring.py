"""Model scoring shared by every stage: greedy generation, continuation log-likelihoods, MC accuracy.

MC scoring follows lm-evaluation-harness: each choice is scored by the sum of the log-probabilities of
its continuation tokens given the context (``acc``), and by that sum divided by the choice's length in
bytes (``acc_norm``). Context and choice are joined with ``target_delimiter`` (empty for the world's
tasks, whose answers follow ``=`` directly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def continuation_logprobs(
    model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 64
) -> list[tuple[float, int]]:
    """Sum of log p(continuation | context) and the continuation's token count, for each pair."""
    model.eval()
    device = _device(model)
    out: list[tuple[float, int]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs, cont_lens = [], []
        for ctx, cont in chunk:
            ctx_ids = tokenizer(ctx, add_special_tokens=True)["input_ids"]
            cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
            seqs.append(ctx_ids + cont_ids)
            cont_lens.append(len(cont_ids))
        width = max(len(s) for s in seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: positions stay aligned with the causal mask
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = F.log_softmax(logits, dim=-1)
        for i, s in enumerate(seqs):
            n = cont_lens[i]
            if n == 0:
                out.append((0.0, 0))
                continue
            tgt = torch.tensor(s[len(s) - n :], device=device)
            pos = torch.arange(len(s) - n - 1, len(s) - 1, device=device)
            out.append((float(logp[i, pos, tgt].sum()), n))
    return out


def mc_predictions(
    model, tokenizer, records: Sequence[dict], batch_size: int = 64, target_delimiter: str = ""
) -> list[dict]:
    """For each MC record (question, choices, gold): the chosen index by summed and by
    length-normalised log-likelihood, and whether each is right."""
    pairs, owners = [], []
    for r_i, r in enumerate(records):
        for c in r["choices"]:
            pairs.append((r["question"], target_delimiter + str(c)))
            owners.append(r_i)
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size)
    per_record: list[list[tuple[float, float]]] = [[] for _ in records]
    for (_ctx, cont), owner, (lp, _n) in zip(pairs, owners, scores, strict=True):
        per_record[owner].append((lp, lp / max(1, len(cont.encode("utf-8")))))
    out = []
    for r, s in zip(records, per_record, strict=True):
        pred = max(range(len(s)), key=lambda j: s[j][0])
        pred_norm = max(range(len(s)), key=lambda j: s[j][1])
        out.append({"pred": pred, "pred_norm": pred_norm, "correct": pred == r["gold"],
                    "correct_norm": pred_norm == r["gold"], "logprobs": [x[0] for x in s]})
    return out


@torch.no_grad()
def greedy_generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 128
) -> list[str]:
    """Greedy continuations of ``prompts`` (KV cache, left padding), decoded without special tokens."""
    model.eval()
    device = _device(model)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            outs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return outs
