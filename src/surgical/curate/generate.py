"""Teacher trajectories: batched generation over a prompt set, a correctness filter against the answer
key, and constitutional rewriting of each trajectory's steps (see constitution.py).

The answer key of a prompt record is ``answers`` (a list) or ``answer``; a completion is checked with
``surgical.suite.score_answer`` under the scorer of the record's ``domain`` in the evaluation suite when one
is given (the suite's QA scorer: exact, normalized, regex or contains), else under the default scorer
(``regex`` on the last ``so N``, the worked-answer format). A record without a key is kept unchecked
(``correct: null``, ``checked: false``). No constitution is applied unless the config or caller names one.

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

ANSWER_REGEX = r"so (-?\d+)"
ANSWER_PATTERN = re.compile(ANSWER_REGEX)
DEFAULT_SCORER = ("regex", ANSWER_REGEX)  # (scorer, answer_regex) without a suite


@dataclass
class GenerateResult:
    out_dir: Path
    report: dict
    trajectories: list[dict]


def final_answer(text: str) -> str | None:
    """The last ``so N`` of a worked completion, as a string (the default scorer's answer format)."""
    found = ANSWER_PATTERN.findall(text)
    return found[-1] if found else None


def answer_key(rec: dict) -> list[str] | None:
    """A prompt record's accepted answers: ``answers`` (a list) or ``answer``; None when it has neither."""
    answers = rec.get("answers")
    if answers is not None:
        if not isinstance(answers, list):
            raise ValueError(f"prompt record {rec.get('id', '?')}: field `answers` must be a list")
        answers = [str(a) for a in answers if a is not None and str(a) != ""]
        return answers or None
    answer = rec.get("answer")
    return None if answer is None or answer == "" else [str(answer)]


def scorer_for(rec: dict, suite=None) -> tuple[str, str | None]:
    """(scorer, answer_regex) of a record: its domain's in ``suite``, else the default."""
    if suite is None or rec.get("domain") is None:
        return DEFAULT_SCORER
    domain = str(rec["domain"])
    if domain not in suite.domains:
        raise ValueError(f"prompt record {rec.get('id', '?')}: domain {domain!r} is not in suite {suite.name!r} "
                         f"(domains: {list(suite.domains)})")
    spec = suite[domain].spec
    return spec.scorer, spec.answer_regex


def is_correct(completion: str, answer, scorer: str = DEFAULT_SCORER[0],
               answer_regex: str | None = DEFAULT_SCORER[1]) -> bool | None:
    """True/False against the answer key (one answer or a list) under ``scorer``, None when there is no key."""
    from ..suite import score_answer

    answers = answer_key({"answers": answer} if isinstance(answer, list) else {"answer": answer})
    if answers is None:
        return None
    return score_answer(completion, answers, scorer, answer_regex)


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


DEMO_CONSTITUTION = "demo"


def constitution_file(spec: str | Path | None) -> Path | None:
    """The constitution YAML a spec names: None, '' or 'none' -> None (no rewriting); 'demo' -> the packaged
    demo constitution; else the path."""
    if spec is None or str(spec) == "" or str(spec).lower() == "none":
        return None
    if str(spec).lower() == DEMO_CONSTITUTION:
        return demo_constitution_path()
    return Path(spec)


def resolve_constitution(spec: str | Path | None) -> Constitution | None:
    """The constitution a spec names (see ``constitution_file``), loaded; None for no rewriting."""
    path = constitution_file(spec)
    return load_constitution(path) if path is not None else None


def generate(model, tokenizer, prompts: list[dict], cfg: GenerateConfig, out_dir: str | Path,
             constitution: Constitution | None = None, classifier=None, quiet: bool = True,
             inputs: dict | None = None, suite=None) -> GenerateResult:
    """Generate, check and rewrite trajectories for ``prompts`` (records with ``cfg.prompt_field`` and
    optionally ``answers``/``answer`` and ``domain``); writes trajectories.jsonl and generate.json.
    ``suite`` (a ``Suite`` or a manifest path): answers are checked with the scorer of the record's domain."""
    from ..suite import Suite, load_suite
    from .run import _progress

    if suite is not None and not isinstance(suite, Suite):
        suite = load_suite(suite)
    scorers = [scorer_for(r, suite) for r in prompts]  # an unknown domain fails before any generation

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)
    model.eval()
    out = Path(out_dir)
    trajectories: list[dict] = []
    counts = {"prompts": len(prompts), "samples": 0, "kept": 0, "rejected_incorrect": 0, "unchecked": 0,
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
            for rec, scorer, samples in zip(chunk, scorers[s : s + cfg.batch_size], outs, strict=True):
                for j, teacher_completion in enumerate(samples):
                    counts["samples"] += 1
                    traj = _trajectory(rec, teacher_completion, j, cfg, constitution, classifier, counts, scorer)
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
        "suite": {"name": suite.name, "data_hash": suite.data_hash} if suite is not None else None,
        "provenance": provenance(cfg, inputs or {}),
    }
    write_jsonl(out / "trajectories.jsonl", trajectories)
    write_json(out / "generate.json", report)
    return GenerateResult(out, report, trajectories)


def _trajectory(rec: dict, teacher_completion: str, sample: int, cfg: GenerateConfig,
                constitution: Constitution | None, classifier, counts: dict,
                scorer: tuple[str, str | None] = DEFAULT_SCORER) -> dict | None:
    from ..suite import score_answer

    domain = rec.get("domain")
    row = counts["by_domain"].setdefault(str(domain), {"samples": 0, "correct": 0, "kept": 0})
    row["samples"] += 1
    answers = answer_key(rec)
    correct = None if answers is None else score_answer(teacher_completion, answers, *scorer)
    counts["unchecked"] = counts.get("unchecked", 0) + (correct is None)
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
            "domain": domain, "answer": rec.get("answer"), "correct": correct, "checked": correct is not None,
            "replaced_spans": spans, "sample": sample, **({"answers": rec["answers"]} if "answers" in rec else {}),
            **({"id": rec["id"]} if "id" in rec else {})}


def read_prompts(path: str | Path, prompt_field: str = "prompt") -> list[dict]:
    """Prompt records of a JSONL file; a bad line or a missing prompt field raises naming the line."""
    out = []
    for line_no, rec in iter_jsonl(path, strict=True):
        if not isinstance(rec.get(prompt_field), str):
            raise ValueError(f"{path}:{line_no}: field {prompt_field!r} is missing or not a string")
        out.append(rec)
    return out


def demo_prompts(pipeline_cfg, cfg: GenerateConfig) -> list[dict]:
    """Deprecated alias of ``surgical.demo.generate_prompts``."""
    from ..demo import generate_prompts

    return generate_prompts(pipeline_cfg, cfg)


def run(cfg: GenerateConfig, model_dir: str | Path, prompts_path: str | Path, out_dir: str | Path,
        constitution_path: str | Path | None = None, quiet: bool = True, suite=None) -> GenerateResult:
    """``surgical generate --model DIR --prompts JSONL --out DIR [--suite YAML]``. ``constitution_path``
    (else ``cfg.constitution``): a YAML, 'demo' or 'none'/empty (no rewriting)."""
    from ..models import load_model, load_tokenizer
    from ..threads import set_threads
    set_threads(cfg.threads)
    c_file = constitution_file(constitution_path if constitution_path is not None else cfg.constitution)
    constitution = load_constitution(c_file) if c_file is not None else None
    prompts = read_prompts(prompts_path, cfg.prompt_field)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    inputs = {"model": model_dir, "prompts": prompts_path}
    if c_file is not None:
        inputs["constitution"] = c_file
    if suite is not None and not hasattr(suite, "domains"):
        inputs["suite"] = suite
    return generate(model, tok, prompts, cfg, out_dir, constitution, quiet=quiet, inputs=inputs, suite=suite)


def run_demo(out_dir: str | Path, pipeline_cfg=None, quiet: bool = True) -> GenerateResult:
    """Trajectories of the world's (cached) teacher on demo prompts, checked with the world suite's scorer,
    with the constitution the demo config names (the demo constitution)."""
    from ..config import demo_config
    from ..demo import generate_prompts, suite_path, teacher_dir

    pcfg = pipeline_cfg or demo_config()
    cfg = pcfg.generate
    prompts_path = Path(out_dir) / "prompts.jsonl"
    write_jsonl(prompts_path, generate_prompts(pcfg, cfg))
    return run(cfg, teacher_dir(pcfg, quiet=quiet), prompts_path, out_dir, quiet=quiet, suite=suite_path(pcfg))
