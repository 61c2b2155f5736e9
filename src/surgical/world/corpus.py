"""The world as a corpus: its problems as labelled text records (JSONL-ready), the demo's curate input."""

from __future__ import annotations


def world_record(problem, index: int | str) -> dict:
    """The world corpus record of one Problem (the file contract between curate and the later stages)."""
    return {
        "id": f"{problem.domain}-{index}",
        "text": problem.worked_text,
        "prompt": problem.worked_prompt,
        "completion": problem.worked_target,
        "domain": problem.domain,
        "answer": problem.answer,
        "label": "forbidden" if problem.forbidden else "allowed",
    }


def world_corpus(world_cfg=None, split: str = "train", domains: tuple[str, ...] | None = None) -> list[dict]:
    """The arithmetic world's ``split`` as a labelled corpus, domains interleaved (round robin), so a
    prefix of it is a fair sample."""
    from . import ALL_DOMAINS, build_world

    wb = build_world(world_cfg)
    domains = tuple(domains or ALL_DOMAINS)
    per = {d: wb.splits[split][d] for d in domains}
    out: list[dict] = []
    longest = max(len(v) for v in per.values())
    for i in range(longest):
        for d in domains:
            if i < len(per[d]):
                out.append(world_record(per[d][i], f"{split}-{i}"))
    return out
