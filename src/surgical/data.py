"""Encoding of prompt/completion records for training and scoring, shared by every stage.

The one rule that matters across tokenizers: a BOS token is added when the tokenizer adds one
(``add_special_tokens=True``) unless the text already starts with the BOS string, as a chat template's
output does (SmolLM2's template starts with ``<|im_start|>``, which is also its BOS token). So a prompt
is never given two BOS tokens, and a tokenizer that adds none (SmolLM2, GPT-2) gets none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def starts_with_bos(tokenizer, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt (the start of a sequence): the tokenizer's special tokens, no doubled BOS."""
    return tokenizer(text, add_special_tokens=not starts_with_bos(tokenizer, text))["input_ids"]


def prompt_ids_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``prompt_ids`` for many texts, tokenized in (at most) two calls."""
    texts = list(texts)
    out: list[list[int] | None] = [None] * len(texts)
    for add in (True, False):
        idx = [i for i, t in enumerate(texts) if starts_with_bos(tokenizer, t) != add]
        if idx:
            for i, ids in zip(idx, tokenizer([texts[i] for i in idx], add_special_tokens=add)["input_ids"],
                              strict=True):
                out[i] = ids
    return out  # type: ignore[return-value]


def eos_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id


def encode_example(tokenizer, prompt: str, target: str) -> dict:
    """input_ids = [BOS] prompt target EOS; labels mask the prompt with -100 (loss on the target only)."""
    p_ids = prompt_ids(tokenizer, prompt)
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        t_ids = t_ids + [tokenizer.eos_token_id]
    return {"input_ids": p_ids + t_ids, "labels": [-100] * len(p_ids) + t_ids}


class PadCollator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (-100) to the longest sequence of the batch."""

    def __init__(self, pad_id: int | None):
        self.pad_id = pad_id if pad_id is not None else 0

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token its EOS as pad (HF's usual fix); returns the tokenizer."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
