"""The demo's stage graph over the arithmetic world (the demo config; a user pipeline is not built yet), run by ``surgical.runner.Runner``.

world -> teacher -> map -> curate -> generate -> distill -> verify -> quantize (-> verify again inside it)
-> baselines (plain KD, filter-only KD, GradDiff, MaxEnt, RMU, UNDO, oracle, each through the same
comparison battery as the surgical student) -> cross-domain experiment -> report.

Each stage function reads only its inputs' output directories (``ctx.inputs``) and the config, and writes
into ``ctx.out_dir``; the runner decides order and caching, nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..config import PipelineConfig, demo_config, load_config
from ..io import read_json, read_jsonl, write_json, write_jsonl
from ..runner import Runner, Stage, StageContext

FORGET = ("mul", "div")
RETAIN = ("add", "sub")


# ---------------------------------------------------------------- helpers


def teacher_dir_of(ctx: StageContext) -> Path:
    """The teacher directory recorded by the teacher stage."""
    return Path(read_json(ctx.inputs["teacher"] / "location.json")["teacher_dir"])


def policy_path(cfg: PipelineConfig) -> Path:
    from ..policy import demo_policy_path

    return Path(cfg.curate.policy) if getattr(cfg.curate, "policy", None) else demo_policy_path()


def suite_of(ctx: StageContext) -> Path:
    """The suite the world stage wrote (RUN_DIR/world/suite/suite.yaml); every stage measures against it."""
    return ctx.inputs["world"] / "suite" / "suite.yaml"


def _domain_mean(metrics: dict, domains) -> float:
    return sum(metrics[d]["exact_match"] for d in domains) / len(domains)


# ---------------------------------------------------------------- stages


def stage_world(ctx: StageContext) -> dict:
    from ..world import build_world, write_world

    write_world(ctx.config.world, ctx.out_dir)
    wb = build_world(ctx.config.world)
    return {"counts": {s: {d: len(v) for d, v in wb.splits[s].items()} for s in ("train", "val", "test")},
            "data_sha256": wb.data_hash}


def stage_teacher(ctx: StageContext) -> dict:
    from ..world.teacher import get_or_train_teacher, load_teacher_record

    t0 = time.perf_counter()
    tdir, trained = get_or_train_teacher(ctx.config.world, ctx.config.teacher, quiet=ctx.quiet)
    rec = load_teacher_record(tdir)
    write_json(ctx.out_dir / "teacher.json", rec)
    write_json(ctx.out_dir / "location.json", {"teacher_dir": str(tdir), "trained_now": trained,
                                               "wall_s": round(time.perf_counter() - t0, 2)})
    return {"teacher_dir": str(tdir), "trained_now": trained, "n_parameters": rec["n_parameters"],
            "test_metrics": rec["test_metrics"], "train_wall_s": rec["train_wall_s"]}


def stage_map(ctx: StageContext) -> dict:
    """The map stage's own demo entry point: the config's (cached) teacher on the world's train split."""
    from ..map.run import run_demo as map_demo

    map_demo(ctx.out_dir, ctx.config, quiet=ctx.quiet)
    m = read_json(ctx.out_dir / "map.json")
    return {"recommended_layers": m.get("recommended_layers"), "spine": m.get("spine"),
            "specificity_ratio": m.get("validation", {}).get("specificity_ratio"),
            "attribution_vs_exact_spearman": m.get("attribution_vs_exact_spearman")}


def stage_curate(ctx: StageContext) -> dict:
    from ..curate.run import run_demo as curate_demo

    curate_demo(ctx.out_dir, ctx.config, quiet=ctx.quiet, policy_path=policy_path(ctx.config))
    rep = read_json(ctx.out_dir / "curate.json")
    return {k: rep.get(k) for k in ("counts", "forbidden_recall", "overfilter_rate", "throughput_docs_per_s")}


def stage_generate(ctx: StageContext) -> dict:
    """Teacher trajectories on the gold prompts (at most ``generate.demo_per_domain`` per domain), checked
    against the answer key and rewritten by the constitution."""
    from ..curate.generate import run as generate_run

    gcfg = ctx.config.generate
    per_domain: dict[str, int] = {}
    prompts = []
    for r in read_jsonl(ctx.inputs["curate"] / "gold.jsonl"):
        d = r.get("domain", "?")
        if r.get("prompt") and per_domain.get(d, 0) < gcfg.demo_per_domain:
            per_domain[d] = per_domain.get(d, 0) + 1
            prompts.append({"prompt": r["prompt"], "answer": r.get("answer"), "domain": d})
    prompts_path = ctx.out_dir / "prompts.jsonl"
    write_jsonl(prompts_path, prompts)
    generate_run(gcfg, teacher_dir_of(ctx), prompts_path, ctx.out_dir, constitution_path=gcfg.constitution or None,
                 quiet=ctx.quiet, suite=suite_of(ctx))
    rep = read_json(ctx.out_dir / "generate.json")
    return {"prompts": len(prompts), **{k: rep.get(k) for k in ("counts", "tokens_per_s", "rejected_steps_per_rule")}}


def _distill(ctx: StageContext, out: Path, preset: str, gold, forbidden, map_path=None, teacher=None,
             overrides: dict | None = None):
    from ..distill.run import run as distill_run

    cfg = ctx.config.distill.model_copy(update=overrides or {})
    return distill_run(cfg, teacher or teacher_dir_of(ctx), gold, forbidden, map_path=map_path, out_dir=out,
                       preset=preset, suite=suite_of(ctx), eval_domains=("add", "sub", "mul", "div"),
                       quiet=ctx.quiet, resume=True)


def stage_distill(ctx: StageContext) -> dict:
    _distill(ctx, ctx.out_dir, "surgical", ctx.inputs["generate"] / "trajectories.jsonl",
             ctx.inputs["curate"] / "quarantine.jsonl", map_path=ctx.inputs["map"] / "map.json")
    rec = read_json(ctx.out_dir / "distill.json")
    return {k: rec.get(k) for k in ("student", "test_metrics", "tokens_seen", "wall_s")}


def stage_verify(ctx: StageContext) -> dict:
    from ..policy import load_policy
    from ..verify.run import run as verify_run

    res = verify_run(ctx.inputs["distill"] / "student", load_policy(policy_path(ctx.config)), suite_of(ctx),
                     ctx.out_dir, reference_dirs=[teacher_dir_of(ctx)], cfg=ctx.config.verify,
                     policy_path=policy_path(ctx.config))
    return {"verdict": res.verdict, "exit_code": res.exit_code, "checks": res.record.get("checks")}


def stage_quantize(ctx: StageContext) -> dict:
    from ..quantize import run as quantize_run

    q = ctx.config.quantize
    # The quantized student goes through the comparison battery (the same one every method's row uses), minus
    # the relearning attack: fine-tuning int8 weights is not what an attacker would do (they would dequantize).
    from ..verify.run import verify_summary

    vcfg = compare_verify_config(ctx.config).model_copy(update={"relearn": False})

    def verify_quantized(model_dir, out):
        return verify_summary(model_dir, out, policy_path(ctx.config), suite_of(ctx), [teacher_dir_of(ctx)], vcfg)

    res = quantize_run(ctx.inputs["distill"] / "student", ctx.out_dir, scheme=q.scheme, backend=q.backend,
                       verify=verify_quantized, policy=policy_path(ctx.config))
    rec = res.record
    return {"scheme": q.scheme, "backend": q.backend, "verify": rec.get("verify"), "ratios": rec.get("ratios")}


# ---------------------------------------------------------------- baselines and comparison


def compare_verify_config(cfg: PipelineConfig):
    """The comparison battery: the verify config with the baselines section's overrides (smaller sweeps),
    the same for every method so the rows are comparable. A `compare_verify` given in the YAML overrides the
    defaults key by key; keys it leaves out keep the default comparison value, not the full verify's."""
    from ..config import _default_compare_verify

    return cfg.verify.model_copy(update={**_default_compare_verify(), **cfg.baselines.compare_verify})


def comparison_row(method: str, model_dir: Path, ctx: StageContext, train: dict) -> dict:
    """Run the comparison battery on ``model_dir`` and reduce it to one comparison.json row."""
    from ..policy import load_policy
    from ..verify.run import run as verify_run

    vcfg = compare_verify_config(ctx.config)
    res = verify_run(model_dir, load_policy(policy_path(ctx.config)), suite_of(ctx), ctx.out_dir / "verify",
                     reference_dirs=[teacher_dir_of(ctx)], cfg=vcfg, policy_path=policy_path(ctx.config))
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
    after = {}
    for budget in (50, 200, 500):
        at = [p["forget"] for p in curve if p["step"] == budget]
        after[str(budget)] = at[0] if at else None
    int4 = rec["attacks"].get("quant:int4", {}).get("forget")
    by_layer = ((rec.get("probes") or {}).get("latent") or {}).get("by_layer", {}).get("model") or []
    probe_acc = max((layer["value"] for layer in by_layer), default=None)  # best layer
    return {
        "method": method,
        "forget_exact_match": side["forget"],
        "forget_mc": side["forget_mc"],
        "forget_worst_jailbreak": max(jail) if jail else None,
        "forget_after_relearn": after,
        "relearn_curve": curve,
        "relearn_best_lr": relearn.get("best_lr"),
        "forget_int4": int4,
        "quantization_gap_int4": (int4 - side["forget"]) if int4 is not None else None,
        "probe_accuracy": probe_acc,
        "retain_exact_match": side["retain"],
        "retain_ratio": rec.get("retention", {}).get("retain_ratio"),
        "train_flops": train.get("train_flops"),
        "wall_s": train.get("wall_s"),
        "verdict": rec.get("verdict"),
    }


def _student_train_info(out: Path) -> dict:
    rec = read_json(out / "distill.json")
    n_params = rec.get("student", {}).get("n_parameters") or rec.get("student_parameters")
    tokens = rec.get("tokens_seen")
    flops = rec.get("train_flops") or (6 * n_params * tokens if n_params and tokens else None)
    return {"train_flops": flops, "wall_s": rec.get("wall_s")}


def _baseline_stage(method: str):
    """A stage that trains one baseline (or reuses the surgical student) and runs the comparison battery."""

    def fn(ctx: StageContext) -> dict:
        cfg = ctx.config
        gold_traj = ctx.inputs["generate"] / "trajectories.jsonl"
        quarantine = ctx.inputs["curate"] / "quarantine.jsonl"
        model_out = ctx.out_dir / "model"
        if method == "surgical":
            model_dir = ctx.inputs["distill"] / "student"
            train = _student_train_info(ctx.inputs["distill"])
        elif method in ("plain-kd", "filter-only", "oracle"):
            # plain-kd: the preset imitates the teacher on the quarantined (unfiltered) records too;
            # filter-only: gold trajectories only; oracle: labels (the curated gold records), no teacher.
            gold = ctx.inputs["curate"] / "gold.jsonl" if method == "oracle" else gold_traj
            _distill(ctx, model_out, method, gold, quarantine)
            model_dir, train = model_out / "student", _student_train_info(model_out)
        elif method in ("graddiff", "maxent", "rmu"):
            model_dir, train = _unlearn(ctx, method, model_out)
        elif method == "undo":
            unlearned, utrain = _unlearn(ctx, cfg.baselines.undo_unlearn_method, ctx.out_dir / "unlearned")
            # UNDO distils the noised copy from the unlearned teacher on the unfiltered data.
            _distill(ctx, model_out, "plain-kd", gold_traj, quarantine, teacher=unlearned,
                     overrides={"student_init": "noised", "student_init_from": str(unlearned)})
            model_dir = model_out / "student"
            dtrain = _student_train_info(model_out)
            train = {"train_flops": (utrain["train_flops"] or 0) + (dtrain["train_flops"] or 0),
                     "wall_s": (utrain["wall_s"] or 0) + (dtrain["wall_s"] or 0)}
        else:
            raise ValueError(f"unknown baseline {method!r}")
        row = comparison_row(method, model_dir, ctx, train)
        write_json(ctx.out_dir / "row.json", row)
        return {k: v for k, v in row.items() if k != "relearn_curve"}

    return fn


def _unlearn(ctx: StageContext, method: str, out: Path) -> tuple[Path, dict]:
    from ..baselines.unlearn import UnlearnConfig, unlearn
    from . import unlearn_records

    ucfg = UnlearnConfig(**ctx.config.baselines.unlearn)
    rec = unlearn(teacher_dir_of(ctx), method, unlearn_records(ctx.config, FORGET),
                  unlearn_records(ctx.config, RETAIN), ucfg, out)
    return out, {"train_flops": rec.get("train_flops"), "wall_s": rec.get("wall_s")}


def stage_cross_domain(ctx: StageContext) -> dict:
    """Distil on one allowed domain only and measure the other (and the reverse)."""
    from . import distill_records

    quarantine = ctx.inputs["curate"] / "quarantine.jsonl"
    out = {}
    for train_on, held_out in (("add", "sub"), ("sub", "add")):
        d = ctx.out_dir / f"train-{train_on}"
        _distill(ctx, d, "surgical", distill_records(ctx.config, (train_on,)), quarantine,
                 overrides={"max_steps": ctx.config.baselines.cross_domain_steps, "eval_every": 0})
        m = read_json(d / "distill.json").get("test_metrics", {})
        out[f"{train_on}->{held_out}"] = {"train_domain": train_on, "held_out_domain": held_out,
                                          "train_domain_exact_match": m.get(train_on, {}).get("exact_match"),
                                          "held_out_exact_match": m.get(held_out, {}).get("exact_match"),
                                          "forget_exact_match": _domain_mean(m, FORGET) if m else None}
    write_json(ctx.out_dir / "cross_domain.json", out)
    return out


def stage_report(ctx: StageContext) -> dict:
    from ..report import write_run_report

    return write_run_report(ctx.run_dir, ctx.config, ctx.out_dir)


# ---------------------------------------------------------------- the graph


BASELINE_KEYS = {"plain-kd": "plain_kd", "filter-only": "filter_only", "graddiff": "graddiff", "maxent": "maxent",
                 "rmu": "rmu", "undo": "undo", "oracle": "oracle"}


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The demo's stages, in order, with their dependencies and the config each one hashes."""
    stages = [
        Stage("world", stage_world, config_of=lambda c: c.world),
        Stage("teacher", stage_teacher, deps=["world"], config_of=lambda c: c.teacher),
        Stage("map", stage_map, deps=["teacher"], config_of=lambda c: c.map),
        Stage("curate", stage_curate, deps=["world"], config_of=lambda c: c.curate,
              external_inputs=lambda c: {"policy": str(policy_path(c))}),
        Stage("generate", stage_generate, deps=["world", "teacher", "curate"], config_of=lambda c: (c.generate, c.curate)),
        Stage("distill", stage_distill, deps=["world", "teacher", "map", "curate", "generate"], config_of=lambda c: c.distill),
        Stage("verify", stage_verify, deps=["world", "teacher", "distill"], config_of=lambda c: c.verify),
        Stage("quantize", stage_quantize, deps=["world", "teacher", "distill"], config_of=lambda c: (c.quantize, c.verify)),
    ]
    compare_cfg = lambda c: (c.verify, c.baselines.compare_verify)  # noqa: E731
    methods = ["surgical"] + [m for m, key in BASELINE_KEYS.items() if getattr(cfg.baselines, key)]
    for m in methods:
        stages.append(Stage(f"compare-{m}", _baseline_stage(m),
                            deps=["world", "teacher", "curate", "generate", "distill"],
                            config_of=lambda c, m=m: (compare_cfg(c), c.distill, c.baselines.unlearn, m)))
    if cfg.baselines.cross_domain:
        stages.append(Stage("cross-domain", stage_cross_domain, deps=["world", "teacher", "curate"],
                            config_of=lambda c: c.distill))
    stages.append(Stage("report", stage_report, deps=[s.name for s in stages],
                        config_of=lambda c: c.baselines))
    return stages


def make_runner(cfg: PipelineConfig, run_dir: str | Path | None = None, console: Console | None = None) -> Runner:
    return Runner(build_stages(cfg), run_dir or cfg.run_dir, cfg, console=console)


def run_pipeline(config_path: str | Path | None, run_dir: str | Path | None = None, from_stage: str | None = None,
                 only: str | None = None, force: bool = False, quiet: bool = False) -> dict:
    """Run a pipeline YAML (default: the demo config) stage by stage with caching."""
    cfg = load_config(config_path) if config_path else demo_config()
    runner = make_runner(cfg, run_dir, console=Console(stderr=True, quiet=quiet))
    return runner.run(from_stage=from_stage, only=only, force=force, quiet=quiet)


def run_demo(out_dir: str | Path = "runs/demo", quiet: bool = False) -> int:
    """`surgical demo`: the whole method on the arithmetic world; prints the headline table and the report."""
    from ..report import print_headline

    t0 = time.perf_counter()
    results = run_pipeline(None, run_dir=out_dir, quiet=quiet)
    wall = time.perf_counter() - t0
    print_headline(Path(out_dir), Console(width=170), wall_s=wall)
    if not results:
        return 1
    return 2 if final_verdict(out_dir) == "fail" else 0


def final_verdict(run_dir: str | Path) -> str | None:
    """The verdict a run ends in: the quantized student's re-verify when it ran, else the verify stage's."""
    run_dir = Path(run_dir)
    q = run_dir / "quantize" / "quantize.json"
    if q.exists():
        v = read_json(q).get("verify") or {}
        if v.get("verdict"):
            return v["verdict"]
    f = run_dir / "verify" / "verify.json"
    return read_json(f).get("verdict") if f.exists() else None
