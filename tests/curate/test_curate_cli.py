"""`surgical curate` and `surgical generate` through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from surgical.cli import app
from surgical.io import read_jsonl, write_jsonl
from surgical.world.corpus import world_corpus

runner = CliRunner()


@pytest.fixture
def cached_minilm(minilm, monkeypatch):
    from surgical.curate import classifier as clf_mod

    monkeypatch.setattr(clf_mod, "make_embedder", lambda *a, **k: minilm)


def test_curate_cli_on_a_file(tmp_path, cached_minilm):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, world_corpus(split="val")[:40])
    r = runner.invoke(app, ["curate", "--input", str(corpus), "--policy", "configs/policy-demo.yaml",
                            "--out", str(tmp_path / "out"), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[0])
    assert summary["counts"]["read"] == 40
    assert len(summary["forbidden_recall"]["ci95"]) == 2
    gold = read_jsonl(tmp_path / "out" / "gold.jsonl")
    assert gold and all(g["label"] == "allowed" for g in gold)


def test_curate_cli_bad_policy_exits_1_with_the_field_path(tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, [{"text": "1+1: so 2"}])
    bad = tmp_path / "p.yaml"
    bad.write_text("forbidden:\n  - name: mul\n    escalate_at: 0\n")
    r = runner.invoke(app, ["curate", "--input", str(corpus), "--policy", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "forbidden.0.escalate_at" in r.output


def test_curate_cli_needs_input_or_demo(tmp_path):
    r = runner.invoke(app, ["curate", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "--demo" in r.output


def test_generate_cli(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": "07*3:", "answer": 21, "domain": "mul"}, {"prompt": "07+45:", "domain": "add"}])
    r = runner.invoke(app, ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                            "--out", str(tmp_path / "g"), "--max-new-tokens", "5", "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.splitlines()[0])
    assert rep["counts"]["prompts"] == 2 and rep["tokens_generated"] > 0
    assert (tmp_path / "g" / "trajectories.jsonl").exists()


def test_generate_cli_bad_prompts_names_the_line(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+1:"}\n{"question": "no prompt"}\n')
    r = runner.invoke(app, ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                            "--out", str(tmp_path / "g")])
    assert r.exit_code == 1 and ":2:" in r.output


@pytest.mark.slow
def test_curate_demo_meets_the_targets(tmp_path, cached_minilm):
    r = runner.invoke(app, ["curate", "--demo", "--out", str(tmp_path), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "curate.json").read_text())
    assert rep["forbidden_recall"]["value"] >= 0.99 and rep["overfilter_rate"]["value"] <= 0.02
    assert rep["forbidden_recall"]["n"] == 600 and rep["overfilter_rate"]["n"] == 400
