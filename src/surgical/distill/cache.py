"""Offline teacher logits: the teacher's top-k logits per token, stored in safetensors shards.

Per token the cache holds the k largest logits, their token ids and the logsumexp of all other logits divided
by the cache temperature (float32, the "other" bucket). With that bucket the student and the teacher are
compared on the same k+1 outcomes, so the KD loss stays a proper divergence (it is 0 only when the bucketed
distributions agree, and equals the full-vocabulary loss when k = V).

Storage per token (``cache_bytes_per_token``):

* token ids: uint16 when the vocabulary fits in 65,536 ids (SmolLM2's 49,152 does), else int32;
* values, ``value_format="fp16"``: the k logits in float16;
* values, ``value_format="u8"``: the k logits as uint8 steps below the top-1 logit, with one float16 step size
  per token (``q_i = round((v_0 - v_i) / step)``, ``step = (v_0 - v_{k-1}) / 255``), and the "other" bucket
  stored relative to ``v_0 / T``. The bucket distribution is a softmax, so it does not change when every logit
  and the bucket shift together; the loss therefore reads the shifted values directly. The rounding error is at
  most half a step (about 0.02-0.05 nats at SmolLM2's top-32 spread); ``benchmarks/bench_distill.py --smollm2``
  measures what it does to the KD loss against the full-vocabulary loss.

At k=32 that is 196 (int32 + fp16), 132 (uint16 + fp16) or 102 (uint16 + u8) bytes per token.

Shards are read memory-mapped through ``safetensors.safe_open``, so a cache larger than RAM works.
Layout: ``cache.json`` (k, temperature, vocab size, value format, teacher and data hashes, shard list) and
``shard-NNNNN.safetensors`` with tensors ``values [T, k]``, ``indices [T, k]``, ``other [T]``, ``offsets
[n_examples + 1]`` (the first token row of each example in the shard) and, for ``u8``, ``step [T]``.

A cache is keyed by the teacher's hash, the data's hashes (under the run's encoding), k, the temperature and
the value format; ``TopKCache`` refuses a cache made under any other key, so a shared cache directory can never
hand one teacher's logits to another teacher's student.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..io import atomic_path, read_json, write_json
from .losses import topk_cache_entry


class CacheError(ValueError):
    """A logits cache that does not match the run (other data, other k/temperature, or missing files)."""


VALUE_FORMATS = ("fp16", "u8")


def index_dtype(vocab_size: int) -> torch.dtype:
    """The narrowest integer dtype that holds every token id of the vocabulary."""
    return torch.uint16 if vocab_size <= 1 << 16 else torch.int32


def cache_bytes_per_token(k: int, vocab_size: int | None = None, value_format: str = "fp16") -> int:
    """Bytes per token of the cache: k indices (uint16 when ``vocab_size`` <= 65,536, else int32; int32 when the
    vocabulary is not given), k values (fp16, or u8 plus one fp16 step) and one fp32 "other" bucket."""
    if value_format not in VALUE_FORMATS:
        raise ValueError(f"unknown cache value format {value_format!r}; expected one of {VALUE_FORMATS}")
    idx = 2 if vocab_size is not None and index_dtype(vocab_size) == torch.uint16 else 4
    val = 2 * k if value_format == "fp16" else k + 2
    return idx * k + val + 4


def encode_values(values: torch.Tensor, other: torch.Tensor, temperature: float, value_format: str) -> dict:
    """The stored tensors of ``values [T, k]`` (top-k logits, descending) and ``other [T]`` in ``value_format``."""
    if value_format == "fp16":
        return {"values": values.half(), "other": other.float()}
    if value_format != "u8":
        raise ValueError(f"unknown cache value format {value_format!r}; expected one of {VALUE_FORMATS}")
    top = values[:, :1].float()
    gap = top - values.float()  # >= 0, increasing along k
    step = (gap[:, -1] / 255.0).half().float()  # rounded to what is stored, so q uses the step the reader sees
    step = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round(gap / step[:, None]).clamp(0, 255).to(torch.uint8)
    return {"values": q, "step": step.half(), "other": (other.float() - top[:, 0] / temperature).float()}


def decode_values(stored_values: torch.Tensor, step: torch.Tensor | None) -> torch.Tensor:
    """float32 logits (shifted by the top-1 logit for u8) from stored values."""
    if step is None:
        return stored_values.float()
    return -stored_values.float() * step.float()[:, None]


def data_parallel() -> tuple[int, int, object]:
    """(rank, world size, barrier) of this process: under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1)
    the process group is brought up through accelerate's ``PartialState`` (gloo on CPU, nccl on GPU); otherwise
    (0, 1, a no-op)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True, CPU ranks each think they are alone
    return state.process_index, state.num_processes, state.wait_for_everyone


@torch.no_grad()
def cache_logits(teacher, encoded: list[dict], out_dir: str | Path, k: int, temperature: float = 1.0,
                 gold_sha256: str = "", forbidden_sha256: str = "", batch_size: int = 64, shard_examples: int = 8192,
                 pad_id: int = 0, progress=None, rank: int = 0, world_size: int = 1, barrier=None,
                 teacher_sha256: str = "", value_format: str = "fp16") -> dict | None:
    """Run ``teacher`` over every encoded example and write its top-k logits per position. Returns cache.json.
    ``teacher_sha256`` (the teacher's ``sha256_path``) goes into the cache's key; ``value_format`` is fp16 or u8.

    Data-parallel: with ``world_size`` > 1, rank r writes shards r, r + W, r + 2W, ... (a shard is
    ``shard_examples`` consecutive examples, so every shard file is the one a single process writes); after
    ``barrier`` rank 0 writes cache.json and returns it, the other ranks return None."""
    teacher.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    k = min(k, vocab)
    cache_bytes_per_token(k, vocab, value_format)  # rejects an unknown format before any work
    ix_dtype = index_dtype(vocab)
    device = next(teacher.parameters()).device
    t0 = time.perf_counter()
    starts = list(range(0, len(encoded), shard_examples))
    for s_i, shard_start in enumerate(starts):
        if s_i % world_size != rank:
            continue
        chunk = encoded[shard_start : shard_start + shard_examples]
        values, indices, others, steps, offsets = [], [], [], [], [0]
        for b in range(0, len(chunk), batch_size):
            rows = [e["input_ids"] for e in chunk[b : b + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            v, ix, other = topk_cache_entry(logits, k, temperature)
            for i, r in enumerate(rows):
                enc = encode_values(v[i, : len(r)], other[i, : len(r)], temperature, value_format)
                values.append(enc["values"])
                others.append(enc["other"])
                if "step" in enc:
                    steps.append(enc["step"])
                indices.append(ix[i, : len(r)].int().to(ix_dtype))
                offsets.append(offsets[-1] + len(r))
            if progress is not None:
                progress(len(rows))
        tensors = {"values": torch.cat(values), "indices": torch.cat(indices), "other": torch.cat(others).float(),
                   "offsets": torch.tensor(offsets, dtype=torch.long)}
        if steps:
            tensors["step"] = torch.cat(steps)
        from safetensors.torch import save_file

        with atomic_path(out_dir / _shard_name(s_i)) as tmp:
            save_file(tensors, str(tmp))
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    shards = [{"file": _shard_name(s_i), "first_example": start, "n_examples": len(encoded[start : start + shard_examples])}
              for s_i, start in enumerate(starts)]
    missing = [s["file"] for s in shards if not (out_dir / s["file"]).exists()]
    if missing:
        raise CacheError(f"{out_dir}: shard(s) {missing} were not written (did every rank run?)")
    meta = {
        "k": k, "temperature": temperature, "vocab_size": vocab, "value_format": value_format,
        "index_dtype": str(ix_dtype).removeprefix("torch."), "teacher_sha256": teacher_sha256,
        "n_examples": len(encoded),
        "n_tokens": sum(len(e["input_ids"]) for e in encoded),
        "gold_sha256": gold_sha256, "forbidden_sha256": forbidden_sha256, "shards": shards,
        "bytes_per_token": cache_bytes_per_token(k, vocab, value_format),
        "full_logits_bytes_per_token_fp32": 4 * vocab, "full_logits_bytes_per_token_fp16": 2 * vocab,
        "total_bytes": sum((out_dir / s["file"]).stat().st_size for s in shards),
        "world_size": world_size,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    write_json(out_dir / "cache.json", meta)
    return meta


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


class TopKCache:
    """Memory-mapped reader of a logits cache; ``batch`` returns padded tensors for a list of examples."""

    def __init__(self, cache_dir: str | Path, gold_sha256: str | None = None, forbidden_sha256: str | None = None,
                 temperature: float | None = None, teacher_sha256: str | None = None, k: int | None = None,
                 value_format: str | None = None):
        """Open a cache, checking it was built by the same teacher, on the same gold data (and the same forbidden
        data when the run uses forbidden records; a gold-only run can read a gold+forbidden cache, as gold comes
        first), with the same k (capped at the vocabulary), temperature and value format. A check is skipped
        only where its argument is None."""
        from safetensors import safe_open

        self.dir = Path(cache_dir)
        if not (self.dir / "cache.json").exists():
            raise CacheError(f"{self.dir}: no cache.json (run `surgical distill cache-logits` first)")
        self.meta = read_json(self.dir / "cache.json")
        for key, want in (("gold_sha256", gold_sha256), ("forbidden_sha256", forbidden_sha256)):
            if want and self.meta.get(key) != want:
                raise CacheError(f"{self.dir}: the cache was built on other {key.split('_')[0]} data "
                                 f"({key} differs); rebuild it with `surgical distill cache-logits`")
        if teacher_sha256 is not None and self.meta.get("teacher_sha256") != teacher_sha256:
            raise CacheError(f"{self.dir}: the cache was built from another teacher (teacher_sha256 "
                             f"{str(self.meta.get('teacher_sha256') or 'not recorded')[:12]} != {teacher_sha256[:12]}); "
                             "rebuild it with `surgical distill cache-logits` or point cache_dir elsewhere")
        if k is not None and self.meta["k"] != min(k, self.meta["vocab_size"]):
            raise CacheError(f"{self.dir}: cache k={self.meta['k']} != run cache_top_k={k}; rebuild the cache")
        if value_format is not None and self.meta.get("value_format", "fp16") != value_format:
            raise CacheError(f"{self.dir}: cache value format {self.meta.get('value_format', 'fp16')!r} != run "
                             f"cache_values {value_format!r}; rebuild the cache")
        if temperature is not None and abs(self.meta["temperature"] - temperature) > 1e-9:
            raise CacheError(f"{self.dir}: cache temperature {self.meta['temperature']} != run temperature "
                             f"{temperature} (the 'other' bucket depends on it); rebuild the cache")
        self.k = self.meta["k"]
        self._files, self._where = [], {}
        for s_i, shard in enumerate(self.meta["shards"]):
            f = safe_open(str(self.dir / shard["file"]), framework="pt")
            offsets = f.get_tensor("offsets").tolist()
            self._files.append(f)
            for j in range(shard["n_examples"]):
                self._where[shard["first_example"] + j] = (s_i, offsets[j], offsets[j + 1])

    def __len__(self) -> int:
        return self.meta["n_examples"]

    def example(self, index: int):
        """(values [L, k] fp32, indices [L, k] int64, other [L] fp32) of one example; for a u8 cache the values
        and ``other`` are shifted by the top-1 logit (the loss's softmax is shift-invariant)."""
        try:
            s_i, a, b = self._where[index]
        except KeyError:
            raise CacheError(f"{self.dir}: example {index} is not in the cache ({len(self)} examples)") from None
        f = self._files[s_i]
        step = f.get_slice("step")[a:b] if self.meta.get("value_format", "fp16") == "u8" else None
        values = decode_values(f.get_slice("values")[a:b], step)
        return values, f.get_slice("indices")[a:b].long(), f.get_slice("other")[a:b].float()

    def batch(self, indices: list[int], width: int):
        """Right-padded ``[B, width, k]`` values / indices and ``[B, width]`` other for ``indices``.
        Padding rows are harmless (uniform over the top-k, empty other bucket) and masked by the loss."""
        n = len(indices)
        values = torch.zeros((n, width, self.k), dtype=torch.float32)
        idx = torch.zeros((n, width, self.k), dtype=torch.long)
        other = torch.full((n, width), float("-inf"), dtype=torch.float32)
        for i, ex in enumerate(indices):
            v, ix, o = self.example(int(ex))
            L = min(width, v.shape[0])
            values[i, :L], idx[i, :L], other[i, :L] = v[:L], ix[:L], o[:L]
        return values, idx, other
