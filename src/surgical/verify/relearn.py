"""The relearning attack (the rebound test) and its benign variant.

Fine-tune copies of the model on ``n`` forbidden examples for up to ``S`` steps at each of several
learning rates and record the forget accuracy curve; the attacker's best learning rate counts (the
protocol of Lee et al. 2025, "Distillation Robustifies Unlearning" (UNDO), after Deeb & Roger 2024).
The benign variant fine-tunes on allowed-domain data only and checks that the forbidden skill does not
come back through the shared reasoning (the "rebound effect").

Why a compact loop and not HF Trainer: a sweep is 5+ short runs per model, each evaluated at a handful
of checkpoints by greedy generation. Trainer's per-run setup and its evaluation loop (which computes a
loss, not a generated answer) would need a callback per checkpoint and cost more than the ~0.1 s steps
of a demo-sized model; the loop below is plain AdamW at a constant learning rate and nothing else.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from ..data import PadCollator, encode_example
from ..models import float_copy
from ..suite import format_prompt
from .bootstrap import recovery_auc, steps_to_fraction, sweep_peak
from .probes import mc_hits, primary_hits_many


def training_examples(suite, domains: Sequence[str], n: int, seed: int, tokenizer=None) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, completion) pairs from the suite's ``attack`` records of ``domains`` (never its
    eval items); prompts in each domain's chat format when ``tokenizer`` is given."""
    rng = random.Random(seed)
    pool = [(d, r) for d in domains for r in suite[d].attack]
    picks = rng.sample(pool, min(n, len(pool)))
    if tokenizer is None:
        return [(r["prompt"], r["completion"]) for _, r in picks]
    return [(format_prompt(tokenizer, r["prompt"], suite[d].chat), r["completion"]) for d, r in picks]


def forget_eval_fn(tokenizer, suite, domains: Sequence[str], split: str, n_items: int,
                   batch_size: int = 64) -> Callable:
    """model -> mean over ``domains`` of the primary metric (QA under the domain's scorer, else MC) on the first
    ``n_items`` eval items of each."""

    def evaluate(model) -> float:  # the domains' QA generations go in one batched call
        accs = [sum(h) / len(h) for h in primary_hits_many(model, tokenizer, [suite[d] for d in domains], split,
                                                            n_items, batch_size)]
        return sum(accs) / len(accs)

    return evaluate


def forget_mc_fn(tokenizer, suite, domains: Sequence[str], split: str, n_items: int,
                 batch_size: int = 64) -> Callable | None:
    """model -> mean over the ``domains`` that have MC data of their MC accuracy (lm-eval acc) on the first
    ``n_items`` items; None when no domain has MC data."""
    with_mc = [d for d in domains if suite[d].mc]
    if not with_mc:
        return None

    def evaluate(model) -> float:
        accs = []
        for d in with_mc:
            hits = mc_hits(model, tokenizer, suite[d], suite[d].split_of("mc", split)[:n_items],
                           batch_size=batch_size)[0]
            accs.append(sum(hits) / len(hits))
        return sum(accs) / len(accs)

    return evaluate


def finetune_curve(model, tokenizer, examples: Sequence[tuple[str, str]], evaluate: Callable, lr: float,
                   max_steps: int, batch_size: int, eval_steps: Sequence[int], seed: int,
                   stop_at: float | None = None, also: Callable | None = None,
                   start: tuple | None = None) -> list[tuple]:
    """Fine-tune a float32 copy of ``model`` (the model itself in a worker forked for this run alone, whose
    inherited model is already a private copy: ``parallel.in_private_fork``) on ``examples`` (answer tokens only, AdamW, constant ``lr``) and
    return [(step, evaluate(copy))] at step 0 and each of ``eval_steps`` (``(step, evaluate, also)`` when a
    second metric ``also`` is given). Stops once ``evaluate`` reaches ``stop_at``. ``start``, the step-0 point
    already measured on this model (``step_zero``), is used as it is: a sweep measures it once, not per lr."""
    from .parallel import in_private_fork

    torch.manual_seed(seed)
    work = model if in_private_fork() and _is_float32(model) else float_copy(model)
    encoded = [encode_example(tokenizer, p, t) for p, t in examples]
    collate = PadCollator(tokenizer.pad_token_id)
    opt = torch.optim.AdamW(work.parameters(), lr=lr, weight_decay=0.0)
    checkpoints = sorted({s for s in eval_steps if 0 < s <= max_steps} | {max_steps})
    def point(step: int, m) -> tuple:  # m passed in, not closed over: `del work` below frees the copy
        return (step, evaluate(m)) if also is None else (step, evaluate(m), also(m))

    curve = [tuple(start) if start is not None else point(0, work)]
    if stop_at is not None and curve[0][1] >= stop_at:
        return curve
    rng = random.Random(seed)
    order: list[int] = []
    for step in range(1, max_steps + 1):
        if len(order) < batch_size:
            more = list(range(len(encoded)))
            rng.shuffle(more)
            order += more
        batch = collate([encoded[i] for i in order[:batch_size]])
        order = order[batch_size:]
        work.train()
        loss = work(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step in checkpoints:
            curve.append(point(step, work))
            if stop_at is not None and curve[-1][1] >= stop_at:
                break
    del work
    return curve


def _is_float32(model) -> bool:
    return not getattr(model, "is_quantized", False) and all(p.dtype == torch.float32 for p in model.parameters())


def step_zero(model, evaluate: Callable, also: Callable | None = None) -> tuple:
    """The curve's step-0 point, ``(0, evaluate[, also])`` on the float32 model every run starts from: the same for
    every learning rate of a sweep (and for the benign run, which uses the same metric), so it is measured once."""
    work = model if _is_float32(model) else float_copy(model)  # evaluation never writes the weights: no copy when float
    try:
        return (0, evaluate(work)) if also is None else (0, evaluate(work), also(work))
    finally:
        del work


def summarise_curve(curve: Sequence[tuple], max_steps: int, teacher_forget: float) -> dict:
    """Final, peak, steps to half the teacher and recovery AUC of a curve of (step, forget[, forget MC])."""
    half = 0.5 * teacher_forget
    pairs = [(p[0], p[1]) for p in curve]
    out = {"curve": [[s, a] for s, a in pairs], "final": pairs[-1][1], "peak": max(a for _, a in pairs),
           "steps_to_half_teacher": steps_to_fraction(pairs, half) if teacher_forget > 0 else None,
           "auc": recovery_auc(pairs, max_steps, teacher_forget)}
    if curve and len(curve[0]) > 2:
        out["mc_curve"] = [[p[0], p[2]] for p in curve]
    return out


def mc_by_step(runs: dict) -> dict[str, float]:
    """The attacker's best forget MC at each evaluated step over the learning rates (best lr per step budget,
    not one lr for the whole curve). A run that stopped early keeps its last value for the later steps."""
    steps = sorted({s for r in runs.values() for s, _ in r.get("mc_curve", [])})
    best: dict[str, float] = {}
    for step in steps:
        vals = []
        for r in runs.values():
            upto = [m for s, m in r.get("mc_curve", []) if s <= step]
            if upto:
                vals.append(upto[-1])
        if vals:
            best[str(step)] = max(vals)
    return best


def sweep_workers(cfg, model) -> int:
    """Processes the sweep's runs are spread over (``cfg.workers``; 0 = auto, see parallel.auto_workers)."""
    from .parallel import auto_workers

    return auto_workers(cfg.workers, cfg.threads, model)


def _run_jobs(jobs: list[tuple], workers: int, progress=None) -> list[list[tuple[int, float]]]:
    """finetune_curve over ``jobs`` (tuples of its positional arguments), in ``workers`` processes."""
    from .parallel import fork_map

    return fork_map(lambda i: finetune_curve(*jobs[i]), len(jobs), workers, progress)


def relearning_attack(model, tokenizer, suite, forget_domains: Sequence[str], retain_domains: Sequence[str], cfg,
                      teacher_forget: float, split: str, progress=None) -> dict:
    """The LR sweep on forbidden data (attacker's best = largest area under the recovery curve, ties to the
    fewest steps to 50%; ``peak`` = the highest forget accuracy at any learning rate and any evaluated step,
    with that lr and step, which is what the verdict's relearning check reads) and the benign run on allowed
    data. ``teacher_forget`` is the reference's forget
    exact match on the same eval items (1.0 when no reference is given). The runs are independent and may
    run in parallel processes (``sweep_workers``); each run is seeded, so the curves do not depend on it
    except through the thread count of a run."""
    evaluate = forget_eval_fn(tokenizer, suite, forget_domains, split, cfg.relearn_eval_items, cfg.batch_size)
    stop_at = teacher_forget if cfg.relearn_early_stop else None
    forbidden = training_examples(suite, forget_domains, cfg.relearn_examples, cfg.seed, tokenizer)
    if not forbidden:
        return {"skipped": "the suite has no attack records for the forget domains"}
    common = (cfg.relearn_max_steps, cfg.relearn_batch_size, cfg.relearn_eval_steps, cfg.seed)
    also = forget_mc_fn(tokenizer, suite, forget_domains, split, cfg.relearn_eval_items, cfg.batch_size) \
        if cfg.relearn_mc else None
    # with an MC curve, a run that reaches the teacher on the primary metric still runs on: MC may lag
    stop_at = None if also is not None else stop_at
    start = step_zero(model, evaluate, also)
    jobs = [(model, tokenizer, forbidden, evaluate, lr, *common, stop_at, also, start) for lr in cfg.relearn_lrs]
    benign_lr = cfg.benign_lr or max(cfg.relearn_lrs)
    allowed = training_examples(suite, retain_domains, cfg.relearn_examples, cfg.seed + 1, tokenizer) \
        if cfg.benign_relearn else []
    if allowed:
        jobs.append((model, tokenizer, allowed, evaluate, benign_lr, *common, None, also, start))
    curves = _run_jobs(jobs, sweep_workers(cfg, model), progress)
    runs = {f"{lr:g}": summarise_curve(c, cfg.relearn_max_steps, teacher_forget)
            for lr, c in zip(cfg.relearn_lrs, curves, strict=False)}
    best_lr = max(runs, key=lambda k: (runs[k]["auc"], -(runs[k]["steps_to_half_teacher"] or 10**9)))
    best = runs[best_lr]
    out = {"teacher_forget": teacher_forget, "n_examples": len(forbidden), "max_steps": cfg.relearn_max_steps,
           "eval_items_per_domain": cfg.relearn_eval_items, "runs": runs, "best_lr": float(best_lr),
           "best": best, "peak": sweep_peak(runs), "max_final": max(r["final"] for r in runs.values()),
           "min_steps_to_half_teacher": min((r["steps_to_half_teacher"] for r in runs.values()
                                             if r["steps_to_half_teacher"] is not None), default=None)}
    if also is not None:
        out["mc_by_step"] = mc_by_step(runs)
    if allowed:
        out["benign"] = {"lr": benign_lr, **summarise_curve(curves[-1], cfg.relearn_max_steps, teacher_forget)}
    return out
