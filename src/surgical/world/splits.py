"""Disjoint train/validation/test splits of the arithmetic world, and its eval sets.

Eval sets come in two forms, both in the lm-evaluation-harness shape:

* exact-match: ``{"question", "answer", "target", "domain"}``; the model greedily works the problem
  from ``question`` (the worked prompt, ``"07+45:"``) and its final ``so N`` is compared with ``answer``;
* 4-way multiple choice: ``{"question", "choices", "gold", "domain"}`` whose choices are whole worked
  continuations, three of them near misses (a dropped carry or borrow, or a step off by one digit).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .problems import (
    ALL_DOMAINS,
    Difficulty,
    Fault,
    Problem,
    enumerate_problems,
    faulty_worked_target,
    parse_worked_answer,
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


def mc_choices(p: Problem, difficulty: Difficulty, rng: random.Random) -> tuple[list[str], int]:
    """Four worked continuations of ``p`` (the right one and three near misses) and the gold index.

    Each near miss is a self-consistent wrong derivation: a dropped carry/borrow/remainder, or one step
    whose result is off by one with every later step following from it. Telling them apart needs the
    domain's facts (the product 7*3, the quotient 25/7), not just the format."""
    faults = [Fault("slip", k, d) for k in range(len(p.steps)) for d in (1, -1)]
    rng.shuffle(faults)
    # Larger slips only when off-by-one cannot give three distinct near misses (answers near 0 or 9).
    wider = [Fault("slip", k, d) for k in range(len(p.steps)) for d in (2, -2, 3, -3)]
    rng.shuffle(wider)
    faults = [Fault("drop_carry")] + faults + wider
    distractors: list[str] = []
    for f in faults:
        t = faulty_worked_target(p, f, difficulty)
        # A near miss must end in a wrong answer, or it is not a wrong choice.
        if t is not None and t not in distractors and parse_worked_answer(t) != p.answer:
            distractors.append(t)
        if len(distractors) == 3:
            break
    if len(distractors) < 3:
        raise ValueError(f"cannot build 3 distractors for {p.question!r}")
    choices = distractors + [p.worked_target]
    rng.shuffle(choices)
    return choices, choices.index(p.worked_target)


def exact_match_records(problems: list[Problem]) -> list[dict]:
    """Exact-match eval records: greedy worked generation from ``question``, final answer compared."""
    return [
        {"question": p.worked_prompt, "answer": p.answer, "target": p.worked_target, "domain": p.domain,
         "bare_question": p.bare_prompt, "bare_target": p.bare_answer}
        for p in problems
    ]


def mc_records(problems: list[Problem], difficulty: Difficulty, seed: int) -> list[dict]:
    """4-way multiple-choice eval records (lm-eval shape: question, choices, gold) over worked
    continuations. Mixed problems have no MC form and are skipped."""
    rng = random.Random(seed)
    out = []
    for p in problems:
        if p.domain == "mixed":
            continue
        choices, gold = mc_choices(p, difficulty, rng)
        out.append({"question": p.worked_prompt, "choices": choices, "gold": gold, "domain": p.domain,
                    "answer": p.answer})
    return out
