"""The stage graph of a pipeline YAML, for any teacher and any data, run by ``surgical.pipeline.runner.Runner``.

data -> teacher -> map -> curate -> generate -> distill -> [compare-oracle] -> verify -> quantize -> verify-quantized
-> compare-<method> (the surgical student and each literature baseline through the same comparison battery)
-> [cross-domain: world only] -> report. The oracle (trained without the forget domains) comes first when it is
enabled: it is the no-skill level the student's forget MC is calibrated against.

Every stage has one entry shape, ``stage(cfg, inputs, out_dir) -> Result``: it reads the pipeline config, the
output directories of the stages it depends on (``inputs["data"]`` ...) and writes into ``out_dir``. The stages
dispatch on ``data.source`` and ``teacher.model`` only in two places: the ``data`` stage (the world writes its
corpus and suite as plain files, or the user's files are checked and recorded) and the ``teacher`` stage (the
user's model is recorded, or the world's teacher is trained and cached). After that, every stage reads the same
plain files (``data/data.json``, ``teacher/location.json``) whatever their source: the demo is one such config.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..config import PipelineConfig, demo_config, load_config
from ..io import read_json, read_jsonl, sha256_path, write_json, write_jsonl
from .runner import Inputs, Result, Runner, Stage

# ---------------------------------------------------------------- what the data and teacher stages recorded


def data_of(inputs: Inputs) -> dict:
    """The data stage's record: suite, corpus, eval and policy paths, and the policy's domains."""
    return read_json(inputs["data"] / "data.json")


def suite_of(inputs: Inputs) -> Path:
    return Path(data_of(inputs)["suite"])


def policy_of(inputs: Inputs) -> Path:
    return Path(data_of(inputs)["policy"])


def teacher_of(inputs: Inputs) -> str:
    """The teacher the teacher stage recorded: a model dir, a GGUF file or a hub id."""
    return read_json(inputs["teacher"] / "location.json")["teacher_dir"]


def policy_file(cfg: PipelineConfig) -> Path:
    """The policy this run uses: ``policy`` (or ``curate.policy``); the packaged demo policy for the world."""
    from ..policy import demo_policy_path

    return Path(cfg.policy_path()) if cfg.policy_path() else demo_policy_path()


# ---------------------------------------------------------------- data and teacher


def stage_data(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """Check and record the run's data. World: write the world (corpus, held-out set, suite) as files. Files: check
    that the corpus files exist, the suite loads and covers the policy; record every input's hash so that a
    changed file re-runs whatever read it."""
    from ..policy import load_policy
    from ..suite import check_policy, load_suite, resolve_suite_path

    policy_path = policy_file(cfg)
    policy = load_policy(policy_path)
    if cfg.data.source == "world":
        from ..demo import write_world_data

        w = write_world_data(cfg, out_dir)
        suite_path, corpus, held_out = Path(w["suite"]), list(w["corpus"]), w["eval"]
        extra = {"counts": w["counts"], "world_data_sha256": w["world_data_sha256"]}
    else:
        suite_path = resolve_suite_path(policy, policy_path, cfg.data.suite or None)
        corpus = [Path(c) for c in cfg.data.corpus]
        held_out = Path(cfg.data.eval or cfg.curate.eval_file) if (cfg.data.eval or cfg.curate.eval_file) else None
        for f in corpus + ([held_out] if held_out else []):
            if not f.exists():
                raise FileNotFoundError(f"{f}: no such corpus file (data.corpus / data.eval)")
        extra = {}
    suite = load_suite(suite_path)
    forget, retain = check_policy(suite, policy)
    gated = [d for d in forget if suite[d].spec.gate]
    record = {
        "source": cfg.data.source, "policy": str(Path(policy_path).resolve()), "policy_name": policy.name,
        "policy_sha256": sha256_path(policy_path), "suite": str(suite_path.resolve()), "suite_name": suite.name,
        "suite_data_sha256": suite.data_hash, "corpus": [str(Path(c).resolve()) for c in corpus],
        "corpus_sha256": {Path(c).name: sha256_path(c) for c in corpus},
        "eval": str(Path(held_out).resolve()) if held_out else None,
        "eval_sha256": sha256_path(held_out) if held_out else None,
        "forget_domains": gated, "ungated_forget_domains": [d for d in forget if d not in gated],
        "retain_domains": retain, **extra,
    }
    write_json(out_dir / "data.json", record)  # deterministic: no times, so unchanged inputs keep later caches
    return Result({k: record[k] for k in ("source", "suite_name", "policy_name", "forget_domains", "retain_domains")})


def stage_teacher(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """Record the user's teacher (checked to load its tokenizer), or train / reuse the world's cached teacher."""
    t0 = time.perf_counter()
    if cfg.teacher.model:
        from ..models import load_tokenizer, resolve_source

        src = resolve_source(cfg.teacher.model)
        load_tokenizer(cfg.teacher.model, trust_remote_code=cfg.teacher.trust_remote_code)  # fails early, clearly
        spec = {"gguf": lambda: str(Path(src.path, src.gguf_file or "").resolve()),
                "dir": lambda: str(Path(src.path).resolve())}.get(src.kind, lambda: cfg.teacher.model)()
        rec = {"model": spec, "given_as": cfg.teacher.model, "kind": src.kind,
               "sha256": sha256_path(spec) if Path(spec).exists() else None}
        write_json(out_dir / "teacher.json", rec)
        write_json(out_dir / "location.json", {"teacher_dir": spec, "trained_now": False})
        return Result({"teacher": spec, "kind": src.kind})
    if cfg.data.source != "world":
        raise ValueError("teacher.model: needed unless data.source is 'world'")
    from ..demo import world_teacher

    tdir, trained, rec = world_teacher(cfg, quiet=inputs.quiet)
    write_json(out_dir / "teacher.json", rec)
    write_json(out_dir / "location.json", {"teacher_dir": str(tdir), "trained_now": trained,
                                           "wall_s": round(time.perf_counter() - t0, 2)})
    return Result({"teacher_dir": str(tdir), "trained_now": trained, "n_parameters": rec["n_parameters"],
                   "test_metrics": rec["test_metrics"], "train_wall_s": rec["train_wall_s"]})


# ---------------------------------------------------------------- the method


def stage_map(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """Attribution, patching and SAEs on the teacher, validated with the suite's own metric (see docs/map.md)."""
    from ..map.run import run_suite
    from ..policy import load_policy

    run_suite(cfg.map, teacher_of(inputs), suite_of(inputs), load_policy(policy_of(inputs)), out_dir,
              quiet=inputs.quiet)
    m = read_json(out_dir / "map.json")
    return Result({"recommended_layers": m.get("recommended_layers"), "spine": m.get("spine"),
                   "specificity_ratio": m.get("validation", {}).get("specificity_ratio"),
                   "attribution_vs_exact_spearman": m.get("attribution_vs_exact_spearman")})


def stage_curate(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """The two-stage filter over the recorded corpus files: gold.jsonl, quarantine.jsonl and the rest."""
    from ..curate.run import run as curate_run

    d = data_of(inputs)
    curate_run(cfg.curate, d["corpus"], out_dir, policy_path=d["policy"], eval_path=d["eval"], quiet=inputs.quiet)
    rep = read_json(out_dir / "curate.json")
    return Result({k: rep.get(k) for k in ("counts", "forbidden_recall", "overfilter_rate", "throughput_docs_per_s")})


def stage_generate(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """Teacher trajectories on the gold records that have a prompt (at most ``generate.demo_per_domain`` per
    domain), checked with the suite's scorer where a record carries its answer, rewritten by the constitution the
    config names (none by default). Gold records without a prompt (plain text) go to distill as they are."""
    from ..curate.generate import run as generate_run

    gcfg = cfg.generate
    quota = prompt_quota(read_jsonl(inputs["curate"] / "gold.jsonl"), gcfg.demo_per_domain, gcfg.sample)
    per_domain: dict[str, int] = {}
    prompts = []
    for r in read_jsonl(inputs["curate"] / "gold.jsonl"):
        d = r.get("domain", "?")
        if r.get("prompt") and per_domain.get(d, 0) < quota.get(d, 0):
            per_domain[d] = per_domain.get(d, 0) + 1
            rec = {"prompt": r["prompt"], "domain": d}
            for k in ("answer", "answers"):
                if r.get(k) is not None:
                    rec[k] = r[k]
            prompts.append(rec)
    if not prompts:
        write_jsonl(out_dir / "trajectories.jsonl", [])
        write_json(out_dir / "generate.json", {"counts": {"prompts": 0}, "skipped": "no gold record has a prompt"})
        return Result({"prompts": 0, "skipped": "no gold record has a prompt; distill uses the gold text"})
    prompts_path = out_dir / "prompts.jsonl"
    write_jsonl(prompts_path, prompts)
    generate_run(gcfg, teacher_of(inputs), prompts_path, out_dir, constitution_path=gcfg.constitution or None,
                 quiet=inputs.quiet, suite=suite_of(inputs))
    rep = read_json(out_dir / "generate.json")
    return Result({"prompts": len(prompts),
                   **{k: rep.get(k) for k in ("counts", "tokens_per_s", "rejected_steps_per_rule")}})


def prompt_quota(gold: list[dict], per_domain: int, sample: str = "per_domain") -> dict[str, int]:
    """How many gold prompts of each domain the generate stage takes. ``per_domain``: at most ``per_domain`` of
    each. ``proportional``: every domain at the fraction ``per_domain / n_largest`` of its prompts (rounded), so
    the corpus's mix is kept: 30 leaked forbidden prompts beside 7,000 allowed ones stay about 2 in 500."""
    from collections import Counter

    counts = Counter(r.get("domain", "?") for r in gold if r.get("prompt"))
    if sample == "per_domain" or not counts:
        return {d: min(n, per_domain) for d, n in counts.items()}
    frac = min(1.0, per_domain / max(counts.values()))
    return {d: round(n * frac) for d, n in counts.items()}


def gold_records(inputs: Inputs) -> list[dict]:
    """What the student learns from: the teacher's trajectories, plus the gold records that have no prompt."""
    recs = list(read_jsonl(inputs["generate"] / "trajectories.jsonl"))
    recs += [r for r in read_jsonl(inputs["curate"] / "gold.jsonl") if not r.get("prompt") and r.get("text")]
    if not recs:
        raise ValueError(f"{inputs['curate'] / 'gold.jsonl'}: curate kept nothing to distil on (and generate "
                         "produced no trajectory)")
    return recs


def _distill(cfg: PipelineConfig, inputs: Inputs, out: Path, preset: str, gold, forbidden, map_path=None,
             teacher=None, overrides: dict | None = None, evaluate: bool = True):
    """distill.run under the pipeline: the run's shared teacher-logit caches (cache mode), the suite's domains.
    ``evaluate=False`` (the comparison rows' students) skips distill's own evaluation (the val curve and the
    test metrics): the comparison battery measures those students on the same items right after."""
    from ..distill.run import run as distill_run

    d = data_of(inputs)
    shared = {"cache_root": str(teacher_logits_root(inputs))} if cfg.distill.teacher_logits == "cache" else {}
    dcfg = cfg.distill.model_copy(update={**shared, **({} if evaluate else {"eval_every": 0}), **(overrides or {})})
    return distill_run(dcfg, teacher or teacher_of(inputs), gold, forbidden, map_path=map_path, out_dir=out,
                       preset=preset, suite=d["suite"], eval_domains=d["forget_domains"] + d["retain_domains"],
                       retain_domains=d["retain_domains"], quiet=inputs.quiet, resume="auto", evaluate=evaluate)


def teacher_logits_root(inputs: Inputs) -> Path:
    """RUN_DIR/teacher-logits: the top-k teacher-logit caches of the run's KD students (``teacher_logits: cache``),
    one per (teacher hash, data, k, temperature, value format), so the students that share a teacher and data
    (the student, plain-kd) read one cache, and UNDO's student (another teacher) gets its own."""
    return Path(inputs.run_dir) / "teacher-logits"


def stage_distill(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    _distill(cfg, inputs, out_dir, cfg.distill.preset, gold_records(inputs),
             inputs["curate"] / "quarantine.jsonl", map_path=inputs["map"] / "map.json")
    rec = read_json(out_dir / "distill.json")
    return Result({k: rec.get(k) for k in ("student", "test_metrics", "tokens_seen", "wall_s")})


def stage_verify(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """The full red-team battery on the student, against the teacher as reference."""
    from ..policy import load_policy
    from ..verify.run import run as verify_run

    res = verify_run(inputs["distill"] / "student", load_policy(policy_of(inputs)), suite_of(inputs), out_dir,
                     reference_dirs=[teacher_of(inputs)], cfg=cfg.verify, policy_path=policy_of(inputs),
                     no_skill_dir=no_skill_model(inputs), reference_cache_dir=reference_cache(out_dir))
    return Result({"verdict": res.verdict, "exit_code": res.exit_code, "checks": res.record.get("checks")})


def reference_cache(stage_dir: Path) -> Path:
    """RUN_DIR/reference-cache: the teacher's battery measurements, shared by every battery of the run (and of
    later runs in the same directory) with the same teacher, battery config and suite (verify.run.ReferenceMemo)."""
    return Path(stage_dir).parent / "reference-cache"


def no_skill_model(inputs: Inputs) -> Path | None:
    """The oracle student (trained without the forget domains, no teacher), when the oracle baseline ran: the
    no-skill level the student's forget MC is calibrated against (docs/verify.md)."""
    if "compare-oracle" not in inputs:
        return None
    student = inputs["compare-oracle"] / "model" / "student"
    return student if (student / "config.json").exists() else None


def stage_quantize(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """Quantize the student and measure it against fp32; the next stage gives it its own verdict."""
    from ..quantize import run as quantize_run

    q = cfg.quantize
    res = quantize_run(inputs["distill"] / "student", out_dir, scheme=q.scheme, backend=q.backend,
                       policy=policy_of(inputs),
                       verify_note="re-verified by the pipeline's verify-quantized stage (RUN_DIR/verify-quantized/)")
    return Result({"scheme": q.scheme, "backend": q.backend, "ratios": res.record.get("ratios")})


def quantized_verify_config(cfg: PipelineConfig):
    """The quantized student goes through the comparison battery's sweep sizes (the ones every method's row uses)
    with every probe (``profile: full``: this verdict gates the run), minus the relearning attack: fine-tuning quantized weights is not what an attacker would do (they would dequantize,
    and the fp32 student's verify already ran that attack)."""
    return compare_verify_config(cfg).model_copy(update={"relearn": False, "profile": "full"})


def stage_verify_quantized(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """The quantized student's own verdict. A battery that cannot run records the verdict 'error' (the run then
    does not pass), and the quantized model is never lost."""
    from ..verify.run import verify_summary

    summary = verify_summary(inputs["quantize"] / "model", out_dir, policy_of(inputs), suite_of(inputs),
                             [teacher_of(inputs)], quantized_verify_config(cfg), no_skill_dir=no_skill_model(inputs),
                             reference_cache_dir=reference_cache(out_dir))
    write_json(out_dir / "summary.json", summary)
    return Result(summary)


# ---------------------------------------------------------------- baselines and comparison


def compare_verify_config(cfg: PipelineConfig):
    """The comparison battery: the verify config with the baselines section's overrides (smaller sweeps),
    the same for every method so the rows are comparable. A `compare_verify` given in the YAML overrides the
    defaults key by key; keys it leaves out keep the default comparison value, not the full verify's."""
    from ..config import _default_compare_verify

    return cfg.verify.model_copy(update={**_default_compare_verify(), **cfg.baselines.compare_verify})


def comparison_row(method: str, model_dir: Path, cfg: PipelineConfig, inputs: Inputs, out_dir: Path,
                   train: dict) -> dict:
    """Run the comparison battery on ``model_dir`` and reduce it to one comparison.json row."""
    from ..policy import load_policy
    from ..verify.run import run as verify_run

    res = verify_run(model_dir, load_policy(policy_of(inputs)), suite_of(inputs), out_dir / "verify",
                     reference_dirs=[teacher_of(inputs)], cfg=compare_verify_config(cfg),
                     policy_path=policy_of(inputs), reference_cache_dir=reference_cache(out_dir))
    return row_from_verify(method, res.record, train)


def row_from_verify(method: str, rec: dict, train: dict) -> dict:
    """A comparison row from a verify record: clean forget EM/MC, worst jailbreak, relearning at the
    chosen step budgets (best learning rate), int4 forget, best latent-probe accuracy, retain ratio."""
    side = rec["summary_by_model"]["model"]
    jail = [v["forget"] for k, v in rec["attacks"].items() if k.startswith("jailbreak:")]
    relearn = (rec.get("relearning") or {}).get("model") or {}
    best = relearn.get("best") or {}
    # verify stores a curve as [step, forget exact-match] pairs
    curve = [{"step": int(p[0]), "forget": float(p[1])} for p in best.get("curve", [])]
    runs = relearn.get("runs") or {}
    after, lr_at = best_per_budget(runs)
    teacher_forget = relearn.get("teacher_forget")
    int4 = rec["attacks"].get("quant:int4", {}).get("forget")
    int4_mc = rec["attacks"].get("quant:int4", {}).get("forget_mc")
    calibration = rec.get("mc_calibration") or {}
    by_layer = ((rec.get("probes") or {}).get("latent") or {}).get("by_layer", {}).get("model") or []
    probe_acc = max((layer["value"] for layer in by_layer), default=None)  # best layer
    return {
        "method": method,
        **mc_columns(rec),
        "forget_exact_match": side["forget"],
        "forget_mc": side["forget_mc"],
        "forget_worst_jailbreak": max(jail) if jail else None,
        "forget_after_relearn": after,
        "relearn_curve": curve,
        "relearn_best_lr": relearn.get("best_lr"),
        "relearn_best_lr_by_budget": lr_at,
        "steps_to_25pct_teacher": steps_to_teacher_fraction(runs, teacher_forget, 0.25),
        "steps_to_50pct_teacher": steps_to_teacher_fraction(runs, teacher_forget, 0.50),
        "relearn_max_steps": relearn.get("max_steps"),
        "forget_mc_after_relearn": relearn.get("mc_by_step"),
        "forget_int4": int4,
        "quantization_gap_int4": (int4 - side["forget"]) if int4 is not None else None,
        "forget_mc_int4": int4_mc,
        "quantization_gap_int4_mc": (int4_mc - side["forget_mc"])
        if int4_mc is not None and side.get("forget_mc") is not None else None,
        "no_skill_mc": (calibration.get("random_init_twin") or {}).get("forget_mc"),
        "probe_accuracy": probe_acc,
        "retain_exact_match": side["retain"],
        "retain_ratio": rec.get("retention", {}).get("retain_ratio"),
        "train_flops": train.get("train_flops"),
        "wall_s": train.get("wall_s"),
        "verdict": rec.get("verdict"),
    }


def best_per_budget(runs: dict) -> tuple[dict[str, float], dict[str, float]]:
    """The attacker's best forget accuracy at each evaluated step budget over the learning rates of a relearning
    sweep, and the learning rate that gave it: the best lr per budget, not the one lr with the best whole curve
    (the sweep's ``best``, chosen by AUC). A run that stopped early holds its last value for the later budgets (it
    stopped because it had reached the teacher). Keys are steps as strings; step 0 is left out."""
    steps = sorted({int(p[0]) for r in runs.values() for p in r.get("curve", [])} - {0})
    best: dict[str, float] = {}
    lr_at: dict[str, float] = {}
    for step in steps:
        for lr, r in runs.items():
            upto = [float(p[1]) for p in r.get("curve", []) if int(p[0]) <= step]
            if upto and (str(step) not in best or upto[-1] > best[str(step)]):
                best[str(step)], lr_at[str(step)] = upto[-1], float(lr)
    return best, lr_at


def steps_to_teacher_fraction(runs: dict, teacher_forget: float | None, fraction: float) -> int | None:
    """Fewest relearning steps at which any learning rate's forget accuracy reaches ``fraction`` of the
    teacher's (UNDO's "relative robustness" numerator); None when no run reached it within its budget, or there is
    no teacher figure. Resolution: the sweep's evaluation steps."""
    from ..verify.bootstrap import steps_to_fraction

    if not teacher_forget or teacher_forget <= 0:
        return None
    hits = [steps_to_fraction([(int(p[0]), float(p[1])) for p in r.get("curve", [])], fraction * teacher_forget)
            for r in runs.values()]
    return min((h for h in hits if h is not None), default=None)


def with_oracle_ratios(rows: list[dict], oracle: dict | None = None, name: str = "oracle") -> list[dict]:
    """Each row with ``steps_to_25pct_ratio_vs_oracle`` / ``steps_to_50pct_ratio_vs_oracle``: its steps to 25% /
    50% of the teacher's forget accuracy over the oracle's (UNDO's relative robustness; > 1 = harder to relearn
    than a model that never learned the skill). A side that never got there within its budget counts as the budget
    and the ratio is marked a bound (``..._bound``: "lower" when only the row never got there, "upper" when only
    the oracle never did, "none" when neither did: then both sit at the budget and the ratio says nothing).
    ``oracle``: the reference row (default: the row whose method is "oracle"); ``name``: the keys' suffix
    (``..._ratio_vs_<name>``), for a second reference such as the cut experiment's same-size oracle."""
    if oracle is None:
        oracle = next((r for r in rows if r.get("method") == "oracle"), None)
    out = []
    for r in rows:
        r = dict(r)
        for pct in ("25", "50"):
            key = f"steps_to_{pct}pct_teacher"
            if oracle is None or "relearn_max_steps" not in r or r.get("relearn_max_steps") is None:
                continue
            mine, theirs, budget = r.get(key), oracle.get(key), r["relearn_max_steps"]
            bound = {(False, False): "exact", (True, False): "lower", (False, True): "upper",
                     (True, True): "none"}[(mine is None, theirs is None)]
            a, b = mine if mine is not None else budget, theirs if theirs is not None else budget
            r[f"steps_to_{pct}pct_ratio_vs_{name}"] = round(a / b, 3) if b else None
            r[f"steps_to_{pct}pct_ratio_vs_{name}_bound"] = bound
        out.append(r)
    return out


def _mc_value(probe: dict | None) -> float | None:
    v = ((probe or {}).get("mc") or {}).get("value")
    return float(v) if isinstance(v, int | float) else None


def mc_columns(rec: dict, who: str = "model") -> dict:
    """Per-domain MC of ``who`` (the model, or a reference by name) in a verify record, and its ratio to the
    first reference's (the teacher's) on each retained domain."""
    know = rec.get("knowledge") or {}
    mine = know.get(who) or {}
    teacher = know.get((rec.get("retention") or {}).get("reference") or "") or {}
    retain = (rec.get("domains") or {}).get("retain") or []
    by_domain = {d: _mc_value(p) for d, p in mine.items()}
    ratios = {}
    for d in retain:
        a, b = by_domain.get(d), _mc_value(teacher.get(d))
        ratios[d] = a / b if a is not None and b else None
    return {"mc_by_domain": by_domain, "retain_mc_ratio_by_domain": ratios}


def reference_rows(rec: dict) -> list[dict]:
    """The teacher's row and the random-init twin's (the no-skill level of each MC set), from one comparison
    record: the battery measured both on the same items as every method's row."""
    rows = []
    ref = (rec.get("retention") or {}).get("reference")
    if ref and ref in (rec.get("summary_by_model") or {}):
        side = rec["summary_by_model"][ref]
        rows.append({"method": "teacher", **mc_columns(rec, ref), "forget_exact_match": side.get("forget"),
                     "forget_mc": side.get("forget_mc"), "retain_exact_match": side.get("retain"),
                     "retain_ratio": 1.0, "battery": f"reference side of the comparison battery ({ref})"})
    twin = (rec.get("mc_calibration") or {}).get("random_init_twin")
    if twin:
        rows.append({"method": "random-init twin", "forget_mc": twin.get("forget_mc"),
                     "mc_by_domain": {d: _mc_value(p) for d, p in (twin.get("by_domain") or {}).items()},
                     "battery": "the clean MC probe on the same items (weights seeded by verify.seed)"})
    return rows


def _student_train_info(out: Path) -> dict:
    rec = read_json(out / "distill.json")
    n_params = rec.get("student", {}).get("n_parameters") or rec.get("student_parameters")
    tokens = rec.get("tokens_seen")
    flops = rec.get("train_flops") or (6 * n_params * tokens if n_params and tokens else None)
    return {"train_flops": flops, "wall_s": rec.get("wall_s")}


def unlearning_records(cfg: PipelineConfig, inputs: Inputs) -> tuple[list[dict], list[dict]]:
    """(forget, retain) {prompt, completion} records the unlearning baselines train on. World: the worked
    problems of the forget and retain domains (train split). Files: the corpus records curate quarantined and the
    gold ones, those that have a prompt and a completion (text-only records cannot be unlearned this way)."""
    d = data_of(inputs)
    if d["source"] == "world":
        from ..demo import unlearn_records

        return unlearn_records(cfg, d["forget_domains"]), unlearn_records(cfg, d["retain_domains"])

    def pairs(path: Path) -> list[dict]:
        return [{"prompt": r["prompt"], "completion": r["completion"], "domain": r.get("domain", "?")}
                for r in read_jsonl(path) if isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)]

    return pairs(inputs["curate"] / "quarantine.jsonl"), pairs(inputs["curate"] / "gold.jsonl")


def not_applicable(method: str, cfg: PipelineConfig, inputs: Inputs) -> str | None:
    """Why a baseline cannot run on this run's data (None when it can)."""
    if method in ("graddiff", "maxent", "rmu", "undo"):
        forget, retain = unlearning_records(cfg, inputs)
        if not forget or not retain:
            return ("needs {prompt, completion} records on both sides to unlearn the teacher with; curate "
                    f"quarantined {len(forget)} and kept {len(retain)} such records")
    if method == "oracle" and not any(r.get("completion") or r.get("text")
                                      for r in read_jsonl(inputs["curate"] / "gold.jsonl")):
        return "needs labelled gold records (a completion or a text) to train on without a teacher"
    return None


def _baseline_stage(method: str):
    """A stage that trains one baseline (or reuses the surgical student) and runs the comparison battery; a
    baseline that cannot run on this data writes a row that says why."""

    def stage(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
        why = None if method == "surgical" else not_applicable(method, cfg, inputs)
        if why:
            row = {"method": method, "not_run": why}
            write_json(out_dir / "row.json", row)
            return Result(row)
        gold = gold_records(inputs)
        quarantine = inputs["curate"] / "quarantine.jsonl"
        model_out = out_dir / "model"
        if method == "surgical" and not enabled_baselines(cfg):
            # nothing to compare against: the student's row comes from its full verify battery, not a second one
            row = row_from_verify(method, read_json(inputs["verify"] / "verify.json"),
                                  _student_train_info(inputs["distill"]))
            write_json(out_dir / "row.json", {**row, "battery": "the verify stage's (no baseline is enabled)"})
            return Result({k: v for k, v in row.items() if k != "relearn_curve"})
        if method == "surgical":
            model_dir = inputs["distill"] / "student"
            train = _student_train_info(inputs["distill"])
        elif method in ("plain-kd", "filter-only", "oracle"):
            # plain-kd: the preset imitates the teacher on the quarantined (unfiltered) records too;
            # filter-only: gold trajectories only; oracle: labels (the curated gold records), no teacher.
            src = inputs["curate"] / "gold.jsonl" if method == "oracle" else gold
            # the run's map: a student cut from the teacher (student_init: teacher_layers) gets the same layers and
            # the same cut neurons as the surgical student, so the row differs from it only in the preset
            _distill(cfg, inputs, model_out, method, src, quarantine, map_path=inputs["map"] / "map.json",
                     evaluate=False)
            model_dir, train = model_out / "student", _student_train_info(model_out)
        elif method in ("graddiff", "maxent", "rmu"):
            model_dir, train = _unlearn(cfg, inputs, method, model_out)
        elif method == "undo":
            unlearned, utrain = _unlearn(cfg, inputs, cfg.baselines.undo_unlearn_method, out_dir / "unlearned")
            # UNDO distils the noised copy from the unlearned teacher on the unfiltered data.
            _distill(cfg, inputs, model_out, "plain-kd", gold, quarantine, teacher=unlearned,
                     overrides={"student_init": "noised", "student_init_from": str(unlearned)}, evaluate=False)
            model_dir = model_out / "student"
            dtrain = _student_train_info(model_out)
            train = {"train_flops": (utrain["train_flops"] or 0) + (dtrain["train_flops"] or 0),
                     "wall_s": (utrain["wall_s"] or 0) + (dtrain["wall_s"] or 0)}
        else:
            raise ValueError(f"unknown baseline {method!r}")
        row = comparison_row(method, model_dir, cfg, inputs, out_dir, train)
        write_json(out_dir / "row.json", row)
        return Result({k: v for k, v in row.items() if k != "relearn_curve"})

    return stage


def _unlearn(cfg: PipelineConfig, inputs: Inputs, method: str, out: Path) -> tuple[Path, dict]:
    from ..baselines.unlearn import UnlearnConfig, unlearn

    forget, retain = unlearning_records(cfg, inputs)
    rec = unlearn(teacher_of(inputs), method, forget, retain, UnlearnConfig(**cfg.baselines.unlearn), out)
    return out, {"train_flops": rec.get("train_flops"), "wall_s": rec.get("wall_s")}


def stage_cross_domain(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    """World only: distil on one allowed domain and measure the other (and the reverse)."""
    from ..demo import distill_records

    d = data_of(inputs)
    quarantine = inputs["curate"] / "quarantine.jsonl"
    out = {}
    for train_on, held_out in (("add", "sub"), ("sub", "add")):
        sub = out_dir / f"train-{train_on}"
        _distill(cfg, inputs, sub, "surgical", distill_records(cfg, (train_on,)), quarantine,
                 overrides={"max_steps": cfg.baselines.cross_domain_steps, "eval_every": 0,
                            # each cross-domain student is the only one on its data, which is larger than the
                            # rows it trains on: a cache would cost more than it saves (measured: 180 vs 129 s)
                            "teacher_logits": "online"})
        m = read_json(sub / "distill.json").get("test_metrics", {})
        forget = [m[f]["exact_match"] for f in d["forget_domains"] if f in m]
        out[f"{train_on}->{held_out}"] = {"train_domain": train_on, "held_out_domain": held_out,
                                          "train_domain_exact_match": m.get(train_on, {}).get("exact_match"),
                                          "held_out_exact_match": m.get(held_out, {}).get("exact_match"),
                                          "forget_exact_match": sum(forget) / len(forget) if forget else None}
    write_json(out_dir / "cross_domain.json", out)
    return Result(out)


def stage_report(cfg: PipelineConfig, inputs: Inputs, out_dir: Path) -> Result:
    from .report import write_run_report

    return Result(write_run_report(inputs.run_dir, cfg, out_dir))


# ---------------------------------------------------------------- the graph


BASELINE_KEYS = {"plain-kd": "plain_kd", "filter-only": "filter_only", "graddiff": "graddiff", "maxent": "maxent",
                 "rmu": "rmu", "undo": "undo", "oracle": "oracle"}


def enabled_baselines(cfg: PipelineConfig) -> list[str]:
    return [m for m, key in BASELINE_KEYS.items() if getattr(cfg.baselines, key)]


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages of ``cfg``, in order, with their dependencies and the config each one hashes."""
    files = cfg.data.source == "files"
    stages = [
        # files: re-checked every run (cheap), and its record holds every input's hash, so an edited corpus,
        # suite or policy re-runs exactly the stages that read it; world: fixed by the world config.
        Stage("data", stage_data, config_of=lambda c: (c.data, c.world, c.policy_path(), c.curate.world_split),
              always_run=lambda c: c.data.source == "files",
              external_inputs=lambda c: {} if c.data.source == "files" else {"policy": str(policy_file(c))}),
        Stage("teacher", stage_teacher, deps=["data"], config_of=lambda c: c.teacher,
              external_inputs=lambda c: ({"model": c.teacher.model} if Path(c.teacher.model).exists() else {})
              if c.teacher.model else {}),
        Stage("map", stage_map, deps=["data", "teacher"], config_of=lambda c: c.map),
        Stage("curate", stage_curate, deps=["data"], config_of=lambda c: c.curate),
        Stage("generate", stage_generate, deps=["data", "teacher", "curate"], config_of=lambda c: (c.generate, c.curate)),
        Stage("distill", stage_distill, deps=["data", "teacher", "map", "curate", "generate"],
              config_of=lambda c: c.distill),
    ]
    compare_cfg = lambda c: (c.verify, c.baselines.compare_verify)  # noqa: E731

    def compare_stage(m: str) -> Stage:
        return Stage(f"compare-{m}", _baseline_stage(m),
                     deps=["data", "teacher", "map", "curate", "generate", "distill"]
                     + (["verify"] if m == "surgical" and not enabled_baselines(cfg) else []),
                     config_of=lambda c, m=m: (compare_cfg(c), c.distill, c.baselines.unlearn, m))

    # the oracle first: the student's verdicts calibrate its forget MC on the oracle's (a model without the skill)
    oracle = ["compare-oracle"] if cfg.baselines.oracle else []
    if oracle:
        stages.append(compare_stage("oracle"))
    stages += [
        Stage("verify", stage_verify, deps=["data", "teacher", "distill", *oracle], config_of=lambda c: c.verify),
        Stage("quantize", stage_quantize, deps=["data", "distill"], config_of=lambda c: c.quantize),
        Stage("verify-quantized", stage_verify_quantized, deps=["data", "teacher", "quantize", *oracle],
              config_of=lambda c: (c.verify, c.baselines.compare_verify)),
    ]
    # UNDO's row first: it trains two models and is the longest stage, so with --jobs it starts as soon as it can
    # (the report orders the rows itself)
    rows = ["surgical"] + [b for b in enabled_baselines(cfg) if b != "oracle"]
    for m in sorted(rows, key=lambda m: m != "undo"):
        stages.append(compare_stage(m))
    if cfg.baselines.cross_domain and not files:
        stages.append(Stage("cross-domain", stage_cross_domain, deps=["data", "teacher", "curate"],
                            config_of=lambda c: c.distill))
    stages.append(Stage("report", stage_report, deps=[s.name for s in stages],
                        config_of=lambda c: c.baselines))
    return stages


def make_runner(cfg: PipelineConfig, run_dir: str | Path | None = None, console: Console | None = None) -> Runner:
    return Runner(build_stages(cfg), run_dir or cfg.run_dir, cfg, console=console, rebuild=build_stages)


def run_pipeline(config_path: str | Path | None, run_dir: str | Path | None = None, from_stage: str | None = None,
                 only: str | None = None, force: bool = False, quiet: bool = False, jobs: int = 1) -> dict:
    """Run a pipeline YAML (default: the demo config) stage by stage with caching; ``jobs`` > 1 runs
    independent stages in parallel processes (Runner._run_parallel)."""
    cfg = load_config(config_path) if config_path else demo_config()
    runner = make_runner(cfg, run_dir, console=Console(stderr=True, quiet=quiet))
    return runner.run(from_stage=from_stage, only=only, force=force, quiet=quiet, jobs=jobs)


def run_demo(out_dir: str | Path = "runs/demo", quiet: bool = False, jobs: int = 1) -> int:
    """`surgical demo`: the whole method on the arithmetic world; prints the headline table and the report."""
    from .report import print_headline

    t0 = time.perf_counter()
    results = run_pipeline(None, run_dir=out_dir, quiet=quiet, jobs=jobs)
    wall = time.perf_counter() - t0
    print_headline(Path(out_dir), Console(width=170), wall_s=wall)
    if not results:
        return 1
    from .cli import exit_code_of

    return exit_code_of(final_verdict(out_dir) or "incomplete")


def final_verdict(run_dir: str | Path) -> str | None:
    """The verdict a run ends in, failing closed: 'pass' only when every verdict it reached passed (the student's
    verify, and the quantized student's when that stage ran); 'fail' when any failed; otherwise what the other
    was ('error', 'incomplete'); None when no verify ran. Anything but 'pass' fails the run."""
    run_dir = Path(run_dir)
    verdicts = [read_json(f).get("verdict") or "error"
                for f in (run_dir / "verify" / "verify.json", run_dir / "verify-quantized" / "summary.json")
                if f.exists()]
    if not verdicts:
        return None
    if all(v == "pass" for v in verdicts):
        return "pass"
    return "fail" if "fail" in verdicts else next(v for v in verdicts if v != "pass")
