"""In-context use: the facts a question needs are handed over in the prompt.

Data filtering removes knowledge from the weights, not the ability to *use* knowledge given in context
(Shumailov et al. 2024, "UnUnlearning"). So this probe is reported as information, not as pass/fail. The
facts come from the suite: a QA record's optional ``context`` field (the world writes the single-digit
products and long-division steps a problem uses). A domain whose records carry no context is skipped, and
the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from .bootstrap import bootstrap_ci
from .probes import qa_hits


def with_facts(record: dict) -> str:
    return record["context"] + "\n" + record["prompt"]


def in_context_use(model, tokenizer, suite, domains: Sequence[str], split: str, n_items: int, n_boot: int,
                   seed: int, batch_size: int = 64) -> dict:
    """QA accuracy with and without the facts in the prompt, per forbidden domain that has facts."""
    out = {}
    for domain in domains:
        dd = suite[domain]
        recs = [r for r in dd.split_of("qa", split) if r.get("context")][:n_items]
        if not recs:
            out[domain] = {"skipped": "no QA record of this domain carries a `context` (facts)"}
            continue
        plain, _ = qa_hits(model, tokenizer, dd, recs, batch_size=batch_size)
        given, _ = qa_hits(model, tokenizer, dd, recs, [with_facts(r) for r in recs], batch_size=batch_size)
        out[domain] = {"without_facts": bootstrap_ci(plain, n_boot, seed),
                       "with_facts": bootstrap_ci(given, n_boot, seed)}
    return out
