"""Knowledge probes on a suite's domains: multiple-choice accuracy by log-likelihood (lm-eval's acc and
acc_norm), short-answer QA by greedy generation and the domain's scorer, and perplexity of held-out texts;
each with a bootstrap 95% CI.

The scoring functions take an optional ``contexts`` list so the attacks (jailbreak templates, ablation hooks,
quantized copies) reuse the same scoring with a different prompt or a different model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from ..scoring import mc_hits, pair_nlls, qa_hits, qa_hits_many  # noqa: F401 (re-exported for the battery)
from .bootstrap import bootstrap_ci


def perplexity_ci(nlls: Sequence[tuple[float, int]], n_boot: int, seed: int) -> dict:
    """Token-level perplexity exp(sum NLL / sum tokens), with a bootstrap CI over items (ratio estimator)."""
    import numpy as np

    if not nlls:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    nll = np.array([x for x, _ in nlls], dtype=float)
    cnt = np.array([n for _, n in nlls], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(nll), size=(n_boot, len(nll)))
    ppl_boot = np.exp(nll[idx].sum(1) / np.maximum(cnt[idx].sum(1), 1))
    lo, hi = np.quantile(ppl_boot, [0.025, 0.975])
    return {"value": float(math.exp(nll.sum() / max(cnt.sum(), 1))), "ci_low": float(lo), "ci_high": float(hi),
            "n": len(nlls)}


def primary_hits(model, tokenizer, domain, split: str, n_items: int, batch_size: int = 64,
                 contexts=None) -> list[bool]:
    """Per-item hits of a domain's primary metric: QA (its scorer) when it has QA data, else MC (acc).
    ``primary_hits_many`` does several domains with their QA generated together."""
    if domain.qa:
        return qa_hits(model, tokenizer, domain, domain.split_of("qa", split)[:n_items], contexts, batch_size)[0]
    return mc_hits(model, tokenizer, domain, domain.split_of("mc", split)[:n_items], contexts, batch_size)[0]


def primary_hits_many(model, tokenizer, domains: Sequence, split: str, n_items: int,
                      batch_size: int = 64) -> list[list[bool]]:
    """``primary_hits`` of each domain (suite Domain objects), the QA domains' generations in one batched call."""
    qa = [d for d in domains if d.qa]
    qa_out = iter(qa_hits_many(model, tokenizer, [(d, d.split_of("qa", split)[:n_items], None) for d in qa],
                               batch_size))
    return [next(qa_out)[0] if d.qa else
            mc_hits(model, tokenizer, d, d.split_of("mc", split)[:n_items], None, batch_size)[0] for d in domains]


def primary_prompts(domain, split: str, n_items: int) -> list[str]:
    """The prompts ``primary_hits`` scores (QA prompts, or MC questions)."""
    if domain.qa:
        return [r["prompt"] for r in domain.split_of("qa", split)[:n_items]]
    return [r["question"] for r in domain.split_of("mc", split)[:n_items]]


def domain_probe(model, tokenizer, domain, split: str, n_items: int, n_boot: int, seed: int,
                 batch_size: int = 64, em: bool = True, mc: bool = True, ppl: bool = True,
                 qa_result: list[bool] | None = None) -> dict:
    """A suite domain's knowledge probes, each ``{"value", "ci_low", ...}``: ``exact_match`` (QA accuracy under
    the domain's scorer), ``mc`` / ``mc_norm`` (lm-eval acc / acc_norm) and ``perplexity``, for the data the
    domain has; ``primary`` is the QA figure when there is one, else MC. ``qa_result``: the QA hits, already
    generated (``knowledge_probes`` generates every domain's QA in one batched call)."""
    out: dict = {}
    qa_recs = domain.split_of("qa", split)[:n_items]
    if em and qa_recs:
        hits = qa_result if qa_result is not None else qa_hits(model, tokenizer, domain, qa_recs,
                                                                 batch_size=batch_size)[0]
        out["exact_match"] = bootstrap_ci(hits, n_boot, seed)
    mc_recs = domain.split_of("mc", split)[:n_items]
    if mc_recs and (mc or not qa_recs):  # MC is the primary metric of a domain without QA
        acc, acc_norm = mc_hits(model, tokenizer, domain, mc_recs, batch_size=batch_size)
        out["mc"] = bootstrap_ci(acc, n_boot, seed)
        out["mc_norm"] = bootstrap_ci(acc_norm, n_boot, seed)
    ppl_recs = domain.split_of("perplexity", split)[:n_items]
    if ppl and ppl_recs:
        out["perplexity"] = perplexity_ci(pair_nlls(model, tokenizer, domain, ppl_recs, batch_size), n_boot, seed)
    if "exact_match" in out or "mc" in out:
        out["primary"] = out.get("exact_match") or out["mc"]
    return out


def knowledge_probes(model, tokenizer, suite, domains: Sequence[str], split: str, n_items: int, n_boot: int,
                     seed: int, batch_size: int = 64, **kw) -> dict:
    """``domain_probe`` for every domain of ``suite`` named in ``domains``: {domain: {metric: ci}}. The QA
    generations of all domains are batched together (``qa_hits_many``)."""
    with_qa = [d for d in domains if suite[d].split_of("qa", split)[:n_items]] if kw.get("em", True) else []
    qa = dict(zip(with_qa, (h for h, _ in qa_hits_many(
        model, tokenizer, [(suite[d], suite[d].split_of("qa", split)[:n_items], None) for d in with_qa],
        batch_size)), strict=True))
    return {d: domain_probe(model, tokenizer, suite[d], split, n_items, n_boot, seed, batch_size,
                            qa_result=qa.get(d), **kw) for d in domains}


def redact(prompt: str, generation: str, correct: bool, show: bool) -> dict:
    """A generation as the report may show it: hashes, lengths and a verdict, plus the text when ``show``."""
    rec = {"prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
           "generation_sha256": hashlib.sha256(generation.encode()).hexdigest()[:16],
           "prompt_chars": len(prompt), "generation_chars": len(generation),
           "verdict": "answered" if correct else "not answered", "redacted": not show}
    if show:
        rec["prompt"], rec["generation"] = prompt, generation
    return rec
