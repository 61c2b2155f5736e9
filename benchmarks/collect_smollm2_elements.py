"""Collect a finished ``surgical run examples/smollm2-elements/pipeline.yaml`` into
``benchmarks/results/smollm2-elements.json`` (issue 12's comparison table): one row per method from the run's
``comparison.json`` (the comparison battery's rows, then the teacher and the random-init twin measured on the same
items), the per-stage wall times from each stage's ``.done.json`` and the student's size as a fraction of the
teacher's.

    python benchmarks/collect_smollm2_elements.py [--run-dir runs/smollm2-elements] [--out FILE] [--config YAML]

``--config``: the pipeline YAML the run was made from, when it is a variant of the example (such as
benchmarks/configs/smollm2-elements-cut8.yaml); the expected stages and the command come from it.

It reads what the run wrote and measures nothing itself; a stage that has not finished is listed as missing, and
the file says ``status: partial`` then (before the report stage, the rows come from each ``compare-*/row.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from surgical._quiet import silence_import_noise

silence_import_noise()

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-elements" / "pipeline.yaml"
KEEP = ("method", "forget_exact_match", "forget_mc", "forget_mc_after_relearn", "forget_mc_int4",
        "quantization_gap_int4_mc", "forget_after_relearn", "forget_int4", "forget_worst_jailbreak",
        "no_skill_mc", "probe_accuracy", "retain_exact_match", "retain_ratio", "mc_by_domain",
        "retain_mc_ratio_by_domain", "relearn_best_lr_by_budget", "train_flops", "wall_s", "verdict", "battery")


def stage_times(run_dir: Path) -> dict[str, float]:
    """Each finished stage's own wall time, from the marker the pipeline runner writes when a stage ends."""
    from surgical.pipeline.runner import MARKER

    return {d.name: json.loads((d / MARKER).read_text())["wall_s"]
            for d in sorted(p for p in run_dir.iterdir() if p.is_dir()) if (d / MARKER).exists()}


def expected_stages(config: Path = EXAMPLE) -> list[str]:
    """The stages the pipeline has (the same graph `surgical run` builds from it)."""
    from surgical.config import load_config
    from surgical.pipeline.graph import build_stages

    return [s.name for s in build_stages(load_config(config))]


def student_size(run_dir: Path) -> dict:
    student = json.loads((run_dir / "distill" / "distill.json").read_text()).get("student") or {}
    return {"n_parameters": student.get("n_parameters"), "teacher_parameters": student.get("teacher_parameters"),
            "fraction_of_teacher": student.get("size_ratio"),
            "kept_layers": student.get("kept_layers"), "mlp_width": student.get("mlp_width"),
            "cut_neurons_per_layer": {k: len(v) for k, v in (student.get("cut_neurons") or {}).items()}}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _f(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict]) -> str:
    """The README's headline table for the real model: forget MC clean / after relearning / int4, the no-skill
    level, each retained domain's MC and the retain ratio."""
    retain = ("capitals", "languages", "grammar", "addition")
    head = ["method", "forget MC", "MC after relearn " + "/".join(
        sorted({k for r in rows for k in (r.get("forget_mc_after_relearn") or {})}, key=int)), "int4 MC",
            *[f"{d} MC" for d in retain], "retain ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        relearn = r.get("forget_mc_after_relearn") or {}
        mc = r.get("mc_by_domain") or {}
        name = r["method"] if r["method"] != "surgical" else "**surgical**"
        lines.append("| " + " | ".join([
            name, _f(r.get("forget_mc")),
            " / ".join(_f(relearn[k]) for k in sorted(relearn, key=int)) or "-",
            _f(r.get("forget_mc_int4")), *[_f(mc.get(d)) for d in retain], _f(r.get("retain_ratio"), 3)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "smollm2-elements"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "smollm2-elements.json"))
    ap.add_argument("--note", help="how the run was made, when it was not one plain `surgical run`")
    ap.add_argument("--config", default=str(EXAMPLE), help="the pipeline YAML the run was made from")
    args = ap.parse_args(argv)
    config = Path(args.config)
    run_dir = Path(args.run_dir)
    if (run_dir / "comparison.json").exists():
        public = json.loads((run_dir / "comparison.json").read_text())
    else:  # the report stage has not run: the same rows, read from each compare-<method>/row.json
        from surgical.pipeline.report import collect_rows

        public = collect_rows(run_dir)
        if not public:
            print(f"{run_dir}: no comparison rows yet (has a compare-* stage finished?)", file=sys.stderr)
            return 1
    rows = [{k: r[k] for k in KEEP if k in r} for r in public]
    stages = stage_times(run_dir)
    missing = [s for s in expected_stages(config) if s not in stages]
    out = {
        "status": "complete" if not missing else f"partial: stages not finished: {missing}",
        "command": f"surgical run {_shown(config)} (2 CPU cores, one job)",
        **({"note": args.note} if args.note else {}),
        "rows": rows,
        "wall_s": round(sum(stages.values()), 1),
        "stages": stages,
        "student": student_size(run_dir) if (run_dir / "distill" / "distill.json").exists() else None,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(f"{r['method']:18s} forget MC {r.get('forget_mc')}  after relearn {r.get('forget_mc_after_relearn')}"
              f"  int4 {r.get('forget_mc_int4')}  retain {r.get('retain_ratio')}")
    print(markdown(rows))
    print(f"wall {out['wall_s']} s; stages {stages}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
