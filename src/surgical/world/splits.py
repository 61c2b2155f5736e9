"""Disjoint train/validation/test splits of the arithmetic world, and its eval sets.

Eval sets come in two forms, both in the lm-evaluation-harness shape:

* exact-match: ``{"question", "answer", "target", "domain"}``; the model greedily completes ``question``;
* 4-way multiple choice: ``{"question", "choices", "gold", "domain"}`` with near-miss distractors
  (a digit off by one, a swapped operation, a dropped carry or borrow).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .problems import (
    ALL_DOMAINS,
    Difficulty,
    Problem,
    encode_bare_answer,
    enumerate_problems,
)


@dataclass
class WorldSplits:
    """Problems per split and domain: ``splits["test"]["mul"]`` is a list of Problems."""

    train: dict[str, list[Problem]]
    val: dict[str, list[Problem]]
    test: dict[str, list[Problem]]

    def __getitem__(self, name: str) -> dict[str, list[Problem]]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def make_splits(
    seed: int,
    difficulty: Difficulty,
    test_per_domain: int = 200,
    val_per_domain: int = 100,
    domains: tuple[str, ...] = ALL_DOMAINS,
) -> WorldSplits:
    """Enumerate each domain's problem space, shuffle it with ``seed`` and cut it into disjoint splits.

    The test and validation sets are never shrunk: a domain whose space is smaller than
    ``test + val + 1`` raises instead."""
    train, val, test = {}, {}, {}
    for i, domain in enumerate(domains):
        problems = enumerate_problems(domain, difficulty)
        rng = random.Random(seed * 1000 + i)
        rng.shuffle(problems)
        n_test = min(test_per_domain, len(problems) // 4) if domain == "mixed" else test_per_domain
        n_val = min(val_per_domain, len(problems) // 8) if domain == "mixed" else val_per_domain
        if n_test + n_val >= len(problems):
            raise ValueError(
                f"domain {domain!r} has only {len(problems)} problems at this difficulty; "
                f"cannot hold out {n_test} test + {n_val} validation problems"
            )
        test[domain] = problems[:n_test]
        val[domain] = problems[n_test : n_test + n_val]
        train[domain] = problems[n_test + n_val :]
    return WorldSplits(train=train, val=val, test=test)


def _dropped_carry(p: Problem) -> int | None:
    """The answer a solver gets when it forgets every carry/borrow (a classic near miss)."""
    q = p.question
    if p.domain == "add":
        a, b = q.split("+")
        w = max(len(a), len(b))
        return int("".join(str((int(x) + int(y)) % 10) for x, y in zip(a.zfill(w), b.zfill(w), strict=True)))
    if p.domain == "sub":
        a, b = q.split("-")
        return int("".join(str(abs(int(x) - int(y))) for x, y in zip(a, b.zfill(len(a)), strict=True)))
    if p.domain == "mul":
        a, b = q.split("*")
        if len(b) != 1:
            return None
        return int("".join(str(int(x) * int(b) % 10) for x in a))
    if p.domain == "div":
        a, b = q.split("/")
        # Dividing each digit separately, ignoring the remainder carried into the next digit.
        return int("".join(str(int(x) // int(b)) for x in a))
    return None


def _swapped_op(p: Problem) -> list[int]:
    q = p.question
    for sym in "+-*/":
        if sym in q and not q.startswith("("):
            a, b = (int(x) for x in q.split(sym))
            cands = {"+": [a - b, a * b], "-": [a + b, a * b], "*": [a + b, a - b], "/": [a - b, a + b]}[sym]
            return [c for c in cands if c >= 0]
    return []


def mc_choices(p: Problem, difficulty: Difficulty, rng: random.Random) -> tuple[list[str], int]:
    """Four bare-answer choices (the right one and three near misses) and the gold index."""
    width = difficulty.answer_width(p.domain)
    limit = 10**width
    cands: list[int] = []
    dc = _dropped_carry(p)
    if dc is not None:
        cands.append(dc)
    cands += _swapped_op(p)
    for k in range(width):  # one digit off by one
        for s in (1, -1):
            cands.append(p.answer + s * 10**k)
    rng.shuffle(cands)
    # Keep the structured near misses first (dropped carry, swapped op), then digit slips.
    ordered = ([dc] if dc is not None else []) + [c for c in cands if c != dc]
    distractors: list[int] = []
    for c in ordered:
        if 0 <= c < limit and c != p.answer and c not in distractors:
            distractors.append(c)
        if len(distractors) == 3:
            break
    while len(distractors) < 3:  # tiny answers: fall back on nearby numbers
        c = rng.randrange(limit)
        if c != p.answer and c not in distractors:
            distractors.append(c)
    values = distractors + [p.answer]
    rng.shuffle(values)
    return [encode_bare_answer(p.domain, v, difficulty) for v in values], values.index(p.answer)


def exact_match_records(problems: list[Problem]) -> list[dict]:
    """Exact-match eval records for bare-form greedy generation."""
    return [
        {"question": p.bare_prompt, "answer": p.answer, "target": p.bare_answer, "domain": p.domain,
         "worked_prompt": p.worked_prompt}
        for p in problems
    ]


def mc_records(problems: list[Problem], difficulty: Difficulty, seed: int) -> list[dict]:
    """4-way multiple-choice eval records (lm-eval shape: question, choices, gold)."""
    rng = random.Random(seed)
    out = []
    for p in problems:
        choices, gold = mc_choices(p, difficulty, rng)
        out.append({"question": p.bare_prompt, "choices": choices, "gold": gold, "domain": p.domain,
                    "answer": p.answer})
    return out


LM_EVAL_TASK_TEMPLATE = """\
# lm-evaluation-harness task for the surgical arithmetic world ({domain}, 4-way multiple choice).
# Run: HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL_DIR --device cpu \\
#        --include_path {task_dir} --tasks {task}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files: {data_file}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
