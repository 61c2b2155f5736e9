"""Knowledge probes: multiple-choice accuracy by log-likelihood (lm-eval's acc and acc_norm), exact match
by greedy generation, and perplexity of held-out worked solutions; each with a bootstrap 95% CI.

Every function takes an optional ``contexts`` list so the attacks (jailbreak templates, ablation hooks,
quantized copies) reuse the same scoring with a different prompt or a different model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from ..scoring import continuation_logprobs, mc_predictions
from ..world.teacher import exact_match_hits, max_worked_tokens  # noqa: F401 (re-exported for verify)
from .bootstrap import bootstrap_ci


def mc_hits(model, tokenizer, records: Sequence[dict], contexts: Sequence[str] | None = None,
            batch_size: int = 64) -> tuple[list[bool], list[bool]]:
    """lm-eval multiple choice: (hits by summed log-likelihood, hits by length-normalised log-likelihood)."""
    if contexts is not None:
        records = [{**r, "question": c} for r, c in zip(records, contexts, strict=True)]
    preds = mc_predictions(model, tokenizer, records, batch_size=batch_size)
    return [p["correct"] for p in preds], [p["correct_norm"] for p in preds]


def token_nlls(model, tokenizer, records: Sequence[dict], batch_size: int = 64) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each record's worked target given its question."""
    scores = continuation_logprobs(model, tokenizer, [(r["question"], r["target"]) for r in records],
                                   batch_size=batch_size)
    return [(-lp, n) for lp, n in scores]


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


def domain_probe(model, tokenizer, wb, domain: str, split: str, n_items: int, n_boot: int, seed: int,
                 batch_size: int = 64, em: bool = True, mc: bool = True, ppl: bool = True) -> dict:
    """Exact match, MC (acc, acc_norm) and perplexity of one domain, each ``{"value", "ci_low", ...}``."""
    out: dict = {}
    em_recs = wb.exact_match_sets[split][domain][:n_items]
    if em:
        hits, _ = exact_match_hits(model, tokenizer, em_recs, max_worked_tokens(wb, domain), batch_size=batch_size)
        out["exact_match"] = bootstrap_ci(hits, n_boot, seed)
    mc_recs = wb.mc_sets[split][domain][:n_items]
    if mc and mc_recs:
        acc, acc_norm = mc_hits(model, tokenizer, mc_recs, batch_size=batch_size)
        out["mc"] = bootstrap_ci(acc, n_boot, seed)
        out["mc_norm"] = bootstrap_ci(acc_norm, n_boot, seed)
    if ppl:
        out["perplexity"] = perplexity_ci(token_nlls(model, tokenizer, em_recs, batch_size), n_boot, seed)
    return out


def knowledge_probes(model, tokenizer, wb, domains: Sequence[str], split: str, n_items: int, n_boot: int,
                     seed: int, batch_size: int = 64, **kw) -> dict:
    """``domain_probe`` for every domain: {domain: {metric: ci}}."""
    return {d: domain_probe(model, tokenizer, wb, d, split, n_items, n_boot, seed, batch_size, **kw) for d in domains}


def redact(prompt: str, generation: str, correct: bool, show: bool) -> dict:
    """A generation as the report may show it: hashes, lengths and a verdict, plus the text when ``show``."""
    rec = {"prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
           "generation_sha256": hashlib.sha256(generation.encode()).hexdigest()[:16],
           "prompt_chars": len(prompt), "generation_chars": len(generation),
           "verdict": "answered" if correct else "not answered", "redacted": not show}
    if show:
        rec["prompt"], rec["generation"] = prompt, generation
    return rec
