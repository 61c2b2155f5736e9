"""The distill recipe: build the student, lay out the gold/forbidden stream, train, save, evaluate.

``run(cfg, teacher=..., gold=..., forbidden=..., map_path=..., out_dir=...)`` is the stage's one entry point;
the CLI and the pipeline both call it. With a ``suite`` (``surgical.suite``) the student is measured per suite
domain: QA exact match by the domain's scorer, MC accuracy by log-likelihood. ``run_demo`` wires it to the
arithmetic world (through ``surgical.demo``, the only place that knows it).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..io import provenance, read_json, sha256_json, sha256_path, write_json
from ..models import enable_kv_cache
from .config import DistillConfig
from .data import DistillCollator, StreamDataset, build_stream, encode_record, read_records


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
        updates.update(penalty_forms=[], leak_guard="off")  # plain KD trains on the forbidden records anyway
    elif preset == "filter-only":
        updates.update(penalty_forms=[], forbidden_ratio=0.0)
    elif preset == "oracle":
        updates.update(penalty_forms=[], forbidden_ratio=0.0, kd_weight=0.0, ce_weight=1.0, hidden_weight=0.0,
                       teacher_logits="online", leak_guard="off")
    elif preset != "surgical":
        raise ValueError(f"unknown preset {preset!r}; expected surgical, plain-kd, filter-only or oracle")
    return cfg.model_copy(update=updates)


def _apply_leak_guard(cfg: DistillConfig, teacher_model, tok, map_data: dict, gold_recs: list[dict],
                      forb_recs: list[dict], gold_hash: str, forb_hash: str, quiet: bool):
    """Run the leak guard (distill/guard.py): the gold records it flags leave KD; with a penalty (forbidden_ratio
    > 0) they join the forbidden records. Returns the new lists, their hashes and the guard's record."""
    from ..models import num_layers
    from .guard import run_guard

    n_t = num_layers(teacher_model)
    layer = cfg.leak_guard_layer
    if layer is None:
        layer = (map_data.get("recommended_layers") or [n_t // 2])[0]
    if not 0 <= layer < n_t:
        raise ValueError(f"distill.leak_guard_layer: {layer} is not a layer of the teacher (0..{n_t - 1})")
    enc = [_guard_row(tok, r, cfg) for r in gold_recs]
    enc_f = [_guard_row(tok, r, cfg) for r in forb_recs]
    if not quiet:
        print(f"leak guard: probing {len(gold_recs)} gold records at teacher layer {layer}")
    decision = run_guard(teacher_model, enc, enc_f, gold_recs, forb_recs, layer, cfg.leak_guard_threshold,
                         cfg.leak_guard_folds, cfg.seed, tok.pad_token_id)
    flagged = set(decision.flagged)
    moved = [r for i, r in enumerate(gold_recs) if i in flagged]
    kept = [r for i, r in enumerate(gold_recs) if i not in flagged]
    if not kept:
        raise ValueError("distill.leak_guard: the probe flagged every gold record; nothing is left to distil "
                         "(check that gold and the forbidden records differ, or raise leak_guard_threshold)")
    to_penalty = cfg.forbidden_ratio > 0 and cfg.preset == "surgical"
    record = {**decision.record, "flagged_go_to": "penalty" if to_penalty else "dropped"}
    if not quiet:
        print(f"leak guard: {len(moved)} gold records flagged ({record['flagged_go_to']})")
    key = sorted(flagged)
    gold_hash = sha256_json({"gold": gold_hash, "leak_guard_removed": key})
    if to_penalty and moved:
        forb_recs = forb_recs + moved
        forb_hash = sha256_json({"forbidden": forb_hash, "leak_guard_added": key})
    return kept, forb_recs, gold_hash, forb_hash, record


def _guard_row(tok, rec: dict, cfg: DistillConfig) -> dict:
    """The tokens the leak guard reads of a record: its prompt (a record without one is read whole). The prompt is
    what a leaked record's trajectory does not rewrite: the constitution turns a leaked multiplication's worked
    steps into additions, but not its question. Measured: pooled over prompt and completion, the probe caught 0 of
    39 leaked records in the leak sweep (docs/distill.md), and tests/distill/test_distill_guard.py fails so."""
    enc = encode_record(tok, rec, "completion", cfg.max_length)
    n_prompt = next((i for i, label in enumerate(enc["labels"]) if label != -100), len(enc["labels"]))
    return {"input_ids": enc["input_ids"][:n_prompt] if n_prompt > 0 else enc["input_ids"]}


def load_inputs(src, forbidden: bool = False) -> tuple[list[dict], str]:
    """Records and their hash; ``forbidden`` skips records the penalty cannot train on (see read_records)."""
    if src is None:
        return [], ""
    if isinstance(src, (str, Path)):
        return read_records(src, skip_unusable=forbidden), sha256_path(src)
    return list(src), sha256_json(list(src))


def encode_all(cfg: DistillConfig, tok, gold_recs: list[dict], forb_recs: list[dict]) -> list[dict]:
    """Encoded gold records followed by encoded forbidden records (the index space of the logits cache)."""
    refusal = cfg.refusal_text if "refusal" in cfg.penalty_forms else None
    encoded = [encode_record(tok, r, cfg.kd_tokens, cfg.max_length) for r in gold_recs]
    encoded += [encode_record(tok, r, cfg.kd_tokens, cfg.max_length, refusal_text=refusal) for r in forb_recs]
    return encoded


def teacher_identity(teacher) -> str:
    """The teacher's content hash (an HF dir's files or a GGUF file's bytes, memoised by path/size/mtime): the
    key that ties a logits cache, a checkpoint and the recorded teacher metrics to these exact weights."""
    path = Path(teacher)
    return sha256_path(path) if path.exists() else sha256_json({"teacher": str(teacher)})


def data_keys(cfg: DistillConfig, gold_hash: str, forb_hash: str) -> tuple[str, str]:
    """Cache keys of the gold and forbidden parts of the data, under this config's encoding."""
    enc = {"kd_tokens": cfg.kd_tokens, "max_length": cfg.max_length}
    return sha256_json({"gold": gold_hash, **enc}), (sha256_json({"forbidden": forb_hash, **enc}) if forb_hash else "")


def logits_cache_dir(cfg: DistillConfig, out_dir: Path, teacher_sha: str, gold_key: str, forb_key: str,
                     teacher_model) -> Path:
    """Where this run's logits cache lives: ``cache_dir``; else, with ``cache_root``, the subdirectory of this
    run's key (teacher hash, data keys, effective k, temperature, value format), so runs that share a teacher and
    data share one cache and no run reads another's; else OUT/logits-cache."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if not cfg.cache_root:
        return Path(out_dir) / "logits-cache"
    vocab = teacher_model.get_output_embeddings().weight.shape[0]
    key = sha256_json({"teacher_sha256": teacher_sha, "gold": gold_key, "forbidden": forb_key,
                       "k": min(cfg.cache_top_k, vocab), "temperature": cfg.temperature,
                       "values": cfg.cache_values})
    return Path(cfg.cache_root) / key[:20]


@contextlib.contextmanager
def cache_build_lock(cache_dir: Path, enabled: bool = True):
    """An exclusive lock on ``<cache_dir>.lock`` (POSIX flock; a no-op where fcntl is missing): a second process
    building the same cache waits, then finds cache.json and reads it."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if not enabled or fcntl is None:
        yield
        return
    with open(cache_dir.with_name(cache_dir.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_student(cfg: DistillConfig, teacher, teacher_tok, map_data: dict):
    from ..models import load_model, load_tokenizer, num_layers
    from .student import (
        check_tokenizers,
        noise_,
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
        cut_from = map_data.get("forget_neurons")
        if cfg.cut_selection == "random":
            from .student import random_neurons

            # as many per layer as the map's cut would drop there, so both cuts are the same size
            sizes = {li: min(cfg.cut_forget_neurons, len((cut_from or {}).get(str(li), range(cfg.cut_forget_neurons))))
                     for li in keep}
            cut_from = random_neurons(teacher, sizes, cfg.cut_seed)
        elif cfg.cut_forget_neurons and not cut_from:
            raise ValueError("distill.cut_forget_neurons: needs a map with forget_neurons (run the map stage, or "
                             "pass --map), or cut_selection: random")
        student, info = student_from_teacher(teacher, keep, cut_from, cfg.cut_forget_neurons, cfg.mlp_keep_fraction)
        info.cut_selection = cfg.cut_selection if cfg.cut_forget_neurons else None
        if cfg.noise_cut and cfg.preset != "oracle":
            noise_(student, cfg.noise_alpha, cfg.noise_beta, seed=cfg.seed)  # the cut is a fresh copy already
            info.noise_alpha, info.noise_beta = cfg.noise_alpha, cfg.noise_beta
        if cfg.preset == "oracle":
            # the oracle is a model that never had the skill: the cut's architecture, but fresh weights (seeded), not
            # the teacher's, which hold the forget knowledge
            from transformers import AutoModelForCausalLM

            torch.manual_seed(cfg.seed)
            student = AutoModelForCausalLM.from_config(student.config)
            info.init = "teacher_layers architecture, fresh weights (oracle)"
        return student, info
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


def as_suite(suite):
    """A loaded ``Suite`` from a Suite or a manifest path (None stays None)."""
    from ..suite import Suite, load_suite

    if suite is None or isinstance(suite, Suite):
        return suite
    return load_suite(suite)


def suite_metrics(model, tokenizer, suite, domains=None, split: str = "test", limit: int | None = None,
                  mc: bool = True) -> dict:
    """Per suite domain: ``exact_match`` (QA accuracy under the domain's scorer; None without QA data), ``n``
    (QA items, or MC items for an MC-only domain), and with ``mc`` ``mc_accuracy`` / ``mc_accuracy_norm``
    (summed / per-byte log-likelihood; None without MC data) and ``n_mc``. ``limit``: first items per set."""
    from ..scoring import mc_hits, qa_hits
    from ..suite import SuiteError

    out = {}
    for name in domains if domains is not None else list(suite.domains):
        if name not in suite.domains:
            raise SuiteError(f"domain {name!r} is not in suite {suite.name!r} (domains: {list(suite.domains)})")
        d = suite[name]
        qa = d.split_of("qa", split)[:limit]
        res: dict = {"exact_match": None, "n": 0}
        if qa:
            hits, _ = qa_hits(model, tokenizer, d, qa)
            res = {"exact_match": sum(hits) / len(hits), "n": len(hits)}
        if mc:
            recs = d.split_of("mc", split)[:limit]
            if recs:
                acc, acc_norm = mc_hits(model, tokenizer, d, recs)
                res.update(mc_accuracy=sum(acc) / len(acc), mc_accuracy_norm=sum(acc_norm) / len(acc_norm),
                           n_mc=len(acc))
                res["n"] = res["n"] or len(acc)
            else:
                res.update(mc_accuracy=None, mc_accuracy_norm=None, n_mc=0)
        out[name] = res
    return out


def headline(m: dict) -> float | None:
    """The one figure of a domain's metrics: QA exact match, or MC accuracy for an MC-only domain."""
    return m["exact_match"] if m.get("exact_match") is not None else m.get("mc_accuracy")


class SuiteEvalCallback(TrainerCallback):
    """Every ``every`` steps: val figures (QA exact match, MC accuracy without QA) on ``domains``, with the
    training tokens seen so far."""

    def __init__(self, suite, tokenizer, every: int, limit: int, tokens_at_step, domains):
        self.suite, self.tok, self.every, self.limit = suite, tokenizer, every, limit
        self.tokens_at_step, self.domains, self.history = tokens_at_step, list(domains), []
        self.collective = False  # a sharded student (FSDP, ZeRO-3): every rank runs the forwards, rank 0 records

    def _eval(self, model, step: int) -> None:
        was_training = model.training
        qa_only = all(self.suite[d].qa for d in self.domains)
        m = suite_metrics(model, self.tok, self.suite, self.domains, split="val", limit=self.limit, mc=not qa_only)
        model.train(was_training)
        self.history.append({"step": step, "tokens": self.tokens_at_step(step),
                             **{d: round(headline(v), 4) for d, v in m.items() if headline(v) is not None}})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if (state.is_world_process_zero or self.collective) and state.global_step % self.every == 0:
            self._eval(model, state.global_step)
            if not state.is_world_process_zero:
                self.history.clear()



def run(cfg: DistillConfig, teacher: str | Path, gold, forbidden=None, map_path: str | Path | None = None,
        out_dir: str | Path = "runs/distill", preset: str | None = None, suite=None, eval_domains=None,
        retain_domains=None, resume: bool | str = False, evaluate: bool = True, quiet: bool = False,
        extra_record: dict | None = None) -> DistillResult:
    """Distil ``teacher`` into a student on ``gold`` records, pushing it away from the teacher on
    ``forbidden`` records. ``gold`` / ``forbidden`` are JSONL paths or lists of records.

    With ``suite`` (a ``Suite`` or a manifest path) the student is evaluated through it: every
    ``eval_every`` steps on the val split of ``retain_domains`` (default: the suite's retain domains), and at
    the end ``test_metrics`` on ``eval_domains`` (default: every suite domain), the teacher's likewise, and
    the retention figures on the retain domains."""
    from transformers import TrainingArguments, set_seed

    from ..models import load_model, load_tokenizer, num_layers
    from .cache import TopKCache, cache_logits, data_parallel
    from .penalties import random_directions
    from .plots import plot_curves
    from .trainer import ALIGN_ATTR, DistillTrainer

    cfg = apply_preset(cfg, preset)
    suite = as_suite(suite)
    if suite is not None:
        eval_domains = list(eval_domains) if eval_domains is not None else list(suite.domains)
        retain_domains = list(retain_domains) if retain_domains is not None else suite.role("retain")
        unknown = [d for d in {*eval_domains, *retain_domains} if d not in suite.domains]
        if unknown:
            raise ValueError(f"domain(s) {sorted(unknown)} not in suite {suite.name!r}")
    t_start = time.perf_counter()
    from ..threads import set_threads
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    from ..outputs import check_replaceable, ensure_out_dir

    out_dir = ensure_out_dir(out_dir)
    check_replaceable(out_dir / "student")  # before any work: never over a directory surgical did not make

    teacher_model = load_model(teacher)
    tok = load_tokenizer(teacher)
    map_data = read_json(map_path) if map_path else {}
    gold_recs, gold_hash = load_inputs(gold)
    forb_recs, forb_hash = load_inputs(forbidden, forbidden=True)
    if not gold_recs:
        raise ValueError("no gold records")
    guard_record = None
    if cfg.leak_guard == "probe":
        gold_recs, forb_recs, gold_hash, forb_hash, guard_record = _apply_leak_guard(
            cfg, teacher_model, tok, map_data, gold_recs, forb_recs, gold_hash, forb_hash, quiet)
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
    teacher_sha = teacher_identity(teacher)
    if cfg.teacher_logits == "cache" and use_teacher:
        cache_dir = logits_cache_dir(cfg, out_dir, teacher_sha, gold_key, forb_key, teacher_model)
        built = False
        # parallel pipeline stages sharing cache_root build a cache once (not under a launcher: its ranks build
        # one cache together, meeting at a barrier that a lock held by one rank would block)
        with cache_build_lock(cache_dir, enabled=world_size == 1):
            if not (cache_dir / "cache.json").exists():
                built = True  # under a launcher each rank writes its share of the shards
                rank, world, barrier = data_parallel()
                if torch.cuda.is_available():
                    teacher_model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
                cache_logits(teacher_model, encoded, cache_dir, cfg.cache_top_k, cfg.temperature, gold_key,
                             forb_key, pad_id=tok.pad_token_id, rank=rank, world_size=world, barrier=barrier,
                             teacher_sha256=teacher_sha, value_format=cfg.cache_values)
                barrier()  # the other ranks wait for rank 0's cache.json
        cache = TopKCache(cache_dir, gold_key, forb_key if forb_recs else None, temperature=cfg.temperature,
                          teacher_sha256=teacher_sha, k=cfg.cache_top_k, value_format=cfg.cache_values)
        cache_meta = {**cache.meta, "dir": str(cache_dir), "built_by_this_run": built}

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

    from ..threads import share_callback

    callbacks = [share_callback()]  # more threads once a parallel run's other stages are done
    if suite is not None and cfg.eval_every and retain_domains:
        callbacks.append(SuiteEvalCallback(suite, tok, cfg.eval_every, cfg.eval_limit, tokens_at_step,
                                           retain_domains))

    work = out_dir / "checkpoints"
    # before the Trainer exists: it creates its output dir, and a resume must first check whose it is
    last = prepare_checkpoints(work, run_key(cfg, teacher, gold_key, forb_key, map_path), resume)
    args = TrainingArguments(
        output_dir=str(work), max_steps=cfg.max_steps, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, adam_beta2=0.98,
        logging_steps=cfg.logging_steps, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, save_total_limit=2 if cfg.save_steps else None, report_to=[],
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=quiet, ddp_backend="gloo" if world_size > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=bool(proj_layers) or None,
    )
    trainer = DistillTrainer(
        model=student, args=args, train_dataset=dataset,
        data_collator=DistillCollator(tok.pad_token_id, cache), callbacks=callbacks, dcfg=cfg,
        teacher=teacher_model if use_teacher else None, align_pairs=align_pairs, rmu_pairs=rmu_pairs,
        directions=directions,
    )
    for cb in callbacks:
        cb.collective = trainer.sharded
    if quiet:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    train_s = time.perf_counter() - t0
    if trainer.sharded:  # gather the shards (a collective: every rank), then rank 0 goes on with plain models
        student, teacher_model = _unsharded(trainer, student, teacher, teacher_model)
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
        "teacher_sha256": teacher_sha,
        "data": {"gold_sha256": gold_hash, "forbidden_sha256": forb_hash, "n_gold": len(gold_recs),
                 "n_forbidden": len(forb_recs), "forbidden_as_kd": forbidden_as_kd},
        "layers": {"align_pairs": align_pairs, "rmu_pairs": rmu_pairs},
        "tokens_seen": tokens_at_step(trainer.state.global_step),
        "steps": trainer.state.global_step,
        "train_wall_s": round(train_s, 2),
        "tokens_per_s": round(tokens_at_step(trainer.state.global_step) / max(train_s, 1e-9), 1),
        "curves": [h for h in trainer.state.log_history if "loss" in h],
        "eval_history": next((cb.history for cb in callbacks if hasattr(cb, "history")), []),
        "cache": cache_meta,
        "leak_guard": guard_record,
        "penalty_activity": trainer.penalty_activity(),
        "resumed_from": str(last) if last else None,
        "distributed": {"type": str(trainer.accelerator.distributed_type), "world_size": world_size,
                        "student_sharded": trainer.sharded, "teacher_placement": trainer.teacher_placement,
                        "parameter_elements": trainer.shard_report},
    }
    if suite is not None and evaluate:
        student.eval()
        record["suite"] = {"name": suite.name, "path": str(suite.path) if suite.path else None,
                           "data_hash": suite.data_hash, "eval_domains": eval_domains,
                           "retain_domains": retain_domains}
        record["test_metrics"] = suite_metrics(student, tok, suite, eval_domains)
        record["teacher_test_metrics"] = _teacher_metrics(teacher, record["teacher_sha256"], teacher_model, tok,
                                                          suite, eval_domains, memo_dir=cfg.cache_root)
        record.update(_retention(record, retain_domains))
    record["wall_s"] = round(time.perf_counter() - t_start, 2)
    record.update(extra_record or {})
    record["provenance"] = provenance(cfg.model_dump(), inputs=_inputs(teacher, gold, forbidden, map_path))
    curves_png = plot_curves(record, out_dir / "curves.png")
    record["curves_png"] = str(curves_png) if curves_png else None
    write_json(out_dir / "distill.json", record)
    if not cfg.save_steps:
        from ..outputs import remove_made

        remove_made(work)
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


def _unsharded(trainer, student, teacher_path, teacher_model):
    """After a sharded run: on rank 0, a plain student built from the gathered full state dict, and the teacher
    re-read from disk (its shards stay where they are); on the other ranks, the inputs unchanged."""
    from transformers import AutoModelForCausalLM

    from ..models import load_model
    from .sharding import full_state_dict
    from .trainer import ALIGN_ATTR

    sd = full_state_dict(trainer.model_wrapped, trainer.accelerator)
    if sd is None:
        return student, teacher_model
    plain = AutoModelForCausalLM.from_config(student.config)
    plain.load_state_dict({k: v for k, v in sd.items() if not k.startswith(ALIGN_ATTR + ".")}, strict=True)
    teacher_plain = load_model(teacher_path) if teacher_model is not None else None
    return plain.eval(), teacher_plain


def _save_student(student, tok, dest: Path) -> Path:
    """Write the student beside ``dest`` and swap it in (never over a directory surgical did not make)."""
    from ..outputs import check_replaceable, fresh_tmp, replace_dir

    check_replaceable(dest)
    tmp = fresh_tmp(dest)
    enable_kv_cache(student).save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    return replace_dir(tmp, dest, "distill student")


RUN_KEY_FILE = "run_key.json"


def run_key(cfg: DistillConfig, teacher, gold_key: str, forb_key: str, map_path) -> str:
    """What a checkpoint belongs to: the config that shapes training and the content of every input. Settings
    that do not change the trained weights (threads, logging, evaluation) are left out, so changing them does not
    orphan a checkpoint."""
    from ..io import sha256_json

    train_cfg = cfg.model_dump(exclude={"threads", "logging_steps", "eval_every", "eval_limit", "save_steps",
                                        "term_grad_every", "cache_root"})
    t = Path(str(teacher))
    return sha256_json({"config": train_cfg, "teacher": sha256_path(t) if t.exists() else str(teacher),
                        "gold": gold_key, "forbidden": forb_key,
                        "map": sha256_path(map_path) if map_path and Path(map_path).exists() else None})


def prepare_checkpoints(work: Path, key: str, resume) -> Path | None:
    """The checkpoint to resume from, if any, after checking it belongs to this run.

    ``resume=True`` (`--resume`): checkpoints of a different run (another config or other inputs) are an error,
    never silently resumed. ``resume="auto"`` (the pipeline, which re-runs a stage only when its config or inputs
    changed): such checkpoints are surgical's own and stale, so they are cleared and training starts fresh.
    ``resume=False``: old checkpoints are cleared. A checkpoints folder surgical did not make is never touched."""
    from ..io import read_json, write_json
    from ..outputs import check_replaceable, mark_made, remove_made

    check_replaceable(work)
    recorded = read_json(work / RUN_KEY_FILE).get("key") if (work / RUN_KEY_FILE).exists() else None
    last = _last_checkpoint(work)
    if resume and last is not None and recorded != key:
        if resume != "auto":
            raise ValueError(f"{work}: its checkpoints were made by a different run (the config or the inputs "
                             "changed since); refusing to resume onto them. Remove that folder, or run without "
                             "--resume to start over.")
        last = None
    if not resume or last is None:
        remove_made(work)
    mark_made(work, "distill checkpoints")
    write_json(work / RUN_KEY_FILE, {"key": key})
    return last if resume else None


_TEACHER_METRICS: dict = {}  # (teacher, its hash, suite data hash, domains) -> metrics, within a process


def _teacher_metrics(teacher_path, teacher_sha, teacher_model, tok, suite, domains,
                     memo_dir: Path | None = None) -> dict:
    """The teacher's test metrics on the suite, computed once per process per teacher and suite, and with
    ``memo_dir`` (the run's shared cache_root) once per run: the pipeline's students run in separate processes
    under ``--jobs``, and every one of them would otherwise measure the same teacher again."""
    from .. import __version__

    key = (str(Path(teacher_path).resolve()), teacher_sha, suite.data_hash, tuple(domains))
    memo = None
    if memo_dir is not None and teacher_sha is not None:
        name = sha256_json({"teacher_sha256": teacher_sha, "suite": suite.data_hash, "domains": list(domains),
                            "version": __version__})[:20]
        memo = Path(memo_dir) / f"teacher-metrics-{name}.json"
        if key not in _TEACHER_METRICS:
            try:
                _TEACHER_METRICS[key] = read_json(memo)["metrics"]
                return _TEACHER_METRICS[key]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # missing or unreadable: measured again below
    if teacher_sha is None or key not in _TEACHER_METRICS:
        teacher_model.eval()
        _TEACHER_METRICS[key] = suite_metrics(teacher_model, tok, suite, domains)
    if memo is not None and not memo.exists():
        write_json(memo, {"teacher_sha256": teacher_sha, "suite_data_hash": suite.data_hash,
                          "domains": list(domains), "metrics": _TEACHER_METRICS[key]})
    return _TEACHER_METRICS[key]


def _retention(record: dict, retain_domains=None) -> dict:
    """Student / teacher headline figure (QA exact match, else MC accuracy) on the retain domains, and the
    tokens to reach 95% of the teacher on val."""
    s, t = record["test_metrics"], record["teacher_test_metrics"]
    kept = [d for d in (retain_domains if retain_domains is not None else ("add", "sub"))
            if d in s and d in t and headline(s[d]) is not None and headline(t[d]) is not None]
    out = {"retain_ratio": {d: round(headline(s[d]) / max(headline(t[d]), 1e-9), 4) for d in kept}}
    target = 0.95 * sum(headline(t[d]) for d in kept) / max(1, len(kept))
    hit = next((h for h in record["eval_history"] if kept and all(d in h for d in kept)
                and sum(h[d] for d in kept) / len(kept) >= target), None)
    out["tokens_to_95pct_teacher"] = hit["tokens"] if hit else None
    out["steps_to_95pct_teacher"] = hit["step"] if hit else None
    return out


# ---------------------------------------------------------------- the demo


def run_demo(out_dir: str | Path, preset: str | None = None, pipeline_cfg=None, quiet: bool = False,
             gold=None, forbidden=None, map_path=None, overrides: dict | None = None, suite=None,
             resume: bool | str = False) -> DistillResult:
    """Run one preset on the demo world, evaluated through the world's suite (or ``suite``). The gold data is
    what the pipeline's distill stage learns from: the teacher's trajectories (``generate``, with the demo's
    constitution) on ``generate.demo_per_domain`` train prompts of each allowed domain, written under
    ``OUT/generate/``; forbidden = the world's mul/div/mixed train problems (what curate quarantines). Gold or
    forbidden JSONL given here (e.g. curate's) replace them."""
    from ..config import demo_config
    from ..demo import distill_inputs

    pcfg = pipeline_cfg or demo_config()
    tdir, _w_gold, w_forb, suite_file = distill_inputs(pcfg, quiet=quiet)
    cfg = pcfg.distill.model_copy(update=overrides or {})
    if gold is None:
        gold = demo_trajectories(pcfg, tdir, Path(out_dir) / "generate", suite_file, quiet)
    return run(cfg, tdir, gold, forbidden or w_forb, map_path=map_path, out_dir=out_dir, preset=preset,
               suite=suite or suite_file, quiet=quiet, resume=resume)


DEMO_ALLOWED = ("add", "sub")  # the demo policy's allowed domains (distill_inputs' gold)


def demo_trajectories(pcfg, teacher_dir: Path, out_dir: Path, suite_file, quiet: bool) -> list[dict]:
    """The teacher's trajectories on the demo's allowed-domain prompts: the pipeline's generate stage on the world
    (the same prompts per domain, the same constitution), so ``surgical distill --demo`` trains on what
    ``surgical demo``'s distill stage trains on."""
    from ..curate.generate import run as generate_run
    from ..demo import generate_prompts
    from ..io import read_jsonl, write_jsonl

    gcfg = pcfg.generate.model_copy(update={"demo_domains": [d for d in pcfg.generate.demo_domains
                                                             if d in DEMO_ALLOWED]})
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = out_dir / "prompts.jsonl"
    write_jsonl(prompts, [{k: r[k] for k in ("prompt", "domain", "answer") if k in r}
                          for r in generate_prompts(pcfg, gcfg)])
    generate_run(gcfg, teacher_dir, prompts, out_dir, constitution_path=gcfg.constitution or None, quiet=quiet,
                 suite=suite_file)
    recs = list(read_jsonl(out_dir / "trajectories.jsonl"))
    if not recs:
        raise ValueError(f"{out_dir / 'trajectories.jsonl'}: the teacher produced no trajectory for the demo")
    return recs
