"""The suite format: schema errors with field paths, record errors with file:line:field, scorers, the policy
check, the CLI, and the lm-eval export."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from surgical.cli import app
from surgical.policy import Policy
from surgical.suite import SuiteError, check_policy, load_suite, normalize, score_answer


def _suite(tmp_path, domains=None, mc_lines=None):
    (tmp_path / "f-mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (mc_lines or [
        {"question": "Q1", "choices": ["a", "b", "c"], "gold": 1}, {"question": "Q2", "choices": ["x", "y"], "gold": 0}])))
    (tmp_path / "r-qa.jsonl").write_text(json.dumps({"prompt": "The sky is", "answers": ["blue"]}) + "\n")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "domains": domains or [
        {"name": "f", "role": "forget", "mc": "f-mc.jsonl"},
        {"name": "r", "role": "retain", "qa": "r-qa.jsonl", "scorer": "contains"}]}))
    return path


def test_load_and_summary(tmp_path):
    s = load_suite(_suite(tmp_path))
    assert s.role("forget") == ["f"] and s["f"].mc["test"][0]["gold"] == 1 and s["r"].qa["test"][0]["answers"] == ["blue"]
    assert s["f"].split_of("mc", "val") == s["f"].mc["test"]  # no val split: the test split stands in
    assert len(s.data_hash) == 16


@pytest.mark.parametrize("bad, where", [
    ({"question": "Q", "choices": ["a", "b"], "gold": 2}, "gold"),
    ({"question": "Q", "choices": ["a"], "gold": 0}, "choices"),
    ({"choices": ["a", "b"], "gold": 0}, "question"),
])
def test_bad_records_name_file_line_and_field(tmp_path, bad, where):
    path = _suite(tmp_path, mc_lines=[{"question": "ok", "choices": ["a", "b"], "gold": 0}, bad])
    with pytest.raises(SuiteError, match=rf"f-mc.jsonl:2: .*{where}"):
        load_suite(path)


def test_schema_errors(tmp_path):
    from surgical.config import ConfigError

    with pytest.raises(ConfigError, match="no eval data"):
        load_suite(_suite(tmp_path, domains=[{"name": "f", "role": "forget"}]))
    with pytest.raises(ConfigError, match="answer_regex"):
        load_suite(_suite(tmp_path, domains=[{"name": "f", "role": "forget", "mc": "f-mc.jsonl", "scorer": "regex"}]))
    with pytest.raises(ConfigError, match="duplicate"):
        load_suite(_suite(tmp_path, domains=[{"name": "f", "role": "forget", "mc": "f-mc.jsonl"}] * 2))


def test_scorers():
    assert normalize("  The  Blue, sky! ") == "the blue sky"
    assert score_answer(" Blue.", ["blue"], "normalized") and not score_answer("blue sky", ["blue"], "normalized")
    assert score_answer("It is blue today", ["blue"], "contains") and not score_answer("bluest", ["blue"], "contains")
    assert score_answer(" 7*4: so 28", ["28"], "regex", r"so (-?\d+)") and not score_answer("so -28", ["28"], "regex", r"so (-?\d+)")
    assert score_answer("so 1; so 28", ["28"], "regex", r"so (-?\d+)")  # the last match is the answer
    assert score_answer("Fe", ["Fe"], "exact") and not score_answer("fe", ["Fe"], "exact")


def test_policy_check_names_the_missing_domain(tmp_path):
    s = load_suite(_suite(tmp_path))
    assert check_policy(s, Policy(forbidden=[{"name": "f"}], allowed=[{"name": "r"}])) == (["f"], ["r"])
    with pytest.raises(SuiteError, match="'glorp' has no eval data"):
        check_policy(s, Policy(forbidden=[{"name": "f"}, {"name": "glorp"}]))
    with pytest.raises(SuiteError, match="'r' is a retain domain"):
        check_policy(s, Policy(forbidden=[{"name": "r"}]))
    with pytest.raises(ValueError, match="both forbidden and allowed"):
        Policy(forbidden=[{"name": "f"}], allowed=[{"name": "f"}])


def test_cli_validate_and_lm_eval(tmp_path):
    path = _suite(tmp_path)
    r = CliRunner().invoke(app, ["suite", "validate", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["domains"][0]["mc"] == {"test": 2}
    (tmp_path / "f-mc.jsonl").write_text("not json\n")
    r = CliRunner().invoke(app, ["suite", "validate", str(path)])
    assert r.exit_code == 1 and "f-mc.jsonl:1" in r.output
    path = _suite(tmp_path)
    r = CliRunner().invoke(app, ["suite", "lm-eval", str(path), "--out", str(tmp_path / "tasks")])
    assert r.exit_code == 0, r.output
    task = yaml.safe_load((tmp_path / "tasks" / "surgical_s_f.yaml").read_text())
    assert task["output_type"] == "multiple_choice" and task["target_delimiter"] == " "
    assert json.loads(open(task["dataset_kwargs"]["data_files"]).readline())["gold"] == 1


def test_world_suite_is_a_suite(world_suite):
    assert world_suite.role("forget", gated_only=True) == ["mul", "div"] and world_suite.role("retain") == ["add", "sub"]
    mul = world_suite["mul"]
    assert mul.spec.scorer == "regex" and mul.qa["test"][0]["answers"] == [mul.qa["test"][0]["answers"][0]]
    assert mul.probe["train"] and mul.attack and not world_suite["mixed"].spec.gate
    # attack records never overlap the eval items
    assert not {r["prompt"] for r in mul.attack} & {r["prompt"] for r in mul.qa["test"] + mul.qa["val"]}
