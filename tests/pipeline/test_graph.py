"""The generic stage graph's pieces that need no model: the config's data and teacher fields, the fail-closed
final verdict, which baselines apply to a user's data, and the always-re-checked data stage."""

import json

import pytest
import yaml

from surgical.config import ConfigError, load_config
from surgical.io import write_json
from surgical.pipeline.graph import build_stages, final_verdict, not_applicable
from surgical.pipeline.runner import Inputs, Result, Runner, Stage


def _yaml(tmp_path, data):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_files_pipeline_needs_a_teacher_a_corpus_and_a_policy(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_yaml(tmp_path, {"data": {"source": "files", "corpus": ["c.jsonl"]}, "policy": "p.yaml"}))
    assert "teacher.model" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(_yaml(tmp_path, {"data": {"source": "files"}, "teacher": {"model": "m"}, "policy": "p.yaml"}))
    assert "data.corpus" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(_yaml(tmp_path, {"data": {"source": "files", "corpus": ["c"]}, "teacher": {"model": "m"}}))
    assert "policy" in str(e.value)


def test_input_paths_are_relative_to_the_yaml_and_a_hub_id_stays_a_hub_id(tmp_path):
    (tmp_path / "teacher").mkdir()
    cfg = load_config(_yaml(tmp_path, {"data": {"source": "files", "corpus": ["c.jsonl"], "suite": "s.yaml"},
                                       "teacher": {"model": "teacher"}, "policy": "pol.yaml"}))
    assert cfg.teacher.model == str(tmp_path / "teacher")
    assert cfg.data.corpus == [str(tmp_path / "c.jsonl")] and cfg.data.suite == str(tmp_path / "s.yaml")
    assert cfg.policy == str(tmp_path / "pol.yaml")
    hub = load_config(_yaml(tmp_path, {"data": {"source": "files", "corpus": ["c.jsonl"]},
                                       "teacher": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "policy": "p"}))
    assert hub.teacher.model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_files_graph_has_no_world_only_stage(tmp_path):
    cfg = load_config(_yaml(tmp_path, {"data": {"source": "files", "corpus": ["c.jsonl"]},
                                       "teacher": {"model": "m"}, "policy": "p"}))
    names = [s.name for s in build_stages(cfg)]
    assert "cross-domain" not in names and names[:2] == ["data", "teacher"] and names[-1] == "report"


@pytest.mark.parametrize(("verify", "quantized", "final"), [
    ("pass", "pass", "pass"), ("pass", "fail", "fail"), ("fail", "pass", "fail"), ("pass", "error", "error"),
    ("pass", None, "pass"), (None, None, None), ("pass", "", "error"),
])
def test_the_final_verdict_fails_closed(tmp_path, verify, quantized, final):
    if verify is not None:
        write_json(tmp_path / "verify" / "verify.json", {"verdict": verify})
    if quantized is not None:
        write_json(tmp_path / "verify-quantized" / "summary.json", {"verdict": quantized})
    assert final_verdict(tmp_path) == final


def test_unlearning_baselines_say_why_they_cannot_run_on_text_only_data(tmp_path):
    (tmp_path / "data").mkdir()
    write_json(tmp_path / "data" / "data.json", {"source": "files", "forget_domains": ["f"], "retain_domains": ["r"]})
    cur = tmp_path / "curate"
    cur.mkdir()
    (cur / "quarantine.jsonl").write_text(json.dumps({"text": "forbidden text"}) + "\n")
    (cur / "gold.jsonl").write_text(json.dumps({"text": "kept text"}) + "\n")
    inputs = Inputs({"data": tmp_path / "data", "curate": cur}, tmp_path)
    why = not_applicable("graddiff", None, inputs)
    assert why and "prompt, completion" in why
    assert not_applicable("oracle", None, inputs) is None  # text is a label for a language model
    assert not_applicable("plain-kd", None, inputs) is None
    (cur / "quarantine.jsonl").write_text(json.dumps({"prompt": "p", "completion": " c"}) + "\n")
    (cur / "gold.jsonl").write_text(json.dumps({"prompt": "q", "completion": " d"}) + "\n")
    assert not_applicable("rmu", None, inputs) is None


def test_an_always_run_stage_reruns_but_its_unchanged_output_keeps_later_caches(tmp_path):
    calls = []

    def check(cfg, inputs, out):
        calls.append("check")
        write_json(out / "data.json", {"files": cfg["files"]})
        return Result({"ok": True})

    def later(cfg, inputs, out):
        calls.append("later")
        write_json(out / "x.json", {})
        return Result()

    class Cfg(dict):
        def model_dump(self, mode="json"):
            return dict(self)

    stages = [Stage("data", check, always_run=lambda c: True), Stage("later", later, deps=["data"])]
    Runner(stages, tmp_path, Cfg(files="a")).run(quiet=True)
    Runner(stages, tmp_path, Cfg(files="a")).run(quiet=True)
    assert calls == ["check", "later", "check"]
    assert Runner(stages, tmp_path, Cfg(files="a")).status() == {"data": "done", "later": "done"}
    # the check's record changes (an edited input): the later stage re-runs
    stages[0] = Stage("data", lambda c, i, o: (write_json(o / "data.json", {"files": "b"}), Result())[1],
                      always_run=lambda c: True)
    calls.clear()
    Runner(stages, tmp_path, Cfg(files="a")).run(quiet=True)
    assert calls == ["later"]


def _files_config(tmp_path, run_dir):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"run_dir": str(run_dir), "policy": "policy.yaml", "teacher": {"model": "m"},
                                 "data": {"source": "files", "corpus": ["c.jsonl"]}}))
    return p


def test_a_run_dir_that_is_a_file_is_one_line_and_exit_1(tmp_path):
    from typer.testing import CliRunner

    from surgical.cli import app

    (tmp_path / "taken").write_text("a file")
    r = CliRunner().invoke(app, ["run", str(_files_config(tmp_path, tmp_path / "taken")), "--quiet"])
    assert r.exit_code == 1 and "is a file" in r.output, r.output
    assert isinstance(r.exception, SystemExit)  # handled: no traceback


def test_a_full_disk_in_a_stage_is_one_line_and_exit_1(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from surgical.cli import app
    from surgical.pipeline import graph

    def full(cfg, inputs, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "data.json"))

    monkeypatch.setattr(graph, "stage_data", full)
    r = CliRunner().invoke(app, ["run", str(_files_config(tmp_path, tmp_path / "run")), "--quiet"])
    assert r.exit_code == 1, r.output
    assert "stage 'data'" in r.output and "No space left on device" in r.output
    assert isinstance(r.exception, SystemExit)  # handled: no traceback
    assert not (tmp_path / "run" / "data" / ".done.json").exists()


def test_a_missing_policy_referenced_from_a_pipeline_is_one_line_and_exit_1(tmp_path):
    from typer.testing import CliRunner

    from surgical.cli import app

    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n')
    r = CliRunner().invoke(app, ["run", str(_files_config(tmp_path, tmp_path / "run")), "--quiet"])
    assert r.exit_code == 1 and "policy.yaml" in r.output and "no such file" in r.output, r.output
    assert isinstance(r.exception, SystemExit)


def test_run_exit_codes_follow_the_final_verdict():
    from surgical.pipeline.cli import exit_code_of

    assert [exit_code_of(v) for v in (None, "pass", "fail", "incomplete", "error")] == [0, 0, 2, 3, 3]


def test_the_oracle_trains_before_verify_and_calibrates_it():
    from surgical.config import demo_config

    stages = {s.name: s for s in build_stages(demo_config())}
    names = list(stages)
    assert names.index("compare-oracle") < names.index("verify")
    assert "compare-oracle" in stages["verify"].deps and "compare-oracle" in stages["verify-quantized"].deps
    off = demo_config().model_copy(update={"baselines": demo_config().baselines.model_copy(update={"oracle": False})})
    assert "compare-oracle" not in [s.name for s in build_stages(off)]
    assert "compare-oracle" not in next(s for s in build_stages(off) if s.name == "verify").deps
