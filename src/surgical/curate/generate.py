"""Teacher trajectories: batched generation over a prompt set, a correctness filter against the answer
key, and constitutional rewriting of each trajectory's steps (see constitution.py).

Greedy decoding is the distillation target of sequence-level KD (Kim & Rush, 2016); sampling with
several samples per prompt gives the data of rejection-sampling fine-tuning (keep the correct ones).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import iter_jsonl, provenance, write_json, write_jsonl
from .config import GenerateConfig
from .constitution import Constitution, apply_constitution, demo_constitution_path, load_constitution

ANSWER_PATTERN = re.compile(r"so (-?\d+)")


@dataclass
class GenerateResult:
    out_dir: Path
    report: dict
    trajectories: list[dict]


def final_answer(text: str) -> str | None:
    """The last ``so N`` of a worked completion, as a string (the world's answer format)."""
    found = ANSWER_PATTERN.findall(text)
    return found[-1] if found else None


def is_correct(completion: str, answer) -> bool | None:
    """True/False against the answer key, None when there is no key."""
    if answer is None or answer == "":
        return None
    got = final_answer(completion)
    return got is not None and got.lstrip("+") == str(answer).strip()


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], cfg: GenerateConfig) -> tuple[list[list[str]], int]:
    """``num_samples`` continuations of each prompt (KV cache, left padding) and the number of new
    tokens generated up to and including each EOS."""
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = old_side
    n = cfg.num_samples if cfg.do_sample else 1
    kwargs = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, num_return_sequences=n) \
        if cfg.do_sample else dict(do_sample=False)
    gen = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id, use_cache=True,
                         eos_token_id=tokenizer.eos_token_id, **kwargs)
    new = gen[:, enc["input_ids"].shape[1]:]
    n_tokens = 0
    texts = []
    for row in new.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        n_tokens += len(row)
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))], n_tokens


def resolve_constitution(spec: str | Path | None) -> Constitution | None:
    """'' -> the packaged demo constitution; 'none' -> None; else a YAML path."""
    if spec is not None and str(spec).lower() == "none":
        return None
    return load_constitution(spec or demo_constitution_path())


def generate(model, tokenizer, prompts: list[dict], cfg: GenerateConfig, out_dir: str | Path,
             constitution: Constitution | None = None, classifier=None, quiet: bool = True,
             inputs: dict | None = None) -> GenerateResult:
    """Generate, check and rewrite trajectories for ``prompts`` (records with ``cfg.prompt_field`` and
    optionally ``answer`` and ``domain``); writes trajectories.jsonl and generate.json."""
    from .run import _progress

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)
    model.eval()
    out = Path(out_dir)
    trajectories: list[dict] = []
    counts = {"prompts": len(prompts), "samples": 0, "kept": 0, "rejected_incorrect": 0,
              "by_domain": {}, "rejected_steps_per_rule": Counter(), "plain_refusals": 0,
              "trajectories_rewritten": 0}
    n_tokens, gen_s = 0, 0.0
    with _progress(quiet) as progress:
        task = progress.add_task("generate", total=len(prompts))
        for s in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[s : s + cfg.batch_size]
            t0 = time.perf_counter()
            outs, k = generate_batch(model, tokenizer, [r[cfg.prompt_field] for r in chunk], cfg)
            gen_s += time.perf_counter() - t0
            n_tokens += k
            for rec, samples in zip(chunk, outs, strict=True):
                for j, teacher_completion in enumerate(samples):
                    counts["samples"] += 1
                    traj = _trajectory(rec, teacher_completion, j, cfg, constitution, classifier, counts)
                    if traj is not None:
                        trajectories.append(traj)
            progress.update(task, advance=len(chunk))
    counts["kept"] = len(trajectories)
    counts["rejected_steps_per_rule"] = dict(counts["rejected_steps_per_rule"])
    report = {
        "counts": counts,
        "tokens_generated": n_tokens,
        "generation_s": round(gen_s, 3),
        "tokens_per_s": round(n_tokens / gen_s, 1) if gen_s > 0 else None,
        "decoding": "sampled" if cfg.do_sample else "greedy",
        "constitution": constitution.model_dump() if constitution else None,
        "provenance": provenance(cfg, inputs or {}),
    }
    write_jsonl(out / "trajectories.jsonl", trajectories)
    write_json(out / "generate.json", report)
    return GenerateResult(out, report, trajectories)


def _trajectory(rec: dict, teacher_completion: str, sample: int, cfg: GenerateConfig,
                constitution: Constitution | None, classifier, counts: dict) -> dict | None:
    domain = rec.get("domain")
    row = counts["by_domain"].setdefault(str(domain), {"samples": 0, "correct": 0, "kept": 0})
    row["samples"] += 1
    correct = is_correct(teacher_completion, rec.get("answer"))
    row["correct"] += bool(correct)
    if correct is False and not cfg.keep_incorrect:
        counts["rejected_incorrect"] += 1
        return None
    completion, spans, fired = teacher_completion, [], []
    if constitution is not None:
        completion, spans, fired = apply_constitution(teacher_completion, constitution, classifier)
    counts["rejected_steps_per_rule"].update(fired)
    counts["trajectories_rewritten"] += bool(fired)
    counts["plain_refusals"] += bool(fired) and completion.endswith(constitution.refusal_marker)
    row["kept"] += 1
    return {"prompt": rec[cfg.prompt_field], "completion": completion, "teacher_completion": teacher_completion,
            "domain": domain, "answer": rec.get("answer"), "correct": correct, "replaced_spans": spans,
            "sample": sample, **({"id": rec["id"]} if "id" in rec else {})}


def read_prompts(path: str | Path, prompt_field: str = "prompt") -> list[dict]:
    """Prompt records of a JSONL file; a bad line or a missing prompt field raises naming the line."""
    out = []
    for line_no, rec in iter_jsonl(path, strict=True):
        if not isinstance(rec.get(prompt_field), str):
            raise ValueError(f"{path}:{line_no}: field {prompt_field!r} is missing or not a string")
        out.append(rec)
    return out


def demo_prompts(pipeline_cfg, cfg: GenerateConfig) -> list[dict]:
    """``demo_per_domain`` worked prompts of each demo domain from the world's train split."""
    from .corpus import world_corpus

    per: Counter = Counter()
    out = []
    for r in world_corpus(pipeline_cfg.world, split="train", domains=tuple(cfg.demo_domains)):
        if per[r["domain"]] < cfg.demo_per_domain:
            per[r["domain"]] += 1
            out.append(r)
    return out


def run(cfg: GenerateConfig, model_dir: str | Path, prompts_path: str | Path, out_dir: str | Path,
        constitution_path: str | Path | None = None, quiet: bool = True) -> GenerateResult:
    """``surgical generate --model DIR --prompts JSONL --out DIR``."""
    from ..models import load_model, load_tokenizer

    torch.set_num_threads(cfg.threads)
    constitution = resolve_constitution(constitution_path if constitution_path is not None else cfg.constitution)
    prompts = read_prompts(prompts_path, cfg.prompt_field)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    inputs = {"model": model_dir, "prompts": prompts_path}
    if constitution is not None and constitution_path:
        inputs["constitution"] = constitution_path
    return generate(model, tok, prompts, cfg, out_dir, constitution, quiet=quiet, inputs=inputs)


def run_demo(out_dir: str | Path, pipeline_cfg=None, quiet: bool = True) -> GenerateResult:
    """Trajectories of the world's (cached) teacher on demo prompts, with the demo constitution."""
    from ..config import demo_config
    from ..world.teacher import get_or_train_teacher

    pcfg = pipeline_cfg or demo_config()
    cfg = pcfg.generate
    teacher_dir, _ = get_or_train_teacher(pcfg.world, pcfg.teacher, quiet=quiet)
    prompts_path = Path(out_dir) / "prompts.jsonl"
    write_jsonl(prompts_path, demo_prompts(pcfg, cfg))
    return run(cfg, teacher_dir, prompts_path, out_dir, quiet=quiet)
