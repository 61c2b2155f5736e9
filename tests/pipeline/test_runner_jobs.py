"""`--jobs N`: independent stages run at once in spawned processes, each capped at its share of the cores; the
markers, keys and outputs are the serial run's; a failure stops new starts and keeps what finished."""

import os
import time

import pytest

from surgical.io import read_json, write_json
from surgical.pipeline.runner import PipelineError, Result, Runner, Stage, StageFailed


class Cfg(dict):
    def model_dump(self, mode="json"):
        return dict(self)


def _stage(name: str):
    def fn(cfg, inputs, out_dir):
        if cfg.get("fail") == name:
            raise ValueError(f"{name}: bad field 'x'")
        t0 = time.time()
        time.sleep(cfg.get("sleep", 0.0))
        if cfg.get("meet") and name in ("b", "c"):  # b and c each wait for the other to have started
            (inputs.run_dir / f"started-{name}").touch()
            other = inputs.run_dir / f"started-{'c' if name == 'b' else 'b'}"
            deadline = time.time() + 120
            while not other.exists():
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: the other independent stage never started alongside it")
                time.sleep(0.05)
        values = {d: read_json(p / "out.json")["value"] for d, p in inputs.dirs.items()}
        value = cfg["base"] + sum(values.values())
        write_json(out_dir / "out.json", {"value": value})
        write_json(out_dir / "proc.json", {"pid": os.getpid(), "start": t0, "end": time.time(),
                                           "cap": os.environ.get("SURGICAL_MAX_THREADS")})
        return Result({"value": value})
    return fn


def build(cfg):
    """a -> (b, c) -> d: b and c are independent. Module-level, so a spawned process can rebuild the stages."""
    return [
        Stage("a", _stage("a"), config_of=lambda c: c["base"]),
        Stage("b", _stage("b"), deps=["a"], config_of=lambda c: c["base"]),
        Stage("c", _stage("c"), deps=["a"], config_of=lambda c: c["base"]),
        Stage("d", _stage("d"), deps=["b", "c"]),
    ]


def _proc(run_dir, name):
    return read_json(run_dir / name / "proc.json")


def test_independent_stages_run_at_once_with_the_serial_runs_markers(tmp_path):
    cfg = Cfg(base=1, meet=True)
    par = Runner(build(cfg), tmp_path / "par", cfg, rebuild=build)
    res = par.run(quiet=True, jobs=2)  # b and c wait for each other: a serial run would fail here
    assert list(res) == ["a", "b", "c", "d"] and {v["status"] for v in res.values()} == {"ran"}
    b, c = _proc(tmp_path / "par", "b"), _proc(tmp_path / "par", "c")
    assert b["start"] < c["end"] and c["start"] < b["end"], "b and c did not overlap"
    assert len({_proc(tmp_path / "par", n)["pid"] for n in "abcd"} | {os.getpid()}) == 5  # a process each
    assert b["cap"] == c["cap"] == str(max(1, (os.cpu_count() or 1) // 2))
    # a stage that runs alone (nothing else running or ready) gets every core
    assert _proc(tmp_path / "par", "a")["cap"] == _proc(tmp_path / "par", "d")["cap"] == str(os.cpu_count() or 1)
    assert res["b"]["threads"] == max(1, (os.cpu_count() or 1) // 2) and res["a"]["threads"] == (os.cpu_count() or 1)
    assert _proc(tmp_path / "par", "a")["end"] <= b["start"]  # a dependency finishes before its dependents
    assert max(b["end"], c["end"]) <= _proc(tmp_path / "par", "d")["start"]
    cfg = Cfg(base=1)  # a serial run cannot meet; "meet" is not in any stage key, so the markers still match
    ser = Runner(build(cfg), tmp_path / "ser", cfg)
    sres = ser.run(quiet=True)
    assert {n: v["summary"] for n, v in sres.items()} == {n: v["summary"] for n, v in res.items()}
    assert res["d"]["summary"]["value"] == 1 + (1 + 1) + (1 + 1)
    # the parallel run's markers are the serial runner's: a serial re-run skips every stage, and so does -j 2
    again = Runner(build(cfg), tmp_path / "par", cfg).run(quiet=True)
    assert {v["status"] for v in again.values()} == {"cached"}
    again = Runner(build(cfg), tmp_path / "par", cfg, rebuild=build).run(quiet=True, jobs=2)
    assert {v["status"] for v in again.values()} == {"cached"}
    # a changed config re-runs what depends on it, in parallel too
    cfg2 = Cfg(base=2, sleep=0.0)
    res2 = Runner(build(cfg2), tmp_path / "par", cfg2, rebuild=build).run(quiet=True, jobs=2)
    assert res2["d"]["status"] == "ran" and res2["d"]["summary"]["value"] == 2 + 4 + 4


def test_a_failing_stage_stops_new_starts_and_keeps_what_finished(tmp_path):
    cfg = Cfg(base=1, fail="c", sleep=0.5)
    r = Runner(build(cfg), tmp_path, cfg, rebuild=build)
    with pytest.raises(StageFailed) as info:
        r.run(quiet=True, jobs=2)
    assert info.value.stage == "c" and isinstance(info.value.__cause__, ValueError)  # the CLI's one-line errors
    assert "bad field 'x'" in str(info.value)
    assert (tmp_path / "b" / ".done.json").exists() and not (tmp_path / "c" / ".done.json").exists()
    assert not (tmp_path / "d").exists()
    fixed = Cfg(base=1, sleep=0.0)
    res = Runner(build(fixed), tmp_path, fixed, rebuild=build).run(quiet=True, jobs=2)
    # what finished before the failure is kept: a and b are cached, c and d run
    assert [res[n]["status"] for n in "abcd"] == ["cached", "cached", "ran", "ran"]
    assert res["d"]["summary"]["value"] == 5


def test_jobs_needs_a_rebuildable_runner(tmp_path):
    cfg = Cfg(base=1)
    with pytest.raises(PipelineError, match="rebuild"):
        Runner(build(cfg), tmp_path, cfg).run(quiet=True, jobs=2)


def test_thread_cap(monkeypatch):
    from surgical.threads import capped, set_threads

    monkeypatch.delenv("SURGICAL_MAX_THREADS", raising=False)
    assert capped(4) == 4
    monkeypatch.setenv("SURGICAL_MAX_THREADS", "1")
    assert capped(4) == 1 and capped(1) == 1
    import torch

    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("SURGICAL_MAX_THREADS", "nonsense")
    assert capped(3) == 3


def _growing(name: str):
    """c asks for every core, waits until b has finished, then follows its share file until it grows."""
    def fn(cfg, inputs, out_dir):
        import torch

        from surgical.threads import follow_share, set_threads

        rec = {"start_threads": set_threads(64)}
        if name == "c":
            deadline = time.time() + 120
            while not (inputs.run_dir / "b" / "out.json").exists() and time.time() < deadline:
                time.sleep(0.05)
            while torch.get_num_threads() < (os.cpu_count() or 1) and time.time() < deadline:
                follow_share()
                time.sleep(0.05)
            rec["end_threads"] = torch.get_num_threads()
        write_json(out_dir / "out.json", {"value": 1})
        write_json(out_dir / "proc.json", rec)
        return Result({"value": 1})
    return fn


def build_growing(cfg):
    return [Stage("a", _growing("a")), Stage("b", _growing("b"), deps=["a"]), Stage("c", _growing("c"), deps=["a"])]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to split")
def test_a_stage_left_running_alone_grows_to_every_core(tmp_path):
    cfg = Cfg(base=1)
    Runner(build_growing(cfg), tmp_path, cfg, rebuild=build_growing).run(quiet=True, jobs=2)
    cores = os.cpu_count() or 1
    c = _proc(tmp_path, "c")
    assert c["start_threads"] == cores // 2  # started beside b
    assert c["end_threads"] == cores  # b finished: c's training loop picked up the whole machine
    assert (tmp_path / "logs" / ".c.threads").read_text() == str(cores)


def test_follow_share_applies_the_share_file(tmp_path, monkeypatch):
    import torch

    import surgical.threads as th

    before = torch.get_num_threads()
    monkeypatch.setattr(th, "_requested", th._requested)  # restored after the test, like the thread count below
    try:
        _follow_share_checks(th, torch, tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(before)  # later tests in this process keep their threads


def _follow_share_checks(th, torch, tmp_path, monkeypatch):
    monkeypatch.setenv(th.ENV, "1")
    share = tmp_path / "share"
    assert th.set_threads(2) == 1
    assert th.follow_share() is None  # no share file: not a parallel run
    monkeypatch.setenv(th.SHARE_FILE_ENV, str(share))
    share.write_text("2")
    assert th.follow_share() == 2 and torch.get_num_threads() == 2 and th.thread_cap() == 2
    assert th.follow_share() is None  # unchanged
    share.write_text("garbage")
    assert th.follow_share() is None and torch.get_num_threads() == 2
    share.write_text("1")
    assert th.follow_share() == 1 and torch.get_num_threads() == 1
