"""Benchmark: train the demo teacher from scratch and measure wall time and held-out accuracy.

Run: .venv/bin/python benchmarks/bench_teacher.py [--config configs/demo.yaml] [--steps N ...]
Baseline (same run): a teacher given half the optimizer steps, to show how accuracy scales with budget.
Writes benchmarks/results/teacher.json. The issue's bar: >= 95% exact-match and MC on every domain in <= 8 min
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from surgical.config import load_config  # noqa: E402
from surgical.io import write_json  # noqa: E402
from surgical.world.teacher import train_teacher  # noqa: E402


def run(cfg, steps: int, out: Path) -> dict:
    t_cfg = cfg.teacher.model_copy(update={"max_steps": steps})
    t0 = time.perf_counter()
    rec = train_teacher(cfg.world, t_cfg, out, quiet=True)
    total_s = time.perf_counter() - t0
    return {"max_steps": steps, "train_wall_s": rec["train_wall_s"], "total_wall_s": round(total_s, 1),
            "train_tokens": rec["train_tokens"], "n_parameters": rec["n_parameters"],
            "tokens_per_s": round(rec["train_tokens"] / rec["train_wall_s"]), "test_metrics": rec["test_metrics"],
            "final_loss": rec["loss_curve"][-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"))
    ap.add_argument("--no-baseline", action="store_true", help="Skip the half-budget baseline run.")
    args = ap.parse_args()
    cfg = load_config(args.config)
    torch.set_num_threads(cfg.teacher.threads)
    results = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        results["default"] = run(cfg, cfg.teacher.max_steps, Path(tmp) / "full")
        if not args.no_baseline:
            results["half_budget_baseline"] = run(cfg, cfg.teacher.max_steps // 2, Path(tmp) / "half")
            results["time_ratio_default_over_half"] = round(
                results["default"]["train_wall_s"] / results["half_budget_baseline"]["train_wall_s"], 2)
    m = results["default"]["test_metrics"]
    results["min_exact_match"] = min(v["exact_match"] for v in m.values())
    results["min_mc_accuracy"] = min(v["mc_accuracy"] for v in m.values())
    print(json.dumps(results, indent=2))
    out = Path(__file__).resolve().parent / "results" / "teacher.json"
    write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
