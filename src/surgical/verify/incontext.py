"""In-context use: the forbidden facts a problem needs are handed over in the prompt.

Data filtering removes knowledge from the weights, not the ability to *use* knowledge given in context
(Shumailov et al. 2024, "UnUnlearning"). So this probe is reported as information, not as pass/fail:
the world's facts are the single-digit products (``7*4=28``) and the long-division steps (``25/6=4 r1``)
the worked solution uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..world.teacher import max_worked_tokens
from .bootstrap import bootstrap_ci
from .probes import exact_match_hits


def facts_for(problem) -> list[str]:
    """The forbidden facts ``problem`` needs, without its carries or its final answer."""
    if problem.domain == "mul":
        a, b = problem.operands
        return sorted({f"{int(x)}*{b}={int(x) * b}" for x in str(a)}) if b < 10 else [
            f"{a}*{int(y)}={a * int(y)}" for y in str(b)]
    if problem.domain == "div":
        return [s.strip() for s in problem.steps]  # cur/b=q rR: each is one division fact
    if problem.domain == "mixed":
        return [problem.steps[-1].strip()]
    return []


def with_facts(problem) -> str:
    return "Facts: " + "; ".join(facts_for(problem)) + "\n" + problem.worked_prompt


def in_context_use(model, tokenizer, wb, domains: Sequence[str], split: str, n_items: int, n_boot: int,
                   seed: int, batch_size: int = 64) -> dict:
    """Exact match with and without the facts in the prompt, per forbidden domain."""
    out = {}
    for domain in domains:
        problems = wb.splits[split][domain][:n_items]
        recs = wb.exact_match_sets[split][domain][:n_items]
        new_tokens = max_worked_tokens(wb, domain)
        plain, _ = exact_match_hits(model, tokenizer, recs, new_tokens, batch_size=batch_size)
        given, _ = exact_match_hits(model, tokenizer, recs, new_tokens, [with_facts(p) for p in problems],
                                    batch_size=batch_size)
        out[domain] = {"without_facts": bootstrap_ci(plain, n_boot, seed),
                       "with_facts": bootstrap_ci(given, n_boot, seed)}
    return out
