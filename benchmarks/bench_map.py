"""The map of the demo teacher: wall time, validation, and two baselines measured in the same run.

Compares, in one run:
  * the map's ranking (attribution patching: estimated forget minus retain loss change) against the baseline
    "activation selectivity" ranking (Cohen's d of the activation, forget vs retain): forget and retain
    exact-match drops and specificity ratio at the same k, and the ratio of the two specificity ratios;
  * attribution patching against exact activation patching of every unit: seconds for all units by one
    backward pass per batch vs the measured seconds per exactly patched unit times the number of units
    (speed-up ratio);
  * the map's wall time (SAE included) against the issue's budget of 180 s on 2 CPU cores.

Run: .venv/bin/python benchmarks/bench_map.py [--threads 2] [--out benchmarks/results/map.json]
Needs the demo teacher (trained first if not cached: ~6-8 minutes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from surgical._quiet import silence_import_noise

silence_import_noise()

BUDGET_S = 180.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "map.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from surgical.config import demo_config
    from surgical.io import write_json
    from surgical.map.run import run_demo

    cfg = demo_config()
    cfg = cfg.model_copy(update={"map": cfg.map.model_copy(update={"threads": args.threads})})
    with tempfile.TemporaryDirectory() as tmp:
        full = run_demo(Path(tmp) / "map", cfg, quiet=True).summary
        base_map = cfg.map.model_copy(update={"rank_by": "selectivity", "sae": False, "validation_k_sweep": []})
        base = run_demo(Path(tmp) / "baseline", cfg.model_copy(update={"map": base_map}), quiet=True).summary

    v, vb = full["validation"], base["validation"]
    m = full["model"]
    n_units = m["n_layers"] * (m["mlp_width"] + m["n_heads"])
    n_patched = full["attribution_vs_exact"]["n_patched"]
    exact_per_unit_s = full["timings_s"]["exact_patching_s"] / n_patched
    result = {
        "wall_s": full["wall_s"], "budget_s": BUDGET_S, "wall_over_budget": full["wall_s"] / BUDGET_S,
        "timings_s": full["timings_s"], "threads": args.threads,
        "attribution_vs_exact_spearman": full["attribution_vs_exact_spearman"],
        "spearman_detail": full["attribution_vs_exact"]["spearman"],
        "map": {"k": v["k"], "baseline_exact_match": v["baseline_exact_match"],
                "map_delta": v["map_ablation"]["delta_exact_match"],
                "random_delta": v["random_ablation"]["delta_exact_match"],
                "forget_drop": v["map_ablation"]["forget_drop"], "retain_drop": v["map_ablation"]["retain_drop"],
                "specificity_ratio": v["specificity_ratio"], "sweep": v["sweep"]},
        "baseline_selectivity_ranking": {
            "forget_drop": vb["map_ablation"]["forget_drop"], "retain_drop": vb["map_ablation"]["retain_drop"],
            "delta": vb["map_ablation"]["delta_exact_match"], "specificity_ratio": vb["specificity_ratio"]},
        "specificity_map_over_selectivity_baseline": v["specificity_ratio"] / vb["specificity_ratio"],
        "attribution_speedup_over_exact_all_units": exact_per_unit_s * n_units / full["timings_s"]["attribution_s"],
        "exact_s_per_unit": exact_per_unit_s, "n_units": n_units,
        "sae": [{"layer": b["layer"], **{k: b["quality"][k] for k in ("fvu_heldout", "l0", "dead_fraction",
                                                                      "delta_lm_loss_forget", "delta_lm_loss_retain")},
                 "clamping": {name: {"forget_drop": b["clamping"][name]["map_ablation"]["forget_drop"],
                                     "retain_drop": b["clamping"][name]["map_ablation"]["retain_drop"],
                                     "specificity_ratio": b["clamping"][name]["specificity_ratio"]}
                              for name in ("zero", "negative")} if "clamping" in b else None}
                for b in full["sae"]],
        "recommended_layers": full["recommended_layers"], "spine": full["spine"],
    }
    write_json(args.out, result)
    print(f"map of the demo teacher: {full['wall_s']:.0f} s (budget {BUDGET_S:.0f} s, ratio "
          f"{result['wall_over_budget']:.2f}); phases {full['timings_s']}")
    print(f"attribution vs exact patching Spearman: {full['attribution_vs_exact_spearman']:.3f}; "
          f"attribution speed-up over exact patching of all {n_units} units: "
          f"{result['attribution_speedup_over_exact_all_units']:.0f}x")
    for name, block in (("map (attribution)", v), ("baseline (selectivity)", vb)):
        d = block["map_ablation"]["delta_exact_match"]
        print(f"{name:24s} k={block['k']}: " + ", ".join(f"{dom} {100 * x:+.0f}" for dom, x in d.items())
              + f" pts; specificity {block['specificity_ratio']:.2f}")
    r = v["random_ablation"]["delta_exact_match"]
    print(f"{'random control':24s} k={v['k']}: " + ", ".join(f"{dom} {100 * x:+.0f}" for dom, x in r.items()) + " pts")
    print(f"specificity map / selectivity baseline: {result['specificity_map_over_selectivity_baseline']:.2f}")
    for s in result["sae"]:
        print(f"SAE layer {s['layer']}: FVU {s['fvu_heldout']:.3f}, L0 {s['l0']:.1f}, Δ LM loss forget "
              f"{s['delta_lm_loss_forget']:+.3f} retain {s['delta_lm_loss_retain']:+.3f}; clamping {s['clamping']}")
    print(f"wrote {args.out}")
    print(json.dumps({"specificity_ratio": v["specificity_ratio"], "wall_s": full["wall_s"]}))


if __name__ == "__main__":
    main()
