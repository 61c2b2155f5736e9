"""Compare two demo runs row by row, and recompute every comparison row's verdict under today's rules.

    python benchmarks/compare_demo_runs.py BEFORE_RUN_DIR AFTER_RUN_DIR [--name NAME]

Prints, per method, the headline columns of ``comparison.json`` of both runs and their differences, plus the
cross-domain figures; then re-applies ``surgical.verify.verdict.compute_verdict`` (the verdict rules of this
checkout) to every stored ``compare-<method>/verify/verify.json`` of AFTER: once with the demo policy's thresholds
as they are, once with relearning gating as the new default has it. The rules are a pure function of the recorded
figures, so no model is re-run; what the old records lack (the random-init twin's level) stays not evaluated. A
third pass also calibrates the forget MC check on the oracle row's clean forget MC (what the pipeline now does).
Writes ``benchmarks/results/NAME.json`` (default ``demo_before_after``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("forget_exact_match", "forget_mc", "forget_worst_jailbreak", "forget_after_relearn", "forget_int4",
           "probe_accuracy", "retain_ratio", "verdict")


def _rows(run: Path) -> dict[str, dict]:
    return {r["method"]: r for r in json.loads((run / "comparison.json").read_text())}


def _diff(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _diff(a.get(k), b.get(k)) for k in sorted(set(a) | set(b))}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return round(b - a, 6)
    return None if a == b else f"{a} -> {b}"


def recompute(verify_json: Path, thresholds_update: dict, mc_no_skill: dict | None = None) -> dict:
    from surgical.policy import Thresholds
    from surgical.verify.verdict import compute_verdict

    rec = json.loads(verify_json.read_text())
    th = Thresholds(**{**rec.get("thresholds", {}), **thresholds_update})
    ret = rec.get("retention", {})
    side = rec["summary_by_model"]["model"]
    rel = (rec.get("relearning") or {}).get("model")
    v = compute_verdict(rec["attacks"], th, retain=side.get("retain"), reference_retain=ret.get("reference_retain"),
                        relearning=rel, reference_given=bool(rec.get("references")),
                        mc_statistic=rec.get("verdict_mc_statistic", "ci_low"), mc_no_skill=mc_no_skill)
    return {"verdict": v["verdict"], "failed": v["failed"], "not_evaluated": v["not_evaluated"],
            "relearning": next((c for c in v["checks"] if c["name"] == "relearning"), None)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--name", default="demo_before_after")
    args = ap.parse_args()
    before, after = _rows(args.before), _rows(args.after)
    out = {"before_run": str(args.before), "after_run": str(args.after), "methods": {}}
    for m in after:
        a, b = before.get(m, {}), after[m]
        out["methods"][m] = {"before": {k: a.get(k) for k in COLUMNS}, "after": {k: b.get(k) for k in COLUMNS},
                             "after_minus_before": {k: _diff(a.get(k), b.get(k)) for k in COLUMNS}}
        print(f"{m:12s}", " | ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in COLUMNS if k != "forget_after_relearn"))
        print(f"{'':12s}  relearn {a.get('forget_after_relearn')} -> {b.get('forget_after_relearn')}")
    cd = [p / "cross-domain" / "cross_domain.json" for p in (args.before, args.after)]
    if all(p.exists() for p in cd):
        out["cross_domain"] = {"before": json.loads(cd[0].read_text()), "after": json.loads(cd[1].read_text())}
        print("cross-domain", json.dumps(out["cross_domain"]))
    rules = {}
    oracle_vj = args.after / "compare-oracle" / "verify" / "verify.json"
    no_skill = ({"forget_mc": json.loads(oracle_vj.read_text())["attacks"]["none"]["forget_mc"], "model": "oracle"}
                if oracle_vj.exists() else None)
    for m in after:
        vj = args.after / f"compare-{m}" / "verify" / "verify.json"
        if not vj.exists():
            continue
        rules[m] = {"recorded": after[m].get("verdict"), "now_demo_policy": recompute(vj, {}),
                    "now_relearning_gating": recompute(vj, {"gate_on_relearning": True}),
                    "now_relearning_gating_mc_on_oracle": recompute(vj, {"gate_on_relearning": True}, no_skill)}
        r = rules[m]
        print(f"{m:12s} recorded {r['recorded']:10s} now (demo policy) {r['now_demo_policy']['verdict']:10s} "
              f"now (relearning gating) {r['now_relearning_gating']['verdict']:10s} "
              f"failed {r['now_relearning_gating']['failed']} not evaluated {r['now_relearning_gating']['not_evaluated']}")
        c = r["now_relearning_gating_mc_on_oracle"]
        print(f"{'':12s} + forget MC calibrated on the oracle ({no_skill and round(no_skill['forget_mc'], 3)}): "
              f"{c['verdict']} failed {c['failed']}")
    out["verdicts_under_todays_rules"] = rules
    dest = Path(__file__).parent / "results" / f"{args.name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
