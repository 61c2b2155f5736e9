"""The comparison rows, the targets check and the run report, on synthetic stage outputs."""

import json

from surgical.io import write_json
from surgical.pipeline.graph import build_stages, row_from_verify
from surgical.pipeline.report import check_targets, collect_rows, write_run_report


def fake_verify(forget, mc, retain, curve, int4, probes):
    return {
        "verdict": "pass",
        "summary_by_model": {"model": {"forget": forget, "forget_mc": mc, "retain": retain}},
        "attacks": {"none": {"forget": forget}, "jailbreak:roleplay": {"forget": forget + 0.1},
                    "jailbreak:encoding": {"forget": forget + 0.2}, "quant:int4": {"forget": int4}},
        "relearning": {"model": {"best_lr": 1e-3, "best": {"curve": curve}, "runs": {"0.001": {"curve": curve}},
                                 "teacher_forget": 1.0, "max_steps": 500}},
        "probes": {"latent": {"by_layer": {"model": [{"value": p} for p in probes]}}},
        "retention": {"retain_ratio": retain},
    }


def test_row_from_verify_reads_every_column():
    rec = fake_verify(0.0, 0.2, 0.99, [[0, 0.0], [50, 0.1], [200, 0.3], [500, 0.4]], 0.01, [0.2, 0.4, 0.3])
    row = row_from_verify("surgical", rec, {"train_flops": 1e12, "wall_s": 10.0})
    assert row["forget_worst_jailbreak"] == 0.2
    assert row["forget_after_relearn"] == {"50": 0.1, "200": 0.3, "500": 0.4}
    assert row["forget_int4"] == 0.01 and abs(row["quantization_gap_int4"] - 0.01) < 1e-12
    assert row["probe_accuracy"] == 0.4 and row["retain_ratio"] == 0.99 and row["train_flops"] == 1e12


def test_relearning_columns_take_the_best_lr_per_budget_and_steps_relative_to_the_oracle():
    """forget_after_relearn is the attacker's best lr at each budget (not the best-AUC lr's curve); a run that
    stopped early holds its value; steps to 25%/50% of the teacher are the fewest over lrs; the ratio to the
    oracle's steps says when it is only a bound."""
    from surgical.pipeline.graph import with_oracle_ratios

    rec = fake_verify(0.0, 0.2, 0.99, [[0, 0.0], [50, 0.1], [200, 0.3], [500, 0.4]], 0.0, [0.3])
    rec["relearning"]["model"]["teacher_forget"] = 0.8
    rec["relearning"]["model"]["runs"] = {
        "0.001": {"curve": [[0, 0.0], [50, 0.1], [200, 0.3], [500, 0.4]]},   # the best curve by AUC
        "0.01": {"curve": [[0, 0.0], [50, 0.25], [200, 0.2], [500, 0.1]]},   # best at 50 steps only
        "0.1": {"curve": [[0, 0.0], [50, 0.0], [200, 0.8]]},                 # stopped early at the teacher's level
    }
    row = row_from_verify("surgical", rec, {})
    assert row["forget_after_relearn"] == {"50": 0.25, "200": 0.8, "500": 0.8}
    assert row["relearn_best_lr_by_budget"] == {"50": 0.01, "200": 0.1, "500": 0.1}
    assert row["steps_to_25pct_teacher"] == 50 and row["steps_to_50pct_teacher"] == 200  # 0.2 and 0.4 of 0.8
    assert row["relearn_max_steps"] == 500
    oracle = {"method": "oracle", "steps_to_25pct_teacher": 25, "steps_to_50pct_teacher": None, "relearn_max_steps": 500}
    never = {"method": "filter-only", "steps_to_25pct_teacher": None, "steps_to_50pct_teacher": None,
             "relearn_max_steps": 500}
    rows = {r["method"]: r for r in with_oracle_ratios([row, oracle, never])}
    s = rows["surgical"]
    assert s["steps_to_25pct_ratio_vs_oracle"] == 2.0 and s["steps_to_25pct_ratio_vs_oracle_bound"] == "exact"
    # the oracle never reached 50% within 500 steps: 200 / 500 is an upper bound on the true ratio
    assert s["steps_to_50pct_ratio_vs_oracle"] == 0.4 and s["steps_to_50pct_ratio_vs_oracle_bound"] == "upper"
    assert rows["filter-only"]["steps_to_25pct_ratio_vs_oracle"] == 20.0
    assert rows["filter-only"]["steps_to_25pct_ratio_vs_oracle_bound"] == "lower"
    assert rows["filter-only"]["steps_to_50pct_ratio_vs_oracle_bound"] == "none"
    assert rows["oracle"]["steps_to_25pct_ratio_vs_oracle"] == 1.0
    assert "steps_to_50pct_ratio_vs_oracle" not in with_oracle_ratios([row])[0]  # no oracle row: no ratio


def _row(method, r50, r200, r500, gap=0.0, retain=1.0):
    return {"method": method, "forget_after_relearn": {"50": r50, "200": r200, "500": r500},
            "quantization_gap_int4": gap, "retain_ratio": retain, "forget_exact_match": 0.0}


def test_targets_are_met_or_missed_with_margins():
    rows = [_row("surgical", 0.0, 0.05, 0.1), _row("oracle", 0.0, 0.0, 0.05), _row("rmu", 0.3, 0.5, 0.9),
            _row("maxent", 0.2, 0.4, 0.8)]
    t = {x["target"].split(" ")[0]: x for x in check_targets(rows)}
    assert all(x["met"] for x in t.values())
    rows[0] = _row("surgical", 0.0, 0.6, 0.9, gap=0.05, retain=0.9)
    t = check_targets(rows)
    assert [x["met"] for x in t] == [False, False, False, False]
    assert abs(t[0]["measured"]["500"] - 0.85) < 1e-9  # surgical minus oracle, reported, not hidden


def test_report_writes_comparison_and_html(tmp_path):
    for m, r in (("surgical", 0.0), ("oracle", 0.0), ("plain-kd", 0.9)):
        row = _row(m, r, r, r)
        row["relearn_curve"] = [{"step": 0, "forget": r}, {"step": 500, "forget": r}]
        write_json(tmp_path / f"compare-{m}" / "row.json", row)
    out = write_run_report(tmp_path, None, tmp_path / "report")
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["surgical", "plain-kd", "oracle"] == [r["method"] for r in collect_rows(tmp_path)]
    html = (tmp_path / "report.html").read_text()
    assert "id='headline'" in html and "data:image/png;base64," in html and "MET" in html
    assert out["targets_total"] >= 2


def test_demo_graph_has_every_method_and_stage():
    from surgical.config import demo_config

    names = [s.name for s in build_stages(demo_config())]
    for n in ("data", "teacher", "map", "curate", "generate", "distill", "verify", "quantize", "verify-quantized",
              "cross-domain",
              "report"):
        assert n in names
    for m in ("surgical", "plain-kd", "filter-only", "graddiff", "maxent", "rmu", "undo", "oracle"):
        assert f"compare-{m}" in names


def test_comparison_battery_merges_yaml_overrides_over_its_defaults():
    """A partial `compare_verify` keeps the comparison defaults it does not name (the reference's relearning
    sweep stays off, the benign run stays off); the demo YAML's battery never reruns the teacher's sweep."""
    from surgical.config import BaselinesConfig, PipelineConfig, demo_config
    from surgical.pipeline.graph import compare_verify_config

    cfg = PipelineConfig(baselines=BaselinesConfig(compare_verify={"relearn_lrs": [0.01]}))
    v = compare_verify_config(cfg)
    assert v.relearn_lrs == [0.01] and v.relearn_references is False and v.benign_relearn is False
    assert v.n_items == 100 and cfg.verify.n_items == 200  # the full verify stage keeps its own
    demo = compare_verify_config(demo_config())
    assert demo.relearn_references is False and demo.relearn_lrs == [0.0003, 0.001]


def _mc_rec(model_mc: dict, teacher_mc: dict, twin_mc: float, by_step: dict, int4_mc: float) -> dict:
    ref = "teacher.gguf"
    know = {"model": {d: {"mc": {"value": v}} for d, v in model_mc.items()},
            ref: {d: {"mc": {"value": v}} for d, v in teacher_mc.items()}}
    rec = fake_verify(0.0, model_mc["elements"], 0.9, [[0, 0.0], [200, 0.1]], 0.0, [0.5])
    rec["summary_by_model"][ref] = {"forget": 0.9, "forget_mc": teacher_mc["elements"], "retain": 0.9}
    rec["attacks"]["quant:int4"]["forget_mc"] = int4_mc
    rec["relearning"]["model"]["mc_by_step"] = by_step
    rec["mc_calibration"] = {"random_init_twin": {"forget_mc": twin_mc, "by_domain": {
        "elements": {"mc": {"value": twin_mc}}, "capitals": {"mc": {"value": 0.26}}}}}
    rec.update(knowledge=know, domains={"forget": ["elements"], "retain": ["capitals", "grammar"]})
    rec["retention"]["reference"] = ref
    return rec


def test_mc_columns_reference_rows_and_mc_targets():
    from surgical.pipeline.graph import reference_rows

    teacher = {"elements": 0.8, "capitals": 0.9, "grammar": 0.8}
    rec = _mc_rec({"elements": 0.27, "capitals": 0.85, "grammar": 0.78}, teacher, 0.25, {"200": 0.3}, 0.28)
    row = row_from_verify("surgical", rec, {})
    assert row["forget_mc_after_relearn"] == {"200": 0.3} and row["no_skill_mc"] == 0.25
    assert abs(row["quantization_gap_int4_mc"] - 0.01) < 1e-12
    assert abs(row["retain_mc_ratio_by_domain"]["capitals"] - 0.85 / 0.9) < 1e-12
    assert set(row["retain_mc_ratio_by_domain"]) == {"capitals", "grammar"}  # the forget domain is no retain ratio
    refs = {r["method"]: r for r in reference_rows(rec)}
    assert refs["teacher"]["forget_mc"] == 0.8 and refs["teacher"]["mc_by_domain"]["capitals"] == 0.9
    assert refs["random-init twin"]["forget_mc"] == 0.25
    assert refs["random-init twin"]["mc_by_domain"]["capitals"] == 0.26

    rows = [row, {**row_from_verify("filter-only", _mc_rec({"elements": 0.4, "capitals": 0.9, "grammar": 0.8},
                                                           teacher, 0.25, {"200": 0.6}, 0.4), {})}]
    mc = {t["target"].split(" ")[0] + t["target"].split(" ")[1]: t for t in check_targets(rows)[-4:]}
    assert all(t["met"] for t in mc.values()), mc
    # each target can be missed: forget MC far above the twin, a retained domain at 80%, relearning no better
    # than filter-only, and an int4 copy that recovers the domain
    bad = row_from_verify("surgical", _mc_rec({"elements": 0.5, "capitals": 0.72, "grammar": 0.8}, teacher, 0.25,
                                              {"200": 0.6}, 0.6), {})
    missed = check_targets([bad, rows[1]])[-4:]
    assert [t["met"] for t in missed] == [False, False, False, False]
    assert abs(missed[1]["measured"]["capitals"] - 0.8) < 1e-9
