"""The demo graph end to end on a tiny config (data -> teacher -> map -> curate -> generate -> distill ->
verify -> quantize -> verify-quantized -> report, baselines off): every stage reads the world's suite from
RUN_DIR/data/suite and
`surgical run` exits with the final verdict's code. Slow: a few minutes on 2 cores (curate reads the whole
world train split)."""

import json

import pytest
import yaml
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

TINY = {
    "teacher": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_steps": 30,
                "batch_size": 16, "threads": 1},
    "map": {"n_forget": 8, "n_retain": 8, "batch_size": 8, "exact_top_n": 1, "validation_k": 4,
            "validation_k_sweep": [], "validation_limit": 8, "sae": False},
    "generate": {"demo_per_domain": 4, "max_new_tokens": 24, "constitution": "demo", "keep_incorrect": True},
    "distill": {"max_steps": 5, "batch_size": 8, "eval_every": 0},
    "verify": {"n_items": 8, "bootstrap_samples": 20, "jailbreak_items": 2, "in_context_items": 2,
               "jailbreak_families": ["prefix_injection"], "relearn_examples": 4, "relearn_max_steps": 2,
               "relearn_lrs": [1e-3], "relearn_eval_steps": [2], "relearn_eval_items": 2, "quant_schemes": ["int8"],
               "probe_train_items": 20, "probe_test_items": 10, "ablation_items": 4, "threads": 1, "workers": 1},
    "baselines": {"plain_kd": False, "filter_only": False, "graddiff": False, "maxent": False, "rmu": False,
                  "undo": False, "oracle": False, "cross_domain": False,
                  "compare_verify": {"n_items": 8, "jailbreak_items": 2, "relearn_lrs": [1e-3],
                                     "relearn_max_steps": 2, "relearn_eval_steps": [2], "relearn_eval_items": 2,
                                     "probe_train_items": 20, "probe_test_items": 10, "ablation_items": 4,
                                     "in_context_items": 2, "bootstrap_samples": 20}},
}


def test_tiny_demo_graph_runs_through_the_suite(tmp_path):
    from surgical.cli import app

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **TINY}))
    r = CliRunner().invoke(app, ["run", str(cfg), "--quiet"])
    run = tmp_path / "run"
    verify = json.loads((run / "verify" / "verify.json").read_text())
    assert verify["suite"]["path"].endswith("data/suite/suite.yaml")
    assert verify["domains"] == {"forget": ["mul", "div"], "retain": ["add", "sub"], "cross_domain": ["mixed"]}
    distill = json.loads((run / "distill" / "distill.json").read_text())
    assert set(distill["test_metrics"]) >= {"add", "sub", "mul", "div"}
    q = json.loads((run / "verify-quantized" / "summary.json").read_text())
    assert q["status"] == "ran"
    from surgical.pipeline.cli import exit_code_of
    from surgical.pipeline.graph import final_verdict

    assert r.exit_code == exit_code_of(final_verdict(run)), r.output
    assert final_verdict(run) in ("pass", "fail", "incomplete")
