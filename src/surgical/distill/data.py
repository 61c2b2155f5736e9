"""Distill data: reading records, encoding them with their loss masks, the interleaved gold/forbidden
training stream, and the collator.

A record is ``{"prompt", "completion", ["replaced_spans"], ["domain"]}`` or ``{"text"}``. Encoding follows
``surgical.data.encode_example`` (BOS prompt completion EOS, labels masking the prompt), and adds:

* ``kd_mask``: 1 where the student imitates the teacher's distribution (completion tokens, or every token
  with ``kd_tokens="all"``), 0 on tokens of a constitutional ``replaced_span``: there the target is the
  replacement text, learned with CE (``ce_mask``), never the teacher's logits.
* ``ce_mask``: 1 on replaced tokens always; on every label token when a CE weight is used.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data import encode_example, prompt_ids
from ..io import JsonlError, iter_jsonl


class DataError(ValueError):
    """A distill input that cannot be used; the message names the file, line and field."""


def usable(rec) -> bool:
    """Whether a record has what distill trains on: string prompt + completion, or a string text."""
    if not isinstance(rec, dict):
        return False
    if "completion" in rec:
        return isinstance(rec.get("prompt", ""), str) and isinstance(rec["completion"], str)
    return isinstance(rec.get("text"), str) and bool(rec["text"].strip())


def read_records(path: str | Path, skip_unusable: bool = False) -> list[dict]:
    """Records of a JSONL file, checked for the fields distill needs (prompt+completion, or text).

    ``skip_unusable`` is for forbidden data only: curate's quarantine.jsonl also holds what it could not read
    (``{"raw": ...}``) or score, which the penalty cannot train on; those lines are skipped (never the gold data's,
    where a bad record is an error)."""
    out = []
    for line_no, rec in iter_jsonl(path, strict=False):
        if skip_unusable and (isinstance(rec, JsonlError) or not usable(rec)):
            continue
        if isinstance(rec, JsonlError):
            raise DataError(str(rec))
        if "completion" in rec:
            if not isinstance(rec.get("prompt", ""), str) or not isinstance(rec["completion"], str):
                raise DataError(f"{path}:{line_no}: fields 'prompt' and 'completion' must be strings")
        elif not isinstance(rec.get("text"), str):
            raise DataError(f"{path}:{line_no}: a record needs 'prompt'+'completion' or 'text'")
        out.append(rec)
    if not out and not skip_unusable:
        raise DataError(f"{path}: no records")
    return out


def _own_kd_mask(tokenizer, prompt: str, completion: str, spans) -> list[int]:
    """Per-token KD mask aligned with ``encode_example(tok, prompt, completion)``: 0 on completion tokens
    that overlap a replaced span. (Stand-in for ``surgical.curate.constitution.token_kd_mask``.)"""
    p_ids = prompt_ids(tokenizer, prompt)
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    mask = [1] * len(p_ids)
    for start, end in enc["offset_mapping"]:
        mask.append(0 if any(start < s_end and end > s_start for s_start, s_end, *_ in spans) else 1)
    return mask + [1]  # EOS


def kd_token_mask(tokenizer, prompt: str, completion: str, spans) -> list[int]:
    """curate's ``token_kd_mask`` when it exists, else our own equivalent."""
    if not spans:
        n = len(prompt_ids(tokenizer, prompt))
        return [1] * (n + len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1)
    try:
        from ..curate.constitution import token_kd_mask  # written in parallel by the curate stage
    except ImportError:
        return _own_kd_mask(tokenizer, prompt, completion, spans)
    return list(token_kd_mask(tokenizer, prompt, completion, spans))


def encode_record(tokenizer, rec: dict, kd_tokens: str = "completion", max_length: int = 128,
                  refusal_text: str | None = None) -> dict:
    """Token ids, labels, kd_mask and ce_mask of one record (plus a refusal encoding if asked)."""
    if "completion" in rec:
        prompt, completion = rec.get("prompt", ""), rec["completion"]
    else:
        prompt, completion = "", rec["text"]
    enc = encode_example(tokenizer, prompt, completion)
    ids, labels = enc["input_ids"], enc["labels"]
    kd = kd_token_mask(tokenizer, prompt, completion, rec.get("replaced_spans") or [])
    if len(kd) != len(ids):
        raise DataError(f"record {rec.get('id', '?')}: kd mask has {len(kd)} tokens, the encoding {len(ids)}")
    if kd_tokens == "all":
        labels = [-100] + ids[1:]  # every token but BOS is a prediction target
    target = [int(label != -100) for label in labels]
    out = {
        "input_ids": ids[:max_length],
        "labels": labels[:max_length],
        "kd_mask": [t * k for t, k in zip(target, kd, strict=True)][:max_length],
        "replaced_mask": [t * (1 - k) for t, k in zip(target, kd, strict=True)][:max_length],
    }
    if refusal_text is not None:
        ref = encode_example(tokenizer, prompt, refusal_text)
        out["refusal_ids"], out["refusal_labels"] = ref["input_ids"][:max_length], ref["labels"][:max_length]
    return out


def _domain_groups(records: list[dict], offset: int) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[str(r.get("domain", ""))].append(offset + i)
    return [groups[k] for k in sorted(groups)]


def build_stream(n_gold: int, gold_records: list[dict], forbidden_records: list[dict], steps: int, batch_size: int,
                 forbidden_ratio: float, forbidden_as_kd: bool, seed: int) -> list[int]:
    """Indices into ``gold + forbidden`` for ``steps * batch_size`` training rows, in batch order.

    Each batch holds ``round(batch_size * forbidden_ratio)`` forbidden rows (shuffled among the gold rows),
    so forbidden and gold data interleave at a fixed ratio. Within a pool, the domain (record field
    ``domain``) is drawn uniformly and then a record of it, so small domains are not drowned out.
    With ``forbidden_as_kd`` (plain KD), forbidden records simply join the gold pool.
    """
    rng = random.Random(seed)
    gold_groups = _domain_groups(gold_records, 0)
    forb_groups = _domain_groups(forbidden_records, n_gold) if forbidden_records else []
    if forbidden_as_kd:
        gold_groups, forb_groups = gold_groups + forb_groups, []
    n_forb = round(batch_size * forbidden_ratio) if forb_groups else 0
    stream = []
    for _ in range(steps):
        batch = [rng.choice(rng.choice(gold_groups)) for _ in range(batch_size - n_forb)]
        batch += [rng.choice(rng.choice(forb_groups)) for _ in range(n_forb)]
        rng.shuffle(batch)
        stream.extend(batch)
    return stream


class StreamDataset(Dataset):
    """The training stream: row ``i`` is encoded example ``stream[i]``, with its role attached."""

    def __init__(self, encoded: list[dict], stream: list[int], forbidden_from: int, forbidden_as_kd: bool):
        self.encoded, self.stream = encoded, stream
        self.forbidden_from, self.forbidden_as_kd = forbidden_from, forbidden_as_kd

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> dict:
        idx = self.stream[i]
        forbidden = idx >= self.forbidden_from and not self.forbidden_as_kd
        return {**self.encoded[idx], "example_index": idx, "forbidden": int(forbidden)}


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class DistillCollator:
    """Right-pads a batch: input_ids, attention_mask, labels, kd_mask, replaced_mask, forbidden, and when a
    top-k cache is given the teacher's cached values / indices / other-bucket per position. Forbidden rows
    that carry a refusal encoding add refusal_input_ids / refusal_attention_mask / refusal_labels."""

    def __init__(self, pad_id: int, cache=None):
        self.pad_id, self.cache = pad_id, cache

    def __call__(self, features: list[dict]) -> dict:
        batch = {
            "input_ids": _pad([f["input_ids"] for f in features], self.pad_id),
            "attention_mask": _pad([[1] * len(f["input_ids"]) for f in features], 0),
            "labels": _pad([f["labels"] for f in features], -100),
            "kd_mask": _pad([f["kd_mask"] for f in features], 0),
            "replaced_mask": _pad([f["replaced_mask"] for f in features], 0),
            "forbidden": torch.tensor([f["forbidden"] for f in features], dtype=torch.long),
            "example_index": torch.tensor([f["example_index"] for f in features], dtype=torch.long),
        }
        refusals = [f for f in features if f["forbidden"] and "refusal_ids" in f]
        if refusals:
            batch["refusal_input_ids"] = _pad([f["refusal_ids"] for f in refusals], self.pad_id)
            batch["refusal_attention_mask"] = _pad([[1] * len(f["refusal_ids"]) for f in refusals], 0)
            batch["refusal_labels"] = _pad([f["refusal_labels"] for f in refusals], -100)
        if self.cache is not None:
            width = batch["input_ids"].shape[1]
            values, indices, other = self.cache.batch([f["example_index"] for f in features], width)
            batch.update(teacher_values=values, teacher_indices=indices, teacher_other=other)
        return batch
