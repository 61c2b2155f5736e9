"""The world's teacher recipe: a small LlamaForCausalLM trained from scratch on all four domains with
HF ``Trainer``, cached under ``$SURGICAL_HOME/teachers/<hash>`` by the hash of its config.

The loss is on answer tokens only (the bare answer, or the worked steps and the final answer): operands
are uniformly random and carry nothing to learn.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from .. import __version__
from ..config import TeacherConfig, WorldConfig
from ..data import PadCollator, encode_example  # noqa: F401 (re-exported: the world's recipe uses them)
from ..io import provenance, read_json, sha256_json, surgical_home, weights_hashes, write_json
from ..models import enable_kv_cache
from .data import build_world
from .problems import Problem
from .suite import max_worked_tokens


@dataclass
class TrainExample:
    prompt: str
    target: str
    domain: str
    form: str  # "bare" | "worked"


def training_stream(train: dict[str, list[Problem]], domains: list[str], n: int, bare_fraction: float,
                    seed: int) -> list[TrainExample]:
    """``n`` training examples: domain uniform over ``domains``, problem uniform within the domain's
    training split, form bare with probability ``bare_fraction``. Fully determined by ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        domain = domains[rng.randrange(len(domains))]
        p = train[domain][rng.randrange(len(train[domain]))]
        if rng.random() < bare_fraction:
            out.append(TrainExample(p.bare_prompt, p.bare_answer, domain, "bare"))
        else:
            out.append(TrainExample(p.worked_prompt, p.worked_target, domain, "worked"))
    return out


def teacher_model_config(cfg: TeacherConfig, tokenizer):
    """The LlamaConfig of the teacher."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def teacher_hash(world: WorldConfig, cfg: TeacherConfig) -> str:
    """Cache key of a teacher: its world and teacher config and the package version (not the fields that name
    a user's own teacher, which a world teacher never reads)."""
    teacher = cfg.model_dump(exclude={"model", "trust_remote_code"})
    return sha256_json({"world": world.model_dump(), "teacher": teacher, "version": __version__})[:16]


def teacher_dir(world: WorldConfig, cfg: TeacherConfig) -> Path:
    return surgical_home() / "teachers" / teacher_hash(world, cfg)


def train_teacher(world: WorldConfig, cfg: TeacherConfig, out_dir: str | Path, quiet: bool = False,
                  eval_every: int = 0, device: str = "cpu") -> dict:
    """Train the teacher into ``out_dir`` (HF model dir + tokenizer + teacher.json); returns teacher.json."""
    from datasets import Dataset
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments, set_seed

    from ..threads import set_threads
    set_threads(cfg.threads)
    out_dir = Path(out_dir)
    wb = build_world(world)
    tokenizer = wb.tokenizer
    set_seed(cfg.seed)
    model = LlamaForCausalLM(teacher_model_config(cfg, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())

    stream = training_stream(wb.splits.train, cfg.domains, cfg.max_steps * cfg.batch_size, cfg.bare_fraction,
                             seed=cfg.seed)
    encoded = [encode_example(tokenizer, e.prompt, e.target) for e in stream]
    dataset = Dataset.from_list(encoded)
    n_tokens = sum(len(e["input_ids"]) for e in encoded)

    work = out_dir.parent / f".{out_dir.name}.trainer"
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta2=0.98,
        logging_steps=max(1, cfg.max_steps // 50),
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=quiet,
        # Not "group_by_length": it makes batches of one length, i.e. of one domain, and the loss then
        # oscillates between domains (measured: loss stuck near 1.4 vs 0.3 with random batches).
    )
    from ..threads import share_callback

    callbacks = [share_callback()]  # more threads once a parallel run's other stages are done
    if eval_every:
        callbacks.append(_PeriodicEval(wb, tokenizer, eval_every))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=PadCollator(tokenizer.pad_token_id),
                      callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)

    model.eval()
    metrics = evaluate_world(model, tokenizer, wb, split="test", bare=cfg.bare_fraction > 0)
    loss_curve = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    enable_kv_cache(model).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {
        "kind": "teacher",
        "n_parameters": n_params,
        "train_wall_s": round(train_s, 2),
        "train_tokens": n_tokens,
        "loss_curve": loss_curve,
        "test_metrics": metrics,
        "eval_history": next((cb.history for cb in callbacks if hasattr(cb, "history")), []),
        "provenance": provenance({"world": world.model_dump(), "teacher": cfg.model_dump()},
                                 world_data_sha256=wb.data_hash),
    }
    write_json(tmp / "teacher.json", record)
    write_json(tmp / WEIGHTS_HASHES, weights_hashes(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # the directory appears whole or not at all
    return record


# a dotfile: content hashes of a directory (sha256_path) skip it, so recording it never changes the teacher's hash
WEIGHTS_HASHES = ".weights-sha256.json"


def cache_is_intact(d: Path) -> bool:
    """Whether a cached teacher's weights are the ones it was saved with. A cache from before the hashes were
    recorded gets them recorded now (trust on first use, said in docs/reliability.md)."""
    now = weights_hashes(d)
    if not now:
        return False
    recorded = d / WEIGHTS_HASHES
    if not recorded.exists():
        write_json(recorded, now)
        return True
    return read_json(recorded) == now


def get_or_train_teacher(world: WorldConfig, cfg: TeacherConfig, quiet: bool = False,
                         force: bool = False) -> tuple[Path, bool]:
    """The cached teacher directory for this config, training it first if needed. Returns (dir, trained)."""
    d = teacher_dir(world, cfg)
    if (d / "teacher.json").exists() and (d / "config.json").exists() and not force:
        if cache_is_intact(d):
            return d, False
        import warnings

        warnings.warn(f"{d}: the cached teacher's weights do not match the hashes recorded when it was trained "
                      "(corrupt or edited); training it again", stacklevel=2)
    d.parent.mkdir(parents=True, exist_ok=True)
    train_teacher(world, cfg, d, quiet=quiet)
    return d, True


def load_teacher_record(path: str | Path) -> dict:
    return read_json(Path(path) / "teacher.json")


# ---------------------------------------------------------------- evaluation


def exact_match_hits(model, tokenizer, records, max_new_tokens: int, contexts=None,
                     batch_size: int = 64) -> tuple[list[bool], list[str]]:
    """The world's exact match: greedy generation from each record's question (or ``contexts[i]``), up to the end
    of its line (a worked answer is one line; what a model writes after it, such as another solved problem, is not
    its answer); hit = the last ``so N`` of that line equals the record's answer. Returns (hits, generations)."""
    from ..scoring import greedy_generate
    from .problems import parse_worked_answer

    prompts = list(contexts) if contexts is not None else [r["question"] for r in records]
    gens = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           first_line=True)
    return [parse_worked_answer(g) == r["answer"] for g, r in zip(gens, records, strict=True)], gens


def evaluate_world(model, tokenizer, wb, split: str = "test", domains=("add", "sub", "mul", "div"),
                   limit: int | None = None, bare: bool = False, mc: bool = True) -> dict:
    """Per domain: exact-match of the final answer after greedy worked generation, MC accuracy over
    worked continuations (summed and length-normalised log-likelihood), and optionally bare-form
    exact-match (answer with no worked steps)."""
    from ..scoring import greedy_generate, mc_predictions
    from .problems import parse_bare_answer

    out = {}
    for domain in domains:
        em_recs = wb.exact_match_sets[split][domain][:limit]
        hits, _ = exact_match_hits(model, tokenizer, em_recs, max_worked_tokens(wb, domain))
        res = {"exact_match": sum(hits) / len(hits), "n": len(hits)}
        if mc:
            preds = mc_predictions(model, tokenizer, wb.mc_sets[split][domain][:limit])
            res["mc_accuracy"] = sum(p["correct"] for p in preds) / len(preds)
            res["mc_accuracy_norm"] = sum(p["correct_norm"] for p in preds) / len(preds)
        if bare:
            width = wb.difficulty.answer_width(domain)
            bgens = greedy_generate(model, tokenizer, [r["bare_question"] for r in em_recs], max_new_tokens=width + 1)
            res["exact_match_bare"] = sum(parse_bare_answer(domain, g) == r["answer"]
                                          for g, r in zip(bgens, em_recs, strict=True)) / len(em_recs)
        out[domain] = res
    return out


class _PeriodicEval(TrainerCallback):
    """Trainer callback: quick validation exact-match every ``every`` steps (for tuning runs)."""

    def __init__(self, wb, tokenizer, every: int):
        self.wb, self.tok, self.every, self.history = wb, tokenizer, every, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            model.eval()
            m = evaluate_world(model, self.tok, self.wb, split="val", limit=100, mc=False)
            model.train()
            row = {"step": state.global_step, **{d: round(v["exact_match"], 3) for d, v in m.items()}}
            self.history.append(row)
            print("eval", row, flush=True)
