"""The map's inputs: forget and retain examples, read from JSONL or taken from a suite's attack records, and
encoded.

A record is ``{"prompt", "completion"}`` (only the completion's tokens are scored, as in
``surgical.data.encode_example``) or ``{"text"}`` (every token after the first is scored). ``domain`` is
optional and groups the validation figures.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import PadCollator, encode_example
from ..io import JsonlError, iter_jsonl


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    domain: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


class MapDataError(ValueError):
    """A forget/retain file that cannot be used; the message names the file, line and field."""


def load_examples(path: str | Path, default_domain: str) -> list[Example]:
    """Read prompt+completion (or text) records; raises MapDataError naming the first bad line and field."""
    path = Path(path)
    if not path.is_file():
        raise MapDataError(f"{path}: no such file")
    out = []
    for line_no, rec in iter_jsonl(path, strict=False):
        if isinstance(rec, JsonlError):
            raise MapDataError(str(rec))
        domain = str(rec.get("domain") or default_domain)
        if "completion" in rec or "prompt" in rec:
            for field in ("prompt", "completion"):
                if not isinstance(rec.get(field), str):
                    raise MapDataError(f"{path}:{line_no}: field {field!r} must be a string")
            if not rec["completion"]:
                raise MapDataError(f"{path}:{line_no}: field 'completion' is empty")
            out.append(Example(rec["prompt"], rec["completion"], domain))
        elif isinstance(rec.get("text"), str) and rec["text"]:
            out.append(Example("", rec["text"], domain))
        else:
            raise MapDataError(f"{path}:{line_no}: needs 'prompt' and 'completion' strings, or a 'text' string")
    if not out:
        raise MapDataError(f"{path}: no records")
    return out


def suite_examples(suite, domains, n: int, seed: int) -> list[Example]:
    """``n`` examples drawn evenly from the ``attack`` records ({prompt, completion}: training-side data, never
    the eval items) of ``domains`` of a loaded suite; a domain without attack records is skipped, and none at all
    is a SuiteError naming the domains."""
    from ..suite import SuiteError

    pools = {d: suite[d].attack for d in domains if d in suite.domains and suite[d].attack}
    if not pools:
        raise SuiteError(f"suite {suite.name!r}: no `attack` records in domain(s) {list(domains)} to map on "
                         "(give the domains an `attack` file, or pass --forget/--retain JSONL)")
    rng = random.Random(seed)
    out = []
    per = -(-n // len(pools))
    for d, recs in pools.items():
        pool = [Example(r["prompt"], r["completion"], d) for r in recs if r["completion"]]
        rng.shuffle(pool)
        out += pool[:per]
    rng.shuffle(out)
    return out[:n]


def sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded sample of at most ``n`` examples (all of them, shuffled, if fewer)."""
    rng = random.Random(seed)
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    return [examples[i] for i in idx[:n]]


def encode(tokenizer, ex: Example, max_length: int) -> dict:
    """input_ids and labels (-100 on unscored tokens) of one example."""
    if ex.prompt:
        enc = encode_example(tokenizer, ex.prompt, ex.completion)
    else:
        ids = tokenizer(ex.completion, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        enc = {"input_ids": ids, "labels": [-100] + ids[1:]}
    return {k: v[:max_length] for k, v in enc.items()}


def batches(tokenizer, examples: list[Example], batch_size: int, max_length: int) -> list[dict]:
    """Right-padded batches (input_ids, attention_mask, labels) in order."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = PadCollator(pad)
    encoded = [encode(tokenizer, ex, max_length) for ex in examples]
    return [collate(encoded[i:i + batch_size]) for i in range(0, len(encoded), batch_size)]


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Bool (B, T): positions whose output predicts a scored token (label of the next position != -100)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask
