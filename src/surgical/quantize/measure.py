"""Size, memory and speed of a model dir, each measured in a fresh process (peak RSS is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .formats import QuantizeError, load_quantized

# ---------------------------------------------------------------- measurement


def dir_size_bytes(path: str | Path, suffixes: tuple[str, ...] = (".safetensors", ".bin")) -> int:
    """Bytes of the weight files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in suffixes)


def tokens_per_s(n_new_tokens: int, batch: int, wall_s: float) -> float:
    """Generated tokens per second of wall time."""
    return n_new_tokens * batch / wall_s if wall_s > 0 else float("nan")


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor, looking inside quantized tensor subclasses (torchao) at their parts."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weights_memory_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory (tied tensors once)."""
    seen, total = set(), 0
    for t in list(model.state_dict(keep_vars=True).values()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_here(model_dir: str | Path, new_tokens: int = 32, batch: int = 8, prompt_tokens: int = 8,
                 repeats: int = 3, threads: int = 1) -> dict:
    """Load ``model_dir`` and time greedy generation of exactly ``new_tokens`` tokens for ``batch`` random
    prompts (KV cache). Meant to run in a fresh process (``measure``), so peak RSS is this model's own."""
    import resource

    from ..threads import set_threads
    set_threads(threads)
    rss_before = _rss_bytes()
    model = load_quantized(model_dir)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, prompt_tokens), generator=gen)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  attention_mask=torch.ones_like(ids), pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **kwargs)  # warm-up
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(ids, **kwargs)
            walls.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    best = min(walls)
    return {"tokens_per_s": round(tokens_per_s(new_tokens, batch, best), 1), "generate_wall_s": round(best, 4),
            "weights_memory_bytes": weights_memory_bytes(model),
            "peak_rss_bytes": peak, "peak_rss_over_imports_bytes": max(0, peak - rss_before),
            "new_tokens": new_tokens, "batch": batch, "threads": threads}


def measure(model_dir: str | Path, timeout_s: float = 300, **kw) -> dict:
    """``measure_here`` in a fresh Python process (peak memory is per process), plus size on disk."""
    args = [sys.executable, "-m", "surgical.quantize.measure", "measure", str(model_dir), json.dumps(kw)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise QuantizeError(f"measuring {model_dir} failed: {proc.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["size_on_disk_bytes"] = dir_size_bytes(model_dir)
    return figures


def compare(fp32: dict, quantized: dict) -> dict:
    """Ratios quantized / fp32 of size, peak memory and speed (< 1 size means smaller)."""
    def ratio(key):
        a, b = fp32.get(key), quantized.get(key)
        return round(b / a, 4) if a and b is not None else None

    return {"size_ratio": ratio("size_on_disk_bytes"), "peak_rss_ratio": ratio("peak_rss_bytes"),
            "peak_rss_over_imports_ratio": ratio("peak_rss_over_imports_bytes"),
            "weights_memory_ratio": ratio("weights_memory_bytes"),
            "tokens_per_s_ratio": ratio("tokens_per_s")}




if __name__ == "__main__":  # `python -m surgical.quantize.measure measure DIR '{json kwargs}'` (used by measure())
    if len(sys.argv) >= 3 and sys.argv[1] == "measure":
        kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
        print(json.dumps(measure_here(sys.argv[2], **kw)))
    else:
        sys.exit("usage: python -m surgical.quantize.measure measure MODEL_DIR ['{json kwargs}']")

