"""Which ranking of the demo teacher's MLP neurons is most forget-specific: four rankings, one run, one teacher.

Every ranking is validated the same way: its top-k neurons mean-ablated against k random neurons from the same
layers, on the suite's QA data (`validation_kind: qa`; the demo teacher's MC does not move under these ablations)
scored by greedy generation (`qa_metric: accuracy`), i.e. exact-match of the worked answer. Specificity ratio =
(forget drop / retain drop) of the ranking over the same ratio of the random control (docs/map.md). Rankings:

  * selectivity: Cohen's d of the activation (the activation-statistics baseline);
  * attribution: the first-order estimate (attribution patching, `ig_steps: 0`) of forget minus retain effect;
  * exact (w): the attribution's top 32 neurons per layer mean-ablated one by one for real, ranked by exact forget
    effect minus w x exact retain effect (`rank_by: exact`), for w = 1 and 3;
  * attribution_ig1, exact_w1_ig1: the same with integrated-gradients estimates (`ig_steps: 1`,
    surgical/map/integrated.py) in place of attribution patching; attribution_ig1 is the demo config's map;
  * attribution_ig4, exact_w1_ig4: integrated gradients with 4 midpoint steps;
  * attribution_igsite, exact_w1_igsite: steps per site (`ig_steps: {mlp: 1, heads: 4, resid: 1}`).

Ratios are against the selectivity baseline measured in the same run. Also printed: the Spearman of estimate vs
exact effect over the 128 exactly patched candidates (a less range-restricted set than exact_top_n's 6 per layer).

Run: .venv/bin/python benchmarks/bench_map_ranking.py [--threads 1] [--k 64] [--teacher-seeds 0,1,2]
     [--variants selectivity,attribution,...] [--out PATH]
Needs the demo teacher (trained first if not cached: ~7 minutes). Cost: a few minutes on one thread; the exact
ranking's cost grows with layers x candidates (2 patched passes each over the map's forget and retain batches).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from surgical._quiet import silence_import_noise

silence_import_noise()


# steps per site: neurons as ig1 (their best Spearman and specificity), heads as ig4 (their best Spearman)
IG_PER_SITE = {"mlp": 1, "heads": 4, "resid": 1}

# every variant names its estimator (ig_steps), whatever the demo config's default is
VARIANTS = {"selectivity": {"rank_by": "selectivity", "ig_steps": 0},
            "attribution": {"rank_by": "attribution", "ig_steps": 0},
            "exact_w1": {"rank_by": "exact", "exact_rank_retain_weight": 1.0, "ig_steps": 0},
            "exact_w3": {"rank_by": "exact", "exact_rank_retain_weight": 3.0, "ig_steps": 0},
            "attribution_ig1": {"rank_by": "attribution", "ig_steps": 1},
            "exact_w1_ig1": {"rank_by": "exact", "exact_rank_retain_weight": 1.0, "ig_steps": 1},
            "attribution_ig4": {"rank_by": "attribution", "ig_steps": 4},
            "exact_w1_ig4": {"rank_by": "exact", "exact_rank_retain_weight": 1.0, "ig_steps": 4},
            "attribution_igsite": {"rank_by": "attribution", "ig_steps": IG_PER_SITE},
            "exact_w1_igsite": {"rank_by": "exact", "exact_rank_retain_weight": 1.0, "ig_steps": IG_PER_SITE}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--teacher-seeds", default="0",
                    help="comma-separated demo-teacher seeds (teacher.seed); each is trained first if not cached")
    ap.add_argument("--variants", default="selectivity,attribution,exact_w1,exact_w3",
                    help="comma-separated rankings to run (of: " + ", ".join(VARIANTS) + ")")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "map-ranking.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from surgical.config import demo_config
    from surgical.io import provenance, write_json
    from surgical.map.run import run_demo

    common = {"threads": args.threads, "sae": False, "validation_k": args.k, "validation_k_sweep": [],
              "validation_kind": "qa", "qa_metric": "accuracy", "exact_rank_candidates": args.candidates}
    names = [x.strip() for x in args.variants.split(",") if x.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    variants = {n: VARIANTS[n] for n in names}
    seeds = [int(x) for x in args.teacher_seeds.split(",") if x.strip()]
    teachers = {}
    for seed in seeds:
        base = demo_config()
        cfg = base.model_copy(update={"teacher": base.teacher.model_copy(update={"seed": seed})})
        print(f"-- demo teacher seed {seed}", flush=True)
        teachers[str(seed)] = rank_one_teacher(cfg, common, variants, args.k, run_demo)
    summary = {}
    for name in variants:
        spec = [t["rows"][name]["specificity_ratio"] for t in teachers.values()]
        summary[name] = {"specificity_min": min(spec), "specificity_mean": round(sum(spec) / len(spec), 3),
                         "specificity_per_teacher": spec}
    # Spearman of the attribution estimate vs the exact effect, per unit type, per teacher: the exact_w1 run's
    # 128 patched candidates for neurons; the map's exact_top_n targets for heads and layers (few, range-restricted)
    # (per estimator: attribution patching from the attribution / exact_w1 runs, IG from the *_ig1 runs)
    spearman = {}
    for seed, t in teachers.items():
        block = {}
        for est, (exact_run, top_run) in {"atp": ("exact_w1", "attribution"),
                                          "ig1": ("exact_w1_ig1", "attribution_ig1"),
                                          "ig4": ("exact_w1_ig4", "attribution_ig4"),
                                          "igsite": ("exact_w1_igsite", "attribution_igsite")}.items():
            pre = "" if est == "atp" else f"{est}_"
            if exact_run is not None and exact_run in t["rows"]:
                er = t["rows"][exact_run]["exact_ranking"]
                block[f"{pre}neurons_128_forget"] = er["spearman_forget"]
                block[f"{pre}neurons_128_retain"] = er["spearman_retain"]
            if top_run in t["rows"]:
                block.update({f"{pre}{k}": t["rows"][top_run]["spearman_top_n"].get(k)
                              for k in ("neurons_forget", "heads_forget", "layers_forget")})
        spearman[seed] = block
    write_json(args.out, {"k": args.k, "threads": args.threads, "teacher_seeds": seeds, "summary": summary,
                          "spearman": spearman, "teachers": teachers,
                          "provenance": provenance({**common, "variants": variants, "teacher_seeds": seeds})})
    print(f"wrote {args.out}")
    print(json.dumps({"summary": summary, "spearman": spearman}, indent=1))


def rank_one_teacher(cfg, common: dict, variants: dict, k: int, run_demo) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in variants.items():
            m = cfg.map.model_copy(update={**common, **over})
            t0 = time.perf_counter()
            s = run_demo(Path(tmp) / name, cfg.model_copy(update={"map": m}), quiet=True).summary
            v = s["validation"]
            rows[name] = {"rank_by": s["rank_by"], "wall_s": round(time.perf_counter() - t0, 1),
                          "baseline": v["baseline"], "map_delta": v["map_ablation"]["delta_exact_match"],
                          "random_delta": v["random_ablation"]["delta_exact_match"],
                          "forget_drop": v["map_ablation"]["forget_drop"],
                          "retain_drop": v["map_ablation"]["retain_drop"],
                          "specificity_ratio": v["specificity_ratio"], "exact_ranking": s.get("exact_ranking"),
                          "units_per_layer": v.get("units_per_layer"),
                          "spearman_top_n": s["attribution_vs_exact"]["spearman"],
                          "attribution": s.get("attribution"), "timings_s": s.get("timings_s")}
            d = rows[name]["map_delta"]
            print(f"{name:12s} k={k}: " + ", ".join(f"{dom} {100 * x:+.0f}" for dom, x in d.items())
                  + f" pts; specificity {v['specificity_ratio']:.2f}; {rows[name]['wall_s']:.0f} s", flush=True)
    base = rows["selectivity"]["specificity_ratio"] if "selectivity" in rows else None
    for r in rows.values():  # the ratio to the baseline measured in the same run (when it was run)
        r["specificity_over_selectivity"] = round(r["specificity_ratio"] / base, 3) if base else None
    for name in ("exact_w1", "exact_w1_ig1", "exact_w1_ig4", "exact_w1_igsite"):
        if name in rows:
            ex = rows[name]["exact_ranking"]
            print(f"{name}: estimate vs exact Spearman over {ex['n_patched']} candidates: forget "
                  f"{ex['spearman_forget']:.3f}, retain {ex['spearman_retain']:.3f}, forget-minus-retain "
                  f"{ex['spearman_score']:.3f}", flush=True)
    return {"teacher_seed": cfg.teacher.seed, "rows": rows}


if __name__ == "__main__":
    main()
