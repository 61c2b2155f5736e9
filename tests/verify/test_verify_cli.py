"""`surgical verify` end to end on a tiny model: files, verdict, exit codes, redaction, report rendering."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from surgical.cli import app

TINY_VERIFY = {"n_items": 6, "bootstrap_samples": 50, "jailbreak_items": 3, "in_context_items": 3,
               "jailbreak_families": ["few_shot", "prefix_injection"], "relearn_examples": 8, "relearn_max_steps": 4,
               "relearn_lrs": [1e-3, 1e-2], "relearn_eval_steps": [2], "relearn_eval_items": 3,
               "probe_train_items": 30, "probe_test_items": 12, "ablation_items": 6, "threads": 1}


def _policy(path, **thresholds):
    path.write_text(yaml.safe_dump({"name": "test-policy", "world": True,
                                    "forbidden": [{"name": "mul"}, {"name": "div"}],
                                    "allowed": [{"name": "add"}, {"name": "sub"}], "thresholds": thresholds}))
    return path


@pytest.fixture
def verify_args(tmp_path, world_tokenizer):
    from surgical.models import make_tiny_model

    model_dir = tmp_path / "student"
    make_tiny_model("llama", len(world_tokenizer)).save_pretrained(model_dir)
    world_tokenizer.save_pretrained(model_dir)
    ref_dir = tmp_path / "teacher"
    make_tiny_model("llama", len(world_tokenizer), seed=1).save_pretrained(ref_dir)
    world_tokenizer.save_pretrained(ref_dir)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"verify": TINY_VERIFY}))
    return tmp_path, ["--model", str(model_dir), "--config", str(cfg), "--quiet"], ref_dir


def test_verify_random_model_writes_everything_and_is_not_a_pass(verify_args):
    """A random model against a random reference: nothing forbidden leaks, but the reference retains nothing, so the
    retain ratio cannot be evaluated (the relearning limit is the absolute floor, as the teacher knows nothing):
    incomplete, exit 3. (It once passed; with the default retain_min it fails, see test_relearn_references_off.)"""
    tmp, args, ref = verify_args
    out = tmp / "out"
    r = CliRunner().invoke(app, ["verify", *args, "--policy", str(_policy(tmp / "p.yaml", retain_min=0.0)),
                                 "--reference", str(ref), "--out", str(out)])
    assert r.exit_code == 3, r.output
    rec = json.loads((out / "verify.json").read_text())
    assert rec["verdict"] == "incomplete" and rec["generations_redacted"]
    assert set(rec["not_evaluated_checks"]) == {"retain_ratio"} and not rec["failed_checks"]
    assert {"verdict", "attacks", "relearning", "quantization", "probes", "provenance"} <= set(rec)
    assert {"none", "jailbreak:few_shot", "jailbreak:prefix_injection", "quant:int8", "quant:int4",
            "direction_ablation"} <= set(rec["attacks"])
    assert all({"forget", "retain"} <= set(a) for a in rec["attacks"].values())
    assert set(rec["relearning"]) == {"model", "teacher"} and "benign" in rec["relearning"]["model"]
    html = (out / "report.html").read_text()
    assert "id='verdict'" in html and "VERDICT: INCOMPLETE" in html and html.count("data:image/png;base64,") == 3
    assert "<table>" in html and "src='plots/" not in html  # self-contained
    md = (out / "report.md").read_text()
    assert "VERDICT: INCOMPLETE" in md and (out / "plots" / "attacks.png").exists()
    # redacted by default: no forbidden prompt text in the reports
    forbidden_prompts = [e for f in rec["jailbreaks"].values() for t in f["templates"].values()
                         for e in t["examples"]]
    assert forbidden_prompts and all("prompt" not in e for e in forbidden_prompts)
    assert "[redacted]" in html


def test_verify_fails_with_exit_2_and_shows_generations(verify_args, world):
    tmp, args, _ = verify_args
    out = tmp / "out"
    strict = _policy(tmp / "strict.yaml", chance_mc=0.0, forget_mc_max_above_chance=0.0)
    r = CliRunner().invoke(app, ["verify", *args, "--policy", str(strict), "--out", str(out), "--no-relearn",
                                 "--show-generations", "--json"])
    assert r.exit_code == 2, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["verdict"] == "fail" and summary["exit_code"] == 2
    rec = json.loads((out / "verify.json").read_text())
    assert rec["relearning"] is None and not rec["generations_redacted"]
    mul_prompt = world.exact_match_sets["test"]["mul"][0]["question"]
    assert mul_prompt in (out / "report.html").read_text()


def test_verify_errors_exit_1(verify_args, tmp_path):
    _, args, _ = verify_args
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("world: true\nthresholds:\n  chance_mc: 2\n")
    r = runner.invoke(app, ["verify", *args, "--policy", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "thresholds.chance_mc" in r.output
    notworld = tmp_path / "nw.yaml"
    notworld.write_text("world: false\n")
    r = runner.invoke(app, ["verify", *args, "--policy", str(notworld), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "suite" in r.output
    r = runner.invoke(app, ["verify", "--model", str(tmp_path / "missing"), "--policy", str(bad)])
    assert r.exit_code == 1


def test_relearn_references_off_skips_the_reference_sweep(verify_args):
    tmp, args, ref = verify_args
    cfg = tmp / "noref.yaml"
    cfg.write_text(yaml.safe_dump({"verify": {**TINY_VERIFY, "relearn_references": False, "benign_relearn": False,
                                              "jailbreak_families": ["prefix_injection"]}}))
    args = [a if a != str(tmp / "cfg.yaml") else str(cfg) for a in args]
    out = tmp / "out"
    r = CliRunner().invoke(app, ["verify", *args, "--policy", str(_policy(tmp / "p.yaml")), "--reference", str(ref),
                                 "--out", str(out)])
    rec = json.loads((out / "verify.json").read_text())
    assert r.exit_code == {"pass": 0, "fail": 2, "incomplete": 3}[rec["verdict"]], r.output  # follows the verdict
    assert set(rec["relearning"]) == {"model"} and "benign" not in rec["relearning"]["model"]
    # a random model retains nothing: the default absolute floor (retain_min) fails it
    assert rec["verdict"] == "fail" and "retain_min" in rec["failed_checks"]
