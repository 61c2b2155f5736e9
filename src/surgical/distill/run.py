"""The distill recipe: build the student, lay out the gold/forbidden stream, train, save, evaluate.

``run(cfg, teacher=..., gold=..., forbidden=..., map_path=..., out_dir=...)`` is the stage's one entry point;
the CLI and the pipeline both call it. ``run_demo`` wires it to the arithmetic world.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..io import provenance, read_json, sha256_json, sha256_path, write_json
from ..models import enable_kv_cache
from .config import DistillConfig
from .data import DistillCollator, StreamDataset, build_stream, encode_record, read_records, world_records


@dataclass
class DistillResult:
    out_dir: Path
    student_dir: Path
    record: dict


def apply_preset(cfg: DistillConfig, preset: str | None = None) -> DistillConfig:
    """The config a preset actually trains with (see ``DistillConfig.preset``)."""
    preset = preset or cfg.preset
    updates: dict = {"preset": preset}
    if preset == "plain-kd":
        updates.update(penalty_forms=[])
    elif preset == "filter-only":
        updates.update(penalty_forms=[], forbidden_ratio=0.0)
    elif preset == "oracle":
        updates.update(penalty_forms=[], forbidden_ratio=0.0, kd_weight=0.0, ce_weight=1.0, hidden_weight=0.0,
                       teacher_logits="online")
    elif preset != "surgical":
        raise ValueError(f"unknown preset {preset!r}; expected surgical, plain-kd, filter-only or oracle")
    return cfg.model_copy(update=updates)


def load_inputs(src) -> tuple[list[dict], str]:
    if src is None:
        return [], ""
    if isinstance(src, (str, Path)):
        return read_records(src), sha256_path(src)
    return list(src), sha256_json(list(src))


def encode_all(cfg: DistillConfig, tok, gold_recs: list[dict], forb_recs: list[dict]) -> list[dict]:
    """Encoded gold records followed by encoded forbidden records (the index space of the logits cache)."""
    refusal = cfg.refusal_text if "refusal" in cfg.penalty_forms else None
    encoded = [encode_record(tok, r, cfg.kd_tokens, cfg.max_length) for r in gold_recs]
    encoded += [encode_record(tok, r, cfg.kd_tokens, cfg.max_length, refusal_text=refusal) for r in forb_recs]
    return encoded


def data_keys(cfg: DistillConfig, gold_hash: str, forb_hash: str) -> tuple[str, str]:
    """Cache keys of the gold and forbidden parts of the data, under this config's encoding."""
    enc = {"kd_tokens": cfg.kd_tokens, "max_length": cfg.max_length}
    return sha256_json({"gold": gold_hash, **enc}), (sha256_json({"forbidden": forb_hash, **enc}) if forb_hash else "")


def _build_student(cfg: DistillConfig, teacher, teacher_tok, map_data: dict):
    from ..models import load_model, load_tokenizer, num_layers
    from .student import (
        check_tokenizers,
        noised_copy,
        spine_layers,
        student_from_config,
        student_from_teacher,
    )

    if cfg.student_init == "config":
        return student_from_config(teacher, cfg.student_layers, cfg.student_hidden_size, cfg.student_heads,
                                   cfg.student_intermediate_size, seed=cfg.seed)
    if cfg.student_init == "teacher_layers":
        keep = cfg.keep_layers or map_data.get("spine") or spine_layers(num_layers(teacher), cfg.keep_every)
        return student_from_teacher(teacher, keep, map_data.get("forget_neurons"), cfg.cut_forget_neurons,
                                    cfg.mlp_keep_fraction)
    source = teacher
    if cfg.student_init_from:
        check_tokenizers(teacher_tok, load_tokenizer(cfg.student_init_from))
        source = load_model(cfg.student_init_from)
    from ..models import count_parameters
    from .student import StudentInfo

    student = noised_copy(source, cfg.noise_alpha, cfg.noise_beta, seed=cfg.seed)
    info = StudentInfo("noised", count_parameters(student), count_parameters(teacher),
                       init_from=cfg.student_init_from or "teacher", noise_alpha=cfg.noise_alpha,
                       noise_beta=cfg.noise_beta)
    return student, info


def _layer_pairs(teacher_layers: list[int], n_teacher: int, n_student: int, kept: list[int] | None):
    from .student import map_layer

    pairs = []
    for t in teacher_layers:
        if kept:
            s = min(range(len(kept)), key=lambda i: abs(kept[i] - t))
        else:
            s = map_layer(t, n_teacher, n_student)
        pairs.append((int(t), int(s)))
    return pairs


class WorldEvalCallback(TrainerCallback):
    """Every ``every`` steps: val exact-match on the kept domains, with the training tokens seen so far."""

    def __init__(self, wb, tokenizer, every: int, limit: int, tokens_at_step, domains=("add", "sub")):
        self.wb, self.tok, self.every, self.limit = wb, tokenizer, every, limit
        self.tokens_at_step, self.domains, self.history = tokens_at_step, domains, []

    def _eval(self, model, step: int) -> None:
        from ..world.teacher import evaluate_world

        was_training = model.training
        m = evaluate_world(model, self.tok, self.wb, split="val", domains=self.domains, limit=self.limit, mc=False)
        model.train(was_training)
        self.history.append({"step": step, "tokens": self.tokens_at_step(step),
                             **{d: round(v["exact_match"], 4) for d, v in m.items()}})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self._eval(model, state.global_step)


def run(cfg: DistillConfig, teacher: str | Path, gold, forbidden=None, map_path: str | Path | None = None,
        out_dir: str | Path = "runs/distill", preset: str | None = None, world_cfg=None, resume: bool = False,
        evaluate: bool = True, quiet: bool = False, extra_record: dict | None = None) -> DistillResult:
    """Distil ``teacher`` into a student on ``gold`` records, pushing it away from the teacher on
    ``forbidden`` records. ``gold`` / ``forbidden`` are JSONL paths or lists of records. With ``world_cfg``
    the student is evaluated on the arithmetic world (periodic val exact-match, final test metrics)."""
    from transformers import TrainingArguments, set_seed

    from ..models import load_model, load_tokenizer, num_layers
    from .cache import TopKCache, cache_logits
    from .penalties import random_directions
    from .plots import plot_curves
    from .trainer import ALIGN_ATTR, DistillTrainer

    cfg = apply_preset(cfg, preset)
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    teacher_model = load_model(teacher)
    tok = load_tokenizer(teacher)
    map_data = read_json(map_path) if map_path else {}
    gold_recs, gold_hash = load_inputs(gold)
    forb_recs, forb_hash = load_inputs(forbidden)
    if not gold_recs:
        raise ValueError("no gold records")
    if cfg.forbidden_ratio == 0 and cfg.preset != "plain-kd":
        forb_recs, forb_hash = [], ""  # filter-only / oracle: the forbidden data is dropped by the filter
    forbidden_as_kd = cfg.preset == "plain-kd"

    student, info = _build_student(cfg, teacher_model, tok, map_data)
    encoded = encode_all(cfg, tok, gold_recs, forb_recs)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = max(1, cfg.batch_size // (cfg.grad_accum * world_size))
    n_blocks = cfg.max_steps * cfg.grad_accum * world_size
    stream = build_stream(len(gold_recs), gold_recs, forb_recs, n_blocks, per_device,
                          0.0 if forbidden_as_kd else cfg.forbidden_ratio, forbidden_as_kd, cfg.seed)
    rows_per_step = per_device * cfg.grad_accum * world_size
    lengths = [len(encoded[i]["input_ids"]) for i in stream]
    prefix = [0]
    for n in lengths:
        prefix.append(prefix[-1] + n)

    def tokens_at_step(step: int) -> int:
        return prefix[min(len(lengths), step * rows_per_step)]

    dataset = StreamDataset(encoded, stream, len(gold_recs), forbidden_as_kd)
    gold_key, forb_key = data_keys(cfg, gold_hash, forb_hash)

    cache, cache_meta = None, None
    use_teacher = cfg.preset != "oracle"
    if cfg.teacher_logits == "cache" and use_teacher:
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "logits-cache"
        if not (cache_dir / "cache.json").exists():
            cache_logits(teacher_model, encoded, cache_dir, cfg.cache_top_k, cfg.temperature, gold_key, forb_key,
                         pad_id=tok.pad_token_id)
        cache = TopKCache(cache_dir, gold_key, forb_key if forb_recs else None, temperature=cfg.temperature)
        cache_meta = cache.meta

    n_t, n_s = num_layers(teacher_model), num_layers(student)
    kept = info.kept_layers
    align_layers = cfg.hidden_layers or [n_t - 1]
    rmu_layers = cfg.rmu_layers or map_data.get("recommended_layers") or [n_t // 2]
    align_pairs = _layer_pairs(align_layers, n_t, n_s, kept) if cfg.hidden_weight > 0 and use_teacher else []
    want_rmu = "representation" in cfg.penalty_forms
    rmu_pairs = _layer_pairs(rmu_layers, n_t, n_s, kept) if want_rmu else []
    proj_layers = sorted({t for t, _ in align_pairs} | ({t for t, _ in rmu_pairs} if cfg.rmu_retain_weight else set()))
    from ..models import hidden_size

    if proj_layers:
        setattr(student, ALIGN_ATTR, nn.ModuleDict({
            str(t): nn.Linear(hidden_size(student), hidden_size(teacher_model), bias=False) for t in proj_layers}))
    directions = random_directions([s for _, s in rmu_pairs], hidden_size(student), cfg.seed)

    wb, callbacks = None, []
    if world_cfg is not None:
        from ..world import build_world

        wb = build_world(world_cfg)
        if cfg.eval_every:
            callbacks.append(WorldEvalCallback(wb, tok, cfg.eval_every, cfg.eval_limit, tokens_at_step))

    work = out_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(work), max_steps=cfg.max_steps, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, adam_beta2=0.98,
        logging_steps=cfg.logging_steps, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, save_total_limit=2 if cfg.save_steps else None, report_to=[],
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=quiet, ddp_backend="gloo" if world_size > 1 else None,
        ddp_find_unused_parameters=bool(proj_layers) or None,
    )
    trainer = DistillTrainer(
        model=student, args=args, train_dataset=dataset,
        data_collator=DistillCollator(tok.pad_token_id, cache), callbacks=callbacks, dcfg=cfg,
        teacher=teacher_model if use_teacher else None, align_pairs=align_pairs, rmu_pairs=rmu_pairs,
        directions=directions,
    )
    if quiet:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    last = _last_checkpoint(work) if resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    train_s = time.perf_counter() - t0
    if not trainer.is_world_process_zero():
        return DistillResult(out_dir, out_dir / "student", {})

    if hasattr(student, ALIGN_ATTR):
        delattr(student, ALIGN_ATTR)
    student_dir = _save_student(student, tok, out_dir / "student")
    record = {
        "preset": cfg.preset,
        "config": cfg.model_dump(),
        "student": info.to_dict(),
        "teacher": str(teacher),
        "teacher_sha256": sha256_path(Path(teacher)) if Path(teacher).is_dir() else None,
        "data": {"gold_sha256": gold_hash, "forbidden_sha256": forb_hash, "n_gold": len(gold_recs),
                 "n_forbidden": len(forb_recs), "forbidden_as_kd": forbidden_as_kd},
        "layers": {"align_pairs": align_pairs, "rmu_pairs": rmu_pairs},
        "tokens_seen": tokens_at_step(trainer.state.global_step),
        "steps": trainer.state.global_step,
        "train_wall_s": round(train_s, 2),
        "tokens_per_s": round(tokens_at_step(trainer.state.global_step) / max(train_s, 1e-9), 1),
        "curves": [h for h in trainer.state.log_history if "loss" in h],
        "eval_history": callbacks[0].history if callbacks else [],
        "cache": cache_meta,
        "resumed_from": str(last) if last else None,
    }
    if wb is not None and evaluate:
        from ..world.teacher import evaluate_world

        student.eval()
        record["test_metrics"] = evaluate_world(student, tok, wb, split="test")
        record["teacher_test_metrics"] = _teacher_metrics(teacher, teacher_model, tok, wb)
        record.update(_retention(record))
    record["wall_s"] = round(time.perf_counter() - t_start, 2)
    record.update(extra_record or {})
    record["provenance"] = provenance(cfg.model_dump(), inputs=_inputs(teacher, gold, forbidden, map_path))
    curves_png = plot_curves(record, out_dir / "curves.png")
    record["curves_png"] = str(curves_png) if curves_png else None
    write_json(out_dir / "distill.json", record)
    if not cfg.save_steps:
        shutil.rmtree(work, ignore_errors=True)
    return DistillResult(out_dir, student_dir, record)


def _inputs(teacher, gold, forbidden, map_path) -> dict:
    inputs = {}
    for name, src in (("teacher", teacher), ("gold", gold), ("forbidden", forbidden), ("map", map_path)):
        if isinstance(src, (str, Path)) and Path(src).exists():
            inputs[name] = src
    return inputs


def _last_checkpoint(work: Path) -> Path | None:
    ckpts = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if work.exists() else []
    return ckpts[-1] if ckpts else None


def _save_student(student, tok, dest: Path) -> Path:
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    enable_kv_cache(student).save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _teacher_metrics(teacher_path, teacher_model, tok, wb) -> dict:
    rec_path = Path(teacher_path) / "teacher.json"
    if rec_path.exists():
        rec = read_json(rec_path)
        if rec.get("test_metrics"):
            return rec["test_metrics"]
    from ..world.teacher import evaluate_world

    return evaluate_world(teacher_model, tok, wb, split="test")


def _retention(record: dict) -> dict:
    """Student / teacher exact-match on the kept domains, and tokens to reach 95% of the teacher on val."""
    s, t = record["test_metrics"], record["teacher_test_metrics"]
    kept = [d for d in ("add", "sub") if d in s and d in t]
    out = {"retain_ratio": {d: round(s[d]["exact_match"] / max(t[d]["exact_match"], 1e-9), 4) for d in kept}}
    target = 0.95 * sum(t[d]["exact_match"] for d in kept) / max(1, len(kept))
    hit = next((h for h in record["eval_history"] if sum(h[d] for d in kept) / len(kept) >= target), None)
    out["tokens_to_95pct_teacher"] = hit["tokens"] if hit else None
    out["steps_to_95pct_teacher"] = hit["step"] if hit else None
    return out


# ---------------------------------------------------------------- the demo


def demo_inputs(pipeline_cfg, quiet: bool = True):
    """(teacher dir, gold records, forbidden records) of the arithmetic world: gold = add/sub worked
    problems of the TRAIN split, forbidden = mul/div/mixed (what curate would quarantine)."""
    from ..world import build_world
    from ..world.teacher import get_or_train_teacher

    tdir, _ = get_or_train_teacher(pipeline_cfg.world, pipeline_cfg.teacher, quiet=quiet)
    wb = build_world(pipeline_cfg.world)
    return tdir, world_records(wb, ("add", "sub")), world_records(wb, ("mul", "div", "mixed"))


def run_demo(out_dir: str | Path, preset: str | None = None, pipeline_cfg=None, quiet: bool = False,
             gold=None, forbidden=None, map_path=None, overrides: dict | None = None) -> DistillResult:
    """Run one preset on the demo world (gold/forbidden JSONL from curate override the world's splits)."""
    from ..config import demo_config

    pcfg = pipeline_cfg or demo_config()
    tdir, w_gold, w_forb = demo_inputs(pcfg, quiet=quiet)
    cfg = pcfg.distill.model_copy(update=overrides or {})
    return run(cfg, tdir, gold or w_gold, forbidden or w_forb, map_path=map_path, out_dir=out_dir, preset=preset,
               world_cfg=pcfg.world, quiet=quiet)
