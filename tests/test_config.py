import filecmp
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from surgical.cli import app
from surgical.config import ConfigError, PipelineConfig, default_config_path, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_config_is_valid_and_packaged_copy_matches():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert filecmp.cmp(REPO / "configs" / "demo.yaml", default_config_path(), shallow=False)


def test_every_error_has_its_field_path():
    with pytest.raises(ConfigError) as ei:
        parse_config({"teacher": {"lr": -1, "hidden_size": "wide"}, "world": {"bogus": 1}})
    paths = {p for p, _ in ei.value.errors}
    assert {"teacher.lr", "teacher.hidden_size", "world.bogus"} <= paths


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("teacher:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert "line" in str(ei.value)


def test_cli_validate_exit_codes(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  max_steps: 0\n  lr: abc\n")
    r = runner.invoke(app, ["config", "validate", str(bad)])
    assert r.exit_code == 1
    assert "teacher.max_steps" in r.output and "teacher.lr" in r.output
    r = runner.invoke(app, ["config", "validate", str(REPO / "configs" / "demo.yaml")])
    assert r.exit_code == 0, r.output


def test_cli_config_show_round_trips(tmp_path):
    r = CliRunner().invoke(app, ["config", "show"])
    assert r.exit_code == 0
    f = tmp_path / "full.yaml"
    f.write_text(r.stdout)
    assert load_config(f) == load_config(default_config_path())


def test_cli_help_lists_every_stage():
    r = CliRunner().invoke(app, ["--help"])
    for stage in ("world", "teacher", "map", "curate", "generate", "distill", "verify", "quantize", "run", "demo",
                  "config"):
        assert stage in r.output, stage


def test_baselines_overrides_are_typed(tmp_path):
    """A typo in baselines.compare_verify or baselines.unlearn is an error with its path, not a silent no-op."""
    import pytest
    import yaml

    from surgical.config import ConfigError, load_config

    for section, body in (("compare_verify", {"n_itemz": 10}), ("compare_verify", {"n_items": -1}),
                          ("unlearn", {"max_stepz": 5}), ("unlearn", {"lr": 0})):
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump({"baselines": {section: body}}))
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert f"baselines.{section}" in str(e.value), str(e.value)
    p.write_text(yaml.safe_dump({"baselines": {"compare_verify": {"n_items": 10}, "unlearn": {"max_steps": 5}}}))
    assert load_config(p).baselines.unlearn == {"max_steps": 5}


def test_yaml_faults_are_one_line_errors(tmp_path):
    """A directory, non-UTF-8 bytes, a duplicate key, an infinite learning rate: each an error naming where."""
    import pytest

    from surgical.config import ConfigError

    cases = {"dup.yaml": b"distill:\n  lr: 0.1\n  lr: 0.2\n", "inf.yaml": b"distill:\n  lr: .inf\n",
             "nan.yaml": b"verify:\n  n_items: 10\ndistill:\n  weight_decay: .nan\n", "bin.yaml": b"\xff\xfe run_dir: x"}
    expect = {"dup.yaml": "duplicate key 'lr'", "inf.yaml": "distill.lr", "nan.yaml": "distill.weight_decay",
              "bin.yaml": "not UTF-8"}
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / name)
        assert expect[name] in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    r = CliRunner().invoke(app, ["config", "validate", str(tmp_path / "dup.yaml")])
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_validate_checks_the_files_a_pipeline_names(tmp_path):
    import yaml

    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"name": "s", "domains": [
        {"name": "f", "role": "forget", "qa": "f.jsonl"}, {"name": "r", "role": "retain", "qa": "r.jsonl"}]}))
    for d in ("f", "r"):
        (tmp_path / f"{d}.jsonl").write_text('{"prompt": "p", "answers": ["a"]}\n')
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({"name": "p", "suite": "suite.yaml",
                                                          "forbidden": [{"name": "f"}, {"name": "ghost"}]}))
    cfg = {"policy": "policy.yaml", "teacher": {"model": "no/such/dir/model"},
           "data": {"source": "files", "corpus": ["corpus.jsonl"]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["config", "validate", str(tmp_path / "p.yaml")])
    assert r.exit_code == 1
    for needle in ("data.corpus[0]", "corpus.jsonl", "teacher.model", "ghost"):
        assert needle in r.output, r.output
    (tmp_path / "corpus.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({"name": "p", "suite": "suite.yaml",
                                                          "forbidden": [{"name": "f"}]}))
    cfg["teacher"]["model"] = "packaged:smollm2"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    from surgical.models import packaged_smollm2_gguf

    if packaged_smollm2_gguf() is not None:
        r = CliRunner().invoke(app, ["config", "validate", str(tmp_path / "p.yaml")])
        assert r.exit_code == 0, r.output


def test_thresholds_whose_sum_exceeds_1_are_an_error(tmp_path):
    import pytest
    import yaml

    from surgical.policy import load_policy

    for th, field in (({"chance_mc": 0.9, "forget_mc_max_above_chance": 0.2}, "chance_mc + forget_mc_max"),
                      ({"chance_mc": 0.5, "forget_mc_max_above_chance": 0.6}, "exceeds 1")):
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump({"name": "p", "forbidden": [{"name": "f"}], "thresholds": th}))
        with pytest.raises(ConfigError) as e:
            load_policy(p)
        assert field in str(e.value) and "thresholds" in str(e.value)


def test_set_overrides_a_nested_field_and_names_a_bad_one():
    from surgical.config import demo_config, with_overrides

    base = demo_config()
    cfg = with_overrides(base, ["map.ig_steps=0", "baselines.compare_verify.relearn_lrs=[0.01, 0.02]",
                                "distill.seed=3"])
    assert (cfg.map.ig_steps, cfg.distill.seed) == (0, 3) and base.map.ig_steps == {"mlp": 1, "heads": 4, "resid": 1}
    assert cfg.baselines.compare_verify["relearn_lrs"] == [0.01, 0.02]
    assert with_overrides(base, []) is base
    per_site = with_overrides(base, ["map.ig_steps={mlp: 1, heads: 4, resid: 0}"]).map
    assert per_site.ig_steps_by_site() == {"mlp": 1, "heads": 4, "resid": 0}
    assert cfg.map.ig_steps_by_site() == {"mlp": 0, "heads": 0, "resid": 0}
    for bad, says in (("map.no_such_knob=1", "map.no_such_knob: no such config field"),
                      ("mapp.ig_steps=1", "mapp.ig_steps: no such config field (mapp)"),
                      ("map.ig_steps=-1", "map.ig_steps: Value error, -1; expected N >= 0"),
                      ("map.ig_steps={mlp: 1, heads: 4}", "map.ig_steps: Value error, missing site(s) resid"),
                      ("map.ig_steps={mlp: 1, heads: 4, resid: 1, attn: 2}", "unknown site(s) attn"),
                      ("map.ig_steps={mlp: 1, heads: x, resid: 1}", "heads: 'x'; expected N >= 0"),
                      ("map.ig_steps", "expected SECTION.FIELD=VALUE"),
                      ("map.ig_steps=[", "is not valid YAML")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            with_overrides(base, [bad])


def test_cli_set_reaches_the_stage_configs(tmp_path):
    r = CliRunner().invoke(app, ["run", "--set", "map.nope=1", "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 1 and "map.nope: no such config field" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()  # refused before any stage ran
    r = CliRunner().invoke(app, ["run", "--set", "map.ig_steps=0", "--run-dir", str(tmp_path / "r"), "--status"])
    assert r.exit_code == 0 and "map" in r.output
    r = CliRunner().invoke(app, ["experiment", "leak", "--set", "distill.lr=fast", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "distill.lr" in r.output and not (tmp_path / "x").exists()
