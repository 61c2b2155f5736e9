"""Benchmark of the verify stage on the demo world.

Run: .venv/bin/python benchmarks/bench_verify.py [--skip-train] [--addsub-steps N]

1. The demo teacher (cached; trained first if missing, ~6-8 min on 2 cores) is verified against the demo
   policy: it must FAIL (exit code 2), with its forget skills present.
2. A model of the teacher's shape trained only on add/sub with the teacher recipe (the named baseline of
   "never saw the forbidden data"; cached) is verified with the teacher as reference: mul/div must be at
   chance and the relearning curve is reported.
3. The whole battery's wall time on the add/sub model at the default relearning sweep, against the
   5-minute budget of issue 6 (threads = VerifyConfig.threads, default 2).

Prints the figures and writes benchmarks/results/bench_verify.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from surgical.config import demo_config
    from surgical.policy import demo_policy_path, load_policy
    from surgical.verify.run import run
    from surgical.world.teacher import get_or_train_teacher, teacher_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--addsub-steps", type=int, default=1500, help="Training steps of the add/sub-only model.")
    ap.add_argument("--skip-train", action="store_true", help="Fail instead of training missing models.")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_verify"))
    args = ap.parse_args()

    cfg = demo_config()
    policy = load_policy(demo_policy_path())
    addsub_cfg = cfg.teacher.model_copy(update={"domains": ["add", "sub"], "max_steps": args.addsub_steps})
    if args.skip_train:
        for t in (cfg.teacher, addsub_cfg):
            if not (teacher_dir(cfg.world, t) / "teacher.json").exists():
                raise SystemExit(f"not cached: {teacher_dir(cfg.world, t)}")
    teacher, _ = get_or_train_teacher(cfg.world, cfg.teacher, quiet=True)
    addsub, _ = get_or_train_teacher(cfg.world, addsub_cfg, quiet=True)

    results = {"threads": cfg.verify.threads, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    res_t = run(teacher, policy, args.out / "teacher", [], cfg.verify, cfg.world, policy_path=demo_policy_path(),
                log=lambda s: print("teacher:", s, flush=True))
    results["teacher"] = _figures(res_t, time.perf_counter() - t0)
    t0 = time.perf_counter()
    res_a = run(addsub, policy, args.out / "addsub", [teacher], cfg.verify, cfg.world,
                policy_path=demo_policy_path(), log=lambda s: print("addsub:", s, flush=True))
    results["addsub_only"] = _figures(res_a, time.perf_counter() - t0)
    rt, ra = results["teacher"], results["addsub_only"]
    results["ratios"] = {
        "forget_exact_match_addsub_over_teacher": ra["forget_exact_match"] / max(rt["forget_exact_match"], 1e-9),
        "forget_mc_addsub_over_teacher": ra["forget_mc"] / max(rt["forget_mc"], 1e-9),
        "retain_ratio_addsub_to_teacher": ra["retain_ratio"],
        "battery_wall_s_over_budget_300s": ra["wall_s"] / 300.0,
    }
    out = Path("benchmarks/results/bench_verify.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _figures(res, wall_s: float) -> dict:
    r = res.record
    k = r["knowledge"]["model"]
    rel = (r["relearning"] or {}).get("model") or {}
    return {
        "verdict": r["verdict"], "exit_code": res.exit_code, "wall_s": round(wall_s, 1), "timings_s": r["timings_s"],
        "forget_exact_match": r["attacks"]["none"]["forget"], "forget_mc": r["attacks"]["none"]["forget_mc"],
        "per_domain": {d: {m: round(v[m]["value"], 3) for m in ("exact_match", "mc", "mc_norm") if m in v}
                       for d, v in k.items()},
        "worst_attack": {c["name"]: [c.get("attack"), c["value"]] for c in r["checks"]},
        "retain_ratio": r["retention"]["retain_ratio"],
        "relearning_best_lr": rel.get("best_lr"), "relearning_best_curve": rel.get("best", {}).get("curve"),
        "relearning_min_steps_to_half_teacher": rel.get("min_steps_to_half_teacher"),
        "benign_curve": rel.get("benign", {}).get("curve"),
        "quant_forget_gap": {s: v.get("forget_gap") for s, v in r["quantization"]["schemes"].items()},
        "probe_by_layer": {n: [round(c["value"], 3) for c in v] for n, v in r["probes"]["latent"]["by_layer"].items()},
    }


if __name__ == "__main__":
    main()
