"""The world as data: splits, tokenizer, eval sets, and their files on disk."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import WorldConfig
from ..io import sha256_json, write_jsonl, write_text
from ..suite import LM_EVAL_TASK
from .problems import ALL_DOMAINS, DOMAINS, Difficulty
from .splits import WorldSplits, exact_match_records, make_splits, mc_records
from .tokenizer import train_world_tokenizer


@dataclass
class WorldBundle:
    """Everything the stages need from the world, built deterministically from a WorldConfig."""

    config: WorldConfig
    difficulty: Difficulty
    splits: WorldSplits
    tokenizer: object
    exact_match_sets: dict[str, dict[str, list[dict]]]  # split -> domain -> records
    mc_sets: dict[str, dict[str, list[dict]]]
    data_hash: str


def _build(config: WorldConfig) -> WorldBundle:
    diff = Difficulty(add_digits=config.add_digits, sub_digits=config.sub_digits, mul_digits=config.mul_digits,
                      mul_multiplier_digits=config.mul_multiplier_digits,
                      div_quotient_digits=config.div_quotient_digits, div_divisor_digits=config.div_divisor_digits)
    splits = make_splits(config.seed, diff, config.test_per_domain, config.val_per_domain)
    texts = (p.bare_text + p.worked_text for d in ALL_DOMAINS for p in splits.train[d][:200])
    tokenizer = train_world_tokenizer(texts)
    em, mc = {}, {}
    for split in ("val", "test"):
        em[split] = {d: exact_match_records(splits[split][d]) for d in ALL_DOMAINS}
        mc[split] = {d: mc_records(splits[split][d], diff, seed=config.seed + (1 if split == "val" else 2))
                     for d in ALL_DOMAINS}
    data_hash = sha256_json({s: {d: [p.question for p in splits[s][d]] for d in ALL_DOMAINS}
                             for s in ("train", "val", "test")})
    return WorldBundle(config, diff, splits, tokenizer, em, mc, data_hash)


@lru_cache(maxsize=4)
def _build_cached(config_json: str) -> WorldBundle:
    return _build(WorldConfig.model_validate_json(config_json))


def build_world(config: WorldConfig | None = None) -> WorldBundle:
    """The world for ``config`` (memoised per process: building it takes about a second)."""
    config = config or WorldConfig()
    return _build_cached(config.model_dump_json())


def write_world(config: WorldConfig, out_dir: str | Path) -> dict[str, str]:
    """Write splits, eval sets (lm-eval shape), lm-eval task YAMLs and the tokenizer under ``out_dir``."""
    wb = build_world(config)
    out = Path(out_dir)
    files: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for d in ALL_DOMAINS:
            f = out / "splits" / f"{split}-{d}.jsonl"
            write_jsonl(f, (p.to_record() for p in wb.splits[split][d]))
            files[f"{split}-{d}"] = str(f)
    for split in ("val", "test"):
        for d in ALL_DOMAINS:
            f_em = out / "eval" / f"{split}-{d}-exact.jsonl"
            f_mc = out / "eval" / f"{split}-{d}-mc.jsonl"
            write_jsonl(f_em, wb.exact_match_sets[split][d])
            write_jsonl(f_mc, wb.mc_sets[split][d])
            files[f"{split}-{d}-exact"] = str(f_em)
            files[f"{split}-{d}-mc"] = str(f_mc)
    task_dir = out / "lm_eval_tasks"
    for d in DOMAINS:
        task = f"surgical_arith_{d}"
        write_text(task_dir / f"{task}.yaml", LM_EVAL_TASK.format(
            suite="arithmetic-world", domain=d, split="test", task=task, task_dir=task_dir.resolve(),
            data_file=(out / "eval" / f"test-{d}-mc.jsonl").resolve(), delimiter='""'))
    from .suite import write_world_suite

    files["suite"] = str(write_world_suite(config, out / "suite"))
    wb.tokenizer.save_pretrained(out / "tokenizer")
    files["tokenizer"] = str(out / "tokenizer")
    files["lm_eval_tasks"] = str(task_dir)
    return files
