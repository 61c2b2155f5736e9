"""Slow checks: lm-eval agreement, the report in headless Chromium."""

import json
import shutil
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


def test_mc_agrees_with_lm_eval(tmp_path, world_tokenizer, world):
    """Our MC accuracy (acc and acc_norm) matches lm-evaluation-harness on the world's task within 1 point."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from surgical.config import WorldConfig
    from surgical.models import make_tiny_model
    from surgical.verify.probes import mc_hits
    from surgical.world import write_world

    files = write_world(WorldConfig(), tmp_path / "world")
    model_dir = tmp_path / "m"
    model = make_tiny_model("llama", len(world_tokenizer), seed=3)
    model.save_pretrained(model_dir)
    world_tokenizer.save_pretrained(model_dir)
    # lm-eval adds no BOS for causal LMs by default; our scoring (and the world's training) does.
    res = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},add_bos_token=True,dtype=float32",
                          tasks=["surgical_arith_mul"], device="cpu", batch_size=32,
                          task_manager=TaskManager(include_path=files["lm_eval_tasks"]))
    theirs = res["results"]["surgical_arith_mul"]
    acc, acc_norm = mc_hits(model, world_tokenizer, world.mc_sets["test"]["mul"])
    assert abs(sum(acc) / len(acc) - theirs["acc,none"]) <= 0.01
    assert abs(sum(acc_norm) / len(acc_norm) - theirs["acc_norm,none"]) <= 0.01


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
    assert r.exit_code in (0, 2), r.output
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
