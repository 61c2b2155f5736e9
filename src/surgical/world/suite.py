"""The world as an evaluation suite: it writes its eval sets in the suite format (docs/suites.md), so every
stage measures the demo through the same files and code as a user's own data.

Per domain: ``qa`` (worked prompt -> final ``so N``, scored by ``answer_regex``), ``mc`` (4-way worked
continuations, three of them near misses), ``perplexity`` (held-out worked solutions), ``attack`` (training-split
problems only: the relearning attacker's data and the jailbreaks' shots), and for the forbidden domains the
world-only extras as data: the facts a problem needs (QA ``context``, for the in-context-use probe) and latent
probe records labelled with the answer's last digit at the position where the worked solution writes it.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import yaml

from ..config import WorldConfig
from ..io import surgical_home, write_jsonl, write_text
from .data import build_world
from .problems import FORBIDDEN_DOMAINS, answer_digit_context

ATTACK_PER_DOMAIN = 1000
PROBE_TRAIN_ITEMS = 400
PROBE_TEST_PER_DOMAIN = 100
ANSWER_REGEX = r"so (-?\d+)"


def facts_for(problem) -> list[str]:
    """The forbidden facts ``problem`` needs, without its carries or its final answer (single-digit products
    such as ``7*4=28`` and the long-division steps such as ``25/6=4 r1``)."""
    if problem.domain == "mul":
        a, b = problem.operands
        return sorted({f"{int(x)}*{b}={int(x) * b}" for x in str(a)}) if b < 10 else [
            f"{a}*{int(y)}={a * int(y)}" for y in str(b)]
    if problem.domain == "div":
        return [s.strip() for s in problem.steps]
    if problem.domain == "mixed":
        return [problem.steps[-1].strip()]
    return []


def max_worked_tokens(wb, domain: str) -> int:
    """A generation budget that fits the longest worked solution of ``domain`` (plus slack)."""
    longest = max(len(p.worked_target) for p in wb.splits.test[domain])
    return int(math.ceil(longest * 1.2)) + 4


def qa_record(p) -> dict:
    rec = {"prompt": p.worked_prompt, "answers": [str(p.answer)], "target": p.worked_target, "domain": p.domain}
    facts = facts_for(p)
    if facts:
        rec["context"] = "Facts: " + "; ".join(facts)
    return rec


def write_world_suite(config: WorldConfig, out_dir: str | Path) -> Path:
    """Write the world's suite (manifest + JSONL files) into ``out_dir``; returns the manifest's path."""
    wb = build_world(config)
    out = Path(out_dir)
    domains = []
    for d in ("add", "sub", "mul", "div", "mixed"):
        entry: dict = {"name": d, "role": "forget" if d in FORBIDDEN_DOMAINS else "retain",
                       "scorer": "regex", "answer_regex": ANSWER_REGEX, "max_new_tokens": max_worked_tokens(wb, d),
                       "stop_at_newline": True, "target_delimiter": ""}
        if d == "mixed":
            entry.update(gate=False, description="(a+b)*c problems: forbidden, never taught; measured as a "
                         "cross-domain figure, not gated")
        for kind in ("qa", "mc", "perplexity"):
            entry[kind] = {}
            for split in ("test", "val"):
                problems = wb.splits[split][d]
                if kind == "qa":
                    recs = [qa_record(p) for p in problems]
                elif kind == "mc":
                    recs = wb.mc_sets[split][d]
                else:
                    recs = [{"prompt": p.worked_prompt, "completion": p.worked_target} for p in problems]
                if recs:
                    write_jsonl(out / f"{split}-{d}-{kind}.jsonl", recs)
                    entry[kind][split] = f"{split}-{d}-{kind}.jsonl"
            if not entry[kind]:
                del entry[kind]
        rng = random.Random(config.seed * 7 + len(domains))
        train = wb.splits.train[d]
        attack = rng.sample(train, min(ATTACK_PER_DOMAIN, len(train)))
        write_jsonl(out / f"attack-{d}.jsonl", [{"prompt": p.worked_prompt, "completion": p.worked_target}
                                               for p in attack])
        entry["attack"] = f"attack-{d}.jsonl"
        domains.append(entry)
    _write_probe(wb, config, out, [e for e in domains if e["role"] == "forget" and e.get("gate", True)])
    manifest = {"name": "arithmetic-world", "description": "The embedded arithmetic world's eval sets "
                f"(world seed {config.seed}; data {wb.data_hash[:12]}).", "chat": False, "domains": domains}
    path = out / "suite.yaml"
    write_text(path, "# Written by `surgical world`; see docs/suites.md.\n"
               + yaml.safe_dump(manifest, sort_keys=False, width=110))
    return path


def _write_probe(wb, config: WorldConfig, out: Path, forget_entries: list[dict]) -> None:
    """Latent-probe records (the world's extra): label = the answer's last digit, text = the worked solution
    teacher-forced up to where that digit is written. One shared train/test set over the forbidden domains,
    referenced by each of them."""
    names = [e["name"] for e in forget_entries]
    rng = random.Random(config.seed)
    pool = [p for d in names for p in wb.splits.train[d]]
    train = rng.sample(pool, min(PROBE_TRAIN_ITEMS, len(pool)))
    test = [p for d in names for p in wb.splits.test[d][:PROBE_TEST_PER_DOMAIN]]
    for split, probs in (("train", train), ("test", test)):
        write_jsonl(out / f"probe-{split}.jsonl", [{"text": answer_digit_context(p), "label": p.answer % 10}
                                                   for p in probs])
    for e in forget_entries:
        e["probe"] = {"train": "probe-train.jsonl", "test": "probe-test.jsonl"}


def world_suite_path(config: WorldConfig | None = None) -> Path:
    """The world's suite for ``config``, written once under ``$SURGICAL_HOME/worlds/<data hash>/suite``
    (the `--demo` flags use it; a pipeline writes its own copy in RUN_DIR/data/suite)."""
    config = config or WorldConfig()
    wb = build_world(config)
    from ..io import sha256_json

    key = sha256_json({"world": config.model_dump(), "data": wb.data_hash, "format": 1})[:16]
    d = surgical_home() / "worlds" / key / "suite"
    if not (d / "suite.yaml").exists():
        tmp = d.parent / f".suite.tmp.{random.randrange(1 << 30)}"
        write_world_suite(config, tmp)
        if not (d / "suite.yaml").exists():
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return d / "suite.yaml"
