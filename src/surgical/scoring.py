"""Model scoring shared by every stage: greedy generation, continuation log-likelihoods, MC accuracy.

MC scoring follows lm-evaluation-harness: each choice is scored by the sum of the log-probabilities of
its continuation tokens given the context (``acc``), and by that sum divided by the choice's length in
bytes (``acc_norm``). Context and choice are joined with ``target_delimiter`` (empty for the world's
tasks, whose answers follow ``=`` directly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import prompt_ids_batch


def _device(model) -> torch.device:
    return next(model.parameters()).device


def context_length(model) -> int:
    """Most positions the model accepts (max_position_embeddings or GPT-2's n_positions; 2048 if neither)."""
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


def _by_length(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by decreasing length, so each batch pads little (lm-eval reorders the same way)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def continuation_logprobs(
    model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 64
) -> list[tuple[float, int]]:
    """Sum of log p(continuation | context) and the continuation's token count, for each pair.

    As in lm-evaluation-harness, a context + continuation longer than the model's context window keeps its
    last tokens (the context is cut from the left), and pairs are scored in order of length."""
    model.eval()
    device = _device(model)
    max_len = context_length(model)
    if not pairs:
        return []
    ctx_ids = prompt_ids_batch(tokenizer, [c for c, _ in pairs])
    cont_ids = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    seqs = [(c + k)[-max_len:] for c, k in zip(ctx_ids, cont_ids, strict=True)]
    # at most len - 1 tokens are scored: the first token of a sequence has no context (no BOS, empty prompt)
    cont_lens = [min(len(k), len(s) - 1) for k, s in zip(cont_ids, seqs, strict=True)]
    out: list[tuple[float, int] | None] = [None] * len(pairs)
    order = _by_length([len(s) for s in seqs])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # right padding: positions stay aligned with the causal mask
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(idx):
            s, n = seqs[i], cont_lens[i]
            if n <= 0:
                out[i] = (0.0, 0)
                continue
            tgt = torch.tensor(s[len(s) - n :], device=device)
            pos = torch.arange(len(s) - n - 1, len(s) - 1, device=device)
            # log-softmax only at the continuation's positions (n x vocab, not the batch's tokens x vocab)
            at = logits[row, pos].float()
            out[i] = (float((at.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(at, -1)).sum()), n)
    return out  # type: ignore[return-value]


def _accepts(model, name: str) -> bool:
    """Whether the model class's forward takes ``name`` (the class's: hooks and wrappers replace the instance's
    forward with a ``(*args, **kwargs)`` one)."""
    import inspect

    try:
        return name in inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def shared_context_logprobs(
    model, tokenizer, contexts: Sequence[str], choices: Sequence[Sequence[str]], batch_size: int = 64
) -> list[list[tuple[float, int]]]:
    """``continuation_logprobs`` of every (context, choice) pair, with each context run once for all its choices.

    The contexts of a batch run left-padded (explicit position ids, so every row starts at position 0) with the
    KV cache on; the cache is then repeated once per choice (``Cache.reorder_cache``) and only the choices'
    tokens run, right-padded, on top of it. Logits are taken only where a continuation token is scored
    (``logits_to_keep`` on the context pass, the choice tokens but the last on the second), so memory is
    O(scored tokens x vocabulary), not O(batch tokens x vocabulary). An MC item with 4 choices costs one context
    pass instead of four. Same token sequences as the pairwise path (context and choice tokenized apart, like
    lm-eval); a record whose context + longest choice exceeds the model's window, or whose context is empty,
    goes through ``continuation_logprobs`` (its left-cut is per pair). Returns, per context, one
    (log-probability, token count) per choice."""
    model.eval()
    device = _device(model)
    max_len = context_length(model)
    out: list[list[tuple[float, int]] | None] = [None] * len(contexts)
    if not contexts:
        return []
    ctx_ids = prompt_ids_batch(tokenizer, contexts)
    flat = [c for cs in choices for c in cs]
    flat_ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    cho_ids = [[next(flat_ids) for _ in cs] for cs in choices]
    fallback = [i for i in range(len(contexts)) if not ctx_ids[i] or not cho_ids[i]
                or min(len(k) for k in cho_ids[i]) == 0
                or len(ctx_ids[i]) + max(len(k) for k in cho_ids[i]) > max_len]
    if fallback:
        pairs = [(contexts[i], c) for i in fallback for c in choices[i]]
        scores = iter(continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size))
        for i in fallback:
            out[i] = [next(scores) for _ in choices[i]]
    keep_arg = _accepts(model, "logits_to_keep")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    todo = [i for i in _by_length([len(c) for c in ctx_ids]) if out[i] is None]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        width = max(len(ctx_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every context ends at the last column
            ids[row, width - len(ctx_ids[i]) :] = torch.tensor(ctx_ids[i])
            mask[row, width - len(ctx_ids[i]) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = {"logits_to_keep": 1} if keep_arg else {}
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    use_cache=True, **kw)
        first = torch.log_softmax(res.logits[:, -1].float(), dim=-1)  # [rows, V]: each choice's first token
        owner = [row for row, i in enumerate(idx) for _ in cho_ids[i]]
        conts = [k for i in idx for k in cho_ids[i]]
        lp = first[torch.tensor(owner), torch.tensor([k[0] for k in conts])].tolist()
        k_width = max(len(k) for k in conts)
        if k_width > 1:  # the choices' own tokens but the last predict the rest
            steps = k_width - 1
            cache = res.past_key_values
            cache.reorder_cache(torch.tensor(owner, device=device))
            c_ids = torch.full((len(conts), steps), pad, dtype=torch.long)
            c_mask = torch.zeros((len(conts), steps), dtype=torch.long)
            for r, k in enumerate(conts):
                c_ids[r, : len(k) - 1] = torch.tensor(k[:-1], dtype=torch.long)
                c_mask[r, : len(k) - 1] = 1
            full_mask = torch.cat([mask[owner], c_mask], dim=1)
            c_pos = pos[owner, -1:] + 1 + torch.arange(steps)[None, :]
            logits = model(input_ids=c_ids.to(device), attention_mask=full_mask.to(device),
                           position_ids=c_pos.to(device), past_key_values=cache, use_cache=True).logits
            for r, k in enumerate(conts):
                if len(k) > 1:
                    at = logits[r, : len(k) - 1].float()
                    tgt = torch.tensor(k[1:], device=at.device)
                    lp[r] += float((at.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(at, -1)).sum())
            del cache
        r = 0
        for i in idx:
            out[i] = []
            for k in cho_ids[i]:
                out[i].append((lp[r], len(k)))
                r += 1
    return out  # type: ignore[return-value]


def mc_predictions(
    model, tokenizer, records: Sequence[dict], batch_size: int = 64, target_delimiter: str = "",
    shared_context: bool = True,
) -> list[dict]:
    """For each MC record (question, choices, gold): the chosen index by summed and by
    length-normalised log-likelihood, and whether each is right.

    ``shared_context`` (default) runs each question once for all its choices (``shared_context_logprobs``);
    False scores every (question, choice) pair as its own sequence, as lm-eval does (same log-likelihoods up to
    float rounding, about choices-times more compute; kept as the benchmark's baseline)."""
    conts = [[target_delimiter + str(c) for c in r["choices"]] for r in records]
    if shared_context:
        scores = shared_context_logprobs(model, tokenizer, [r["question"] for r in records], conts,
                                         batch_size=batch_size)
    else:
        pairs = [(r["question"], c) for r, cs in zip(records, conts, strict=True) for c in cs]
        flat = iter(continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size))
        scores = [[next(flat) for _ in cs] for cs in conts]
    out = []
    for r, cs, sc in zip(records, conts, scores, strict=True):
        s = [(lp, lp / max(1, len(c.encode("utf-8")))) for c, (lp, _n) in zip(cs, sc, strict=True)]
        pred = max(range(len(s)), key=lambda j: s[j][0])
        pred_norm = max(range(len(s)), key=lambda j: s[j][1])
        out.append({"pred": pred, "pred_norm": pred_norm, "correct": pred == r["gold"],
                    "correct_norm": pred_norm == r["gold"], "logprobs": [x[0] for x in s]})
    return out


@torch.no_grad()
def greedy_generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int | Sequence[int], batch_size: int = 128,
    first_line: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (KV cache, left padding), decoded without special tokens.

    Prompts are batched in order of length (less padding; outputs come back in the input order). A prompt
    that would not leave ``max_new_tokens`` positions in the model's context keeps its last tokens (cut from
    the left, like lm-eval); a model whose whole context is shorter than that generates fewer tokens.
    ``max_new_tokens`` may be one budget per prompt (prompts of several domains in one call): a batch then runs to
    its largest budget and each output is cut to its own, which gives what a call per budget gives, since greedy
    decoding's first n tokens do not depend on how many follow; a batch never holds prompts whose longest prompt
    and largest budget together exceed the context.
    ``first_line``: the answer is one line (the world's worked answers are), so a sequence stops at its first
    newline as at EOS (when the tokenizer has a newline token of its own), and each output is cut there."""
    model.eval()
    device = _device(model)
    max_len = context_length(model)
    if not prompts:
        return []
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"greedy_generate: {len(budgets)} budgets for {len(prompts)} prompts")
    new_tokens = [max(1, min(b, max_len - 1)) for b in budgets]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [ids[-(max_len - n):] for ids, n in zip(prompt_ids_batch(tokenizer, prompts), new_tokens, strict=True)]
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if first_line:
        nl = tokenizer("\n", add_special_tokens=False)["input_ids"]
        if len(nl) == 1:
            stop.append(nl[0])
    outs: list[str | None] = [None] * len(prompts)
    batches: list[list[int]] = []
    width = budget = 0  # the current batch's longest prompt and largest budget
    for i in _by_length([len(e) for e in encoded]):
        w, b = max(width, len(encoded[i])), max(budget, new_tokens[i])
        if not batches or len(batches[-1]) >= batch_size or w + b > max_len:
            batches.append([i])
            width, budget = len(encoded[i]), new_tokens[i]
        else:
            batches[-1].append(i)
            width, budget = w, b
    for idx in batches:
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max(new_tokens[i] for i in idx),
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=stop or None,
        )
        rows = [gen[row, width : width + new_tokens[i]] for row, i in enumerate(idx)]
        for i, text in zip(idx, tokenizer.batch_decode(rows, skip_special_tokens=True), strict=True):
            outs[i] = text.split("\n", 1)[0] if first_line else text
    return outs  # type: ignore[return-value]


# ---------------------------------------------------------------- suite domains (see surgical.suite)


def qa_hits(model, tokenizer, domain, records: Sequence[dict], contexts: Sequence[str] | None = None,
            batch_size: int = 64) -> tuple[list[bool], list[str]]:
    """Short-answer QA on a suite domain: greedy generation from each record's prompt (or ``contexts[i]``, e.g.
    a jailbreak template around it), in the domain's chat format, up to its ``max_new_tokens`` (and its first
    line when ``stop_at_newline``), scored by the domain's scorer. Returns (hits, generations)."""
    return qa_hits_many(model, tokenizer, [(domain, records, contexts)], batch_size)[0]


def qa_hits_many(model, tokenizer, jobs: Sequence[tuple], batch_size: int = 64) -> list[tuple[list[bool], list[str]]]:
    """``qa_hits`` for several ``(domain, records, contexts or None)`` jobs, generated together: the prompts of
    every job whose domain stops at the same place (``stop_at_newline``) go through one ``greedy_generate`` call,
    each with its domain's ``max_new_tokens`` (sorted by length, batched across domains), so small domains do not
    each pay for a part-filled batch. Returns one (hits, generations) per job, in order."""
    from .suite import format_prompt, score_answer

    groups: dict[bool, list[int]] = {}
    for j, (domain, _recs, _ctx) in enumerate(jobs):
        groups.setdefault(domain.spec.stop_at_newline, []).append(j)
    gens_of: dict[int, list[str]] = {}
    for first_line, members in groups.items():
        prompts, budgets, spans = [], [], []
        for j in members:
            domain, records, contexts = jobs[j]
            texts = list(contexts) if contexts is not None else [r["prompt"] for r in records]
            spans.append((j, len(prompts), len(texts)))
            prompts += [format_prompt(tokenizer, t, domain.chat) for t in texts]
            budgets += [domain.spec.max_new_tokens] * len(texts)
        gens = greedy_generate(model, tokenizer, prompts, max_new_tokens=budgets, batch_size=batch_size,
                               first_line=first_line)
        for j, at, n in spans:
            gens_of[j] = gens[at:at + n]
    out = []
    for j, (domain, records, _ctx) in enumerate(jobs):
        spec = domain.spec
        hits = [score_answer(g, r["answers"], spec.scorer, spec.answer_regex)
                for g, r in zip(gens_of[j], records, strict=True)]
        out.append((hits, gens_of[j]))
    return out


def mc_hits(model, tokenizer, domain, records: Sequence[dict], contexts: Sequence[str] | None = None,
            batch_size: int = 64) -> tuple[list[bool], list[bool]]:
    """lm-eval multiple choice on a suite domain: (hits by summed log-likelihood, hits by per-byte
    log-likelihood), the question (or ``contexts[i]``) in the domain's chat format, joined to each choice by
    its ``target_delimiter``."""
    from .suite import format_prompt

    texts = list(contexts) if contexts is not None else [r["question"] for r in records]
    recs = [{**r, "question": format_prompt(tokenizer, t, domain.chat)} for r, t in zip(records, texts, strict=True)]
    preds = mc_predictions(model, tokenizer, recs, batch_size=batch_size,
                           target_delimiter=domain.spec.target_delimiter)
    return [p["correct"] for p in preds], [p["correct_norm"] for p in preds]


def pair_nlls(model, tokenizer, domain, records: Sequence[dict], batch_size: int = 64) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each {prompt, completion} record's completion; a
    record with an empty prompt is a plain text (its first token is conditioned on BOS when there is one)."""
    from .suite import format_prompt

    pairs = []
    for r in records:
        ctx = format_prompt(tokenizer, r["prompt"], domain.chat) if r["prompt"] else ""
        pairs.append((ctx, r["completion"]))
    return [(-lp, n) for lp, n in continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size)]
