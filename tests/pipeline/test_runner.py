"""The stage runner: caching, skipping, --from, --only, --force and resume after an interruption."""

import pytest

from surgical.io import read_json, write_json
from surgical.pipeline.runner import PipelineError, Result, Runner, Stage


class Cfg(dict):
    def model_dump(self, mode="json"):
        return dict(self)


def make_stages(calls, fail_at=None):
    def writer(name, value_of):
        def fn(cfg, inputs, out_dir):
            calls.append(name)
            if fail_at and fail_at[0] == name:
                fail_at.pop()
                raise KeyboardInterrupt("simulated kill")
            values = {d: read_json(p / "out.json")["value"] for d, p in inputs.dirs.items()}
            value = value_of(cfg, values)
            write_json(out_dir / "out.json", {"value": value})
            return Result({"value": value})
        return fn

    return [
        Stage("a", writer("a", lambda c, i: c["a"]), config_of=lambda c: c["a"]),
        Stage("b", writer("b", lambda c, i: i["a"] * 10 + c["b"]), deps=["a"], config_of=lambda c: c["b"]),
        Stage("c", writer("c", lambda c, i: i["b"] + 1), deps=["b"]),
    ]


def test_second_run_skips_everything(tmp_path):
    calls = []
    r = Runner(make_stages(calls), tmp_path, Cfg(a=1, b=2))
    res = r.run(quiet=True)
    assert calls == ["a", "b", "c"] and res["c"]["summary"]["value"] == 13
    res = r.run(quiet=True)
    assert calls == ["a", "b", "c"]
    assert {v["status"] for v in res.values()} == {"cached"}


def test_changed_config_reruns_that_stage_and_dependents_only(tmp_path):
    calls = []
    Runner(make_stages(calls), tmp_path, Cfg(a=1, b=2)).run(quiet=True)
    calls.clear()
    res = Runner(make_stages(calls), tmp_path, Cfg(a=1, b=5)).run(quiet=True)
    assert calls == ["b", "c"]
    assert res["a"]["status"] == "cached" and res["c"]["summary"]["value"] == 16


def test_an_edited_or_deleted_output_reruns_its_stage(tmp_path):
    calls = []
    r = Runner(make_stages(calls), tmp_path, Cfg(a=1, b=2))
    r.run(quiet=True)
    write_json(tmp_path / "b" / "out.json", {"value": 99})  # someone edits b's output by hand
    calls.clear()
    res = r.run(quiet=True)
    assert calls == ["b"]  # b is re-made; c saw the same content as before, so it stays cached
    assert res["c"]["summary"]["value"] == 13 and read_json(tmp_path / "b" / "out.json")["value"] == 12
    (tmp_path / "a" / "out.json").unlink()  # a deleted output
    calls.clear()
    r.run(quiet=True)
    assert calls == ["a"]


def test_changed_input_content_invalidates_dependents(tmp_path):
    """An input stage's content that changed because the stage re-ran differently re-runs its dependents."""
    calls = []
    Runner(make_stages(calls), tmp_path, Cfg(a=1, b=2)).run(quiet=True)
    calls.clear()
    Runner(make_stages(calls), tmp_path, Cfg(a=3, b=2)).run(quiet=True)
    assert calls == ["a", "b", "c"]


def test_from_and_only_and_force(tmp_path):
    calls = []
    r = Runner(make_stages(calls), tmp_path, Cfg(a=1, b=2))
    r.run(quiet=True)
    calls.clear()
    r.run(from_stage="b", quiet=True)
    assert calls == ["b", "c"]
    calls.clear()
    r.run(only="a", quiet=True)
    assert calls == ["a"]
    calls.clear()
    r.run(force=True, quiet=True)
    assert calls == ["a", "b", "c"]
    with pytest.raises(PipelineError, match="no such stage"):
        r.run(from_stage="nope", quiet=True)


def test_only_needs_its_inputs(tmp_path):
    r = Runner(make_stages([]), tmp_path, Cfg(a=1, b=2))
    with pytest.raises(PipelineError, match="needs 'a'"):
        r.run(only="b", quiet=True)


def test_resume_after_interruption(tmp_path):
    calls = []
    fail = ["b"]
    r = Runner(make_stages(calls, fail_at=fail), tmp_path, Cfg(a=1, b=2))
    with pytest.raises(KeyboardInterrupt):
        r.run(quiet=True)
    assert calls == ["a", "b"]
    assert r.status() == {"a": "done", "b": "pending", "c": "pending"}
    calls.clear()
    res = r.run(quiet=True)
    assert calls == ["b", "c"] and res["a"]["status"] == "cached"
    assert res["c"]["summary"]["value"] == 13


def test_failed_rerun_leaves_no_stale_marker(tmp_path):
    calls = []
    r = Runner(make_stages(calls), tmp_path, Cfg(a=1, b=2))
    r.run(quiet=True)
    fail = ["b"]
    r2 = Runner(make_stages(calls, fail_at=fail), tmp_path, Cfg(a=1, b=2))
    with pytest.raises(KeyboardInterrupt):
        r2.run(from_stage="b", quiet=True)
    assert not (tmp_path / "b" / ".done.json").exists()


def test_deps_must_come_first(tmp_path):
    with pytest.raises(PipelineError, match="do not come before"):
        Runner([Stage("b", lambda c, i, o: {}, deps=["a"]), Stage("a", lambda c, i, o: {})], tmp_path, Cfg())
