"""Distill throughput (training tokens/s) against TRL's GKDTrainer, measured in the same run.

Same teacher, student, data, batch order, batch size, optimizer and loss (forward KL on completion tokens;
GKD with beta=0, lmbda=0 = purely off-policy, seq_kd=False). Each trainer runs ``--repeats`` times,
alternating, and the best wall time of each is kept (the machine is shared; the best run is the least
disturbed). Ours is timed online (teacher forward every step) and with the top-k logits cache (the cache
build is reported separately: it is paid once per teacher and dataset).

    .venv/bin/python benchmarks/bench_distill.py [--steps 60] [--batch 32] [--repeats 2] [--teacher DIR]

Writes benchmarks/results/bench_distill.json. TRL is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def _teacher_dir(args, tmp: Path, wb) -> tuple[Path, str]:
    if args.teacher:
        return Path(args.teacher), "given"
    from surgical.config import demo_config
    from surgical.world.teacher import teacher_dir

    cached = teacher_dir(demo_config().world, demo_config().teacher)
    if (cached / "teacher.json").exists():
        return cached, "demo teacher (cached)"
    # Throughput does not depend on what the weights know: a random teacher of the demo shape will do.
    from transformers import LlamaForCausalLM

    from surgical.world.teacher import teacher_model_config

    torch.manual_seed(0)
    d = tmp / "teacher"
    LlamaForCausalLM(teacher_model_config(demo_config().teacher, wb.tokenizer)).save_pretrained(d)
    wb.tokenizer.save_pretrained(d)
    return d, "random-init teacher of the demo shape"


def _bench_trl(teacher_dir, student_init_dir, encoded_rows, tok, args, tmp) -> float:
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from surgical.models import load_model
    from surgical.world.teacher import PadCollator

    student = load_model(student_init_dir).train()
    teacher = load_model(teacher_dir)
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in encoded_rows])
    cfg = GKDConfig(output_dir=str(tmp / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                    learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=0, lmbda=0.0, beta=0.0,
                    seq_kd=False, temperature=1.0, report_to=[], use_cpu=True, save_strategy="no",
                    logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, max_length=128,
                    # TRL's configs default to activation checkpointing and bf16 autocast; ours runs fp32 without
                    # checkpointing, so TRL must too for a like-for-like comparison.
                    gradient_checkpointing=False, bf16=False, adam_beta2=0.98, weight_decay=0.01)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds,
                         data_collator=PadCollator(tok.pad_token_id), processing_class=tok)
    # Same batch order as ours: sequential.
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(ds)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--gold-records", type=int, default=2000, help="Gold pool size (the cache covers it all).")
    ap.add_argument("--out", default="benchmarks/results/bench_distill.json")
    args = ap.parse_args()

    from surgical._quiet import silence_import_noise

    silence_import_noise()
    from surgical.config import WorldConfig
    from surgical.demo import distill_records as world_records
    from surgical.distill.config import DistillConfig
    from surgical.distill.data import StreamDataset, build_stream
    from surgical.distill.run import encode_all, run
    from surgical.distill.student import student_from_config
    from surgical.io import write_json
    from surgical.models import load_model
    from surgical.world import build_world

    torch.set_num_threads(args.threads)
    wb = build_world(WorldConfig())
    tok = wb.tokenizer
    tmp = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    try:
        tdir, teacher_kind = _teacher_dir(args, tmp, wb)
        gold = world_records(wb, ("add", "sub"))[:: max(1, 19400 // args.gold_records)][: args.gold_records]
        base = dict(max_steps=args.steps, batch_size=args.batch, eval_every=0, threads=args.threads,
                    warmup_steps=0, logging_steps=10**6, cache_top_k=args.top_k)
        cfg = DistillConfig(**base)
        # The exact rows our trainer sees (filter-only preset: gold only), for TRL too.
        stream = build_stream(len(gold), gold, [], args.steps, args.batch, 0.0, False, cfg.seed)
        encoded = encode_all(cfg, tok, gold, [])
        rows = [StreamDataset(encoded, stream, len(gold), False)[i] for i in range(len(stream))]
        n_tokens = sum(len(r["input_ids"]) for r in rows)
        student, info = student_from_config(load_model(tdir), cfg.student_layers, cfg.student_hidden_size,
                                            cfg.student_heads, cfg.student_intermediate_size, seed=cfg.seed)
        student.save_pretrained(tmp / "student0")
        tok.save_pretrained(tmp / "student0")

        cache_dir = tmp / "cache"
        t0 = time.perf_counter()
        run(DistillConfig(**{**base, "max_steps": 1}, teacher_logits="cache", cache_dir=str(cache_dir)),
            tdir, gold, None, out_dir=tmp / "warm", preset="filter-only", quiet=True)
        cache_build_s = time.perf_counter() - t0
        cache_meta = json.loads((cache_dir / "cache.json").read_text())

        walls: dict[str, list[float]] = {"trl_gkd": [], "ours_online": [], "ours_cache": []}
        for rep in range(args.repeats):
            walls["trl_gkd"].append(_bench_trl(tdir, tmp / "student0", rows, tok, args, tmp))
            r = run(DistillConfig(**base), tdir, gold, None, out_dir=tmp / f"on{rep}", preset="filter-only", quiet=True)
            assert r.record["tokens_seen"] == n_tokens, (r.record["tokens_seen"], n_tokens)
            walls["ours_online"].append(r.record["train_wall_s"])
            r = run(DistillConfig(**base, teacher_logits="cache", cache_dir=str(cache_dir)), tdir, gold, None,
                    out_dir=tmp / f"c{rep}", preset="filter-only", quiet=True)
            walls["ours_cache"].append(r.record["train_wall_s"])
            print(f"repeat {rep}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()), flush=True)

        tps = {k: n_tokens / min(v) for k, v in walls.items()}
        result = {
            "teacher": teacher_kind, "student_parameters": info.n_parameters,
            "teacher_parameters": info.teacher_parameters, "steps": args.steps, "batch": args.batch,
            "threads": args.threads, "tokens": n_tokens, "wall_s": walls,
            "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
            "ratio_vs_trl": {"online": round(tps["ours_online"] / tps["trl_gkd"], 3),
                             "cache": round(tps["ours_cache"] / tps["trl_gkd"], 3)},
            "cache": {"k": cache_meta["k"], "bytes_per_token": cache_meta["bytes_per_token"],
                      "full_logits_bytes_per_token_fp32": cache_meta["full_logits_bytes_per_token_fp32"],
                      "full_logits_bytes_per_token_fp16": cache_meta["full_logits_bytes_per_token_fp16"],
                      "n_tokens": cache_meta["n_tokens"], "total_bytes": cache_meta["total_bytes"],
                      "build_s_including_1_step": round(cache_build_s, 2)},
        }
        write_json(args.out, result)
        print(json.dumps({k: result[k] for k in ("tokens_per_s", "ratio_vs_trl", "cache")}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
