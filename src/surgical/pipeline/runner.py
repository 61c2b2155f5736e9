"""A small content-addressed stage runner: order, caching, resume. It decides nothing else.

Each stage writes into ``RUN_DIR/<stage>/`` and, when it finishes, a marker ``.done.json`` holding its cache
key. The key hashes the stage's config section, the package version and the *content* of every input stage's
output directory, so a stage is skipped exactly when its config and inputs are unchanged. A run killed at any
point leaves the interrupted stage without a valid marker; running again skips the finished stages and
re-runs that one (stages that checkpoint internally, like distill, resume from their checkpoints).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..io import read_json, sha256_json, sha256_path, write_json
from ..threads import ENV as THREAD_ENV

MARKER = ".done.json"


@dataclass
class Inputs:
    """What a stage reads besides its config: the output directory of each stage it depends on (``inputs["map"]``),
    the run directory, and whether to keep quiet."""

    dirs: dict[str, Path]
    run_dir: Path
    quiet: bool = False

    def __getitem__(self, stage: str) -> Path:
        return self.dirs[stage]

    def __contains__(self, stage: str) -> bool:
        return stage in self.dirs


@dataclass
class Result:
    """What a stage returns: a JSON-serialisable summary (recorded in its marker and shown by the report)."""

    summary: dict = field(default_factory=dict)


StageFn = Callable[[Any, Inputs, Path], "Result | dict | None"]


@dataclass
class Stage:
    """A named step with the one entry shape every stage has: ``fn(cfg, inputs, out_dir) -> Result``.
    ``deps`` are the stages whose outputs it reads; ``config_of(pipeline_config)`` is the part of the config it
    depends on (hashed into its key); ``external_inputs(cfg)`` names files outside the run whose content is hashed
    too; ``always_run(cfg)`` marks a stage that re-runs every time (one that only checks and records its inputs,
    so that later stages see a change in them)."""

    name: str
    fn: StageFn
    deps: list[str] = field(default_factory=list)
    config_of: Callable[[Any], Any] = lambda cfg: None
    external_inputs: Callable[[Any], dict[str, str]] = lambda cfg: {}
    always_run: Callable[[Any], bool] = lambda cfg: False


class PipelineError(RuntimeError):
    pass


class StageFailed(RuntimeError):
    """A stage raised; ``stage`` names it and ``__cause__`` is what it raised. Its output has no marker, so the
    next run re-runs it (and nothing after it is marked done)."""

    def __init__(self, stage: str, exc: BaseException):
        self.stage = stage
        super().__init__(f"stage {stage!r}: {exc}")


def _dir_hash(d: Path) -> str:
    return sha256_path(d) if d.exists() else "missing"


class Runner:
    """Runs ``stages`` (in the given order, which must respect deps) under ``run_dir``. ``rebuild(config)``, a
    module-level function that returns the same stages, lets ``run(jobs=N)`` run them in spawned processes (a
    stage's function may be a closure, which cannot be sent to another process; its name can)."""

    def __init__(self, stages: list[Stage], run_dir: str | Path, config: Any, console: Console | None = None,
                 rebuild: Callable[[Any], list[Stage]] | None = None):
        self.stages = stages
        self.rebuild = rebuild
        self._threads_of: dict[str, int] = {}  # the thread cap each stage of a parallel run ran under
        self.by_name = {s.name: s for s in stages}
        self.run_dir = Path(run_dir)
        self.config = config
        self.console = console or Console(stderr=True)
        seen: set[str] = set()
        for s in stages:
            missing = [d for d in s.deps if d not in seen]
            if missing:
                raise PipelineError(f"stage {s.name!r} depends on {missing}, which do not come before it")
            seen.add(s.name)

    def out_dir(self, name: str) -> Path:
        return self.run_dir / name

    def key(self, stage: Stage) -> str:
        """Content address of a stage: config section, version, input stages' output content, external files."""
        cfg = stage.config_of(self.config)
        cfg = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg
        ext = {k: _dir_hash(Path(v)) for k, v in stage.external_inputs(self.config).items()}
        deps = {d: _dir_hash(self.out_dir(d)) for d in stage.deps}
        return sha256_json({"stage": stage.name, "config": cfg, "version": __version__, "deps": deps, "ext": ext})

    def is_done(self, stage: Stage, rerun_checks: bool = True) -> bool:
        """Whether ``stage`` finished with its current key; with ``rerun_checks`` a stage marked ``always_run``
        never counts as done (it re-runs every time)."""
        marker = self.out_dir(stage.name) / MARKER
        if not marker.exists() or (rerun_checks and stage.always_run(self.config)):
            return False
        try:
            rec = read_json(marker)
            # its outputs must be what it wrote: a deleted or edited output re-runs the stage
            return rec.get("key") == self.key(stage) and rec.get("outputs_sha256") == _dir_hash(self.out_dir(stage.name))
        except (ValueError, OSError):
            return False

    def status(self) -> dict[str, str]:
        """'done' or 'pending' per stage (for `surgical run --status`)."""
        return {s.name: ("done" if self.is_done(s, rerun_checks=False) else "pending") for s in self.stages}

    def run(self, from_stage: str | None = None, only: str | None = None, force: bool = False,
            quiet: bool = False, jobs: int = 1) -> dict[str, dict]:
        """Run the stages; returns {stage: {"status": "ran"|"cached", "summary": ..., "wall_s": ...}}.
        ``jobs`` > 1 runs up to that many independent stages at once, each in its own process with an equal
        share of the cores (see ``_run_parallel``)."""
        from ..outputs import OutputError, ensure_out_dir

        try:
            ensure_out_dir(self.run_dir)
        except OutputError as exc:
            raise PipelineError(f"run_dir: {exc}") from None
        for opt, val in (("--from", from_stage), ("--only", only)):
            if val is not None and val not in self.by_name:
                raise PipelineError(f"{opt} {val!r}: no such stage; stages are {', '.join(self.by_name)}")
        names = [s.name for s in self.stages]
        forced_from = names.index(from_stage) if from_stage else None
        if jobs > 1 and not only:
            return self._run_parallel(jobs, forced_from, force, quiet)
        results: dict[str, dict] = {}
        todo = [self.by_name[only]] if only else self.stages
        with Progress(TextColumn("[bold]pipeline"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"),
                      TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                      disable=quiet) as progress:
            task = progress.add_task("", total=len(todo))
            for stage in todo:
                idx = names.index(stage.name)
                must_run = force or (forced_from is not None and idx >= forced_from) or only == stage.name
                for d in stage.deps:
                    if not (self.out_dir(d) / MARKER).exists():
                        raise PipelineError(f"stage {stage.name!r} needs {d!r}, which has not run in {self.run_dir}")
                if not must_run and self.is_done(stage):
                    results[stage.name] = self._cached_result(stage)
                    progress.advance(task)
                    continue
                progress.update(task, description=f"running {stage.name}")
                results[stage.name] = self._run_one(stage, quiet)
                progress.advance(task)
        return results

    def _run_one(self, stage: Stage, quiet: bool, key: str | None = None) -> dict:
        out = self.out_dir(stage.name)
        out.mkdir(parents=True, exist_ok=True)
        marker = out / MARKER
        if marker.exists():
            marker.unlink()  # a stale marker must never survive a re-run that fails half-way
        key = key or self.key(stage)  # computed before the stage writes its own output
        inputs = Inputs({d: self.out_dir(d) for d in stage.deps}, self.run_dir, quiet)
        t0 = time.perf_counter()
        try:
            res = stage.fn(self.config, inputs, out)
        except Exception as exc:
            raise StageFailed(stage.name, exc) from exc
        summary = res.summary if isinstance(res, Result) else (res or {})
        wall = time.perf_counter() - t0
        json.dumps(summary, default=str)  # fail here, not later, if a summary is not serialisable
        write_json(marker, {"key": key, "stage": stage.name, "wall_s": round(wall, 2), "summary": summary,
                            "outputs_sha256": _dir_hash(out), "finished_unix_s": round(time.time(), 3)})
        self.console.print(f"[green]{stage.name}[/green]: done in {wall:.1f} s")
        return {"status": "ran", "summary": summary, "wall_s": round(wall, 2)}

    # ------------------------------------------------------------ parallel stages

    def _cached_result(self, stage: Stage) -> dict:
        """The record of a stage skipped because its marker matches (said on the console)."""
        marker = read_json(self.out_dir(stage.name) / MARKER)
        self.console.print(f"[dim]{stage.name}: unchanged config and inputs, skipped (cached)[/dim]")
        return {"status": "cached", "summary": marker.get("summary", {}), "wall_s": marker.get("wall_s", 0.0)}

    def _run_parallel(self, jobs: int, forced_from: int | None, force: bool, quiet: bool) -> dict[str, dict]:
        """Run the stages with up to ``jobs`` at once: a stage starts when every stage it depends on is done, in
        the stages' order among those ready. Each runs in a fresh spawned process with ``SURGICAL_MAX_THREADS``
        = cores // jobs (every core for a stage that runs alone; surgical.threads caps every stage's torch
        threads and worker processes at it), so the
        stages share the machine without oversubscribing it. Cache keys, markers and outputs are what a serial
        run writes (the key is computed here, from the config as given). A failing stage stops new starts; the
        stages already running finish and keep their markers, then the failure is raised as StageFailed.
        The stages' own progress bars are off (several processes cannot share one terminal): each stage's output
        goes to RUN_DIR/logs/<stage>.log, and this process shows which stages are running."""
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if self.rebuild is None:
            raise PipelineError("jobs > 1 needs a runner made with rebuild= (make_runner does this)")
        names = [s.name for s in self.stages]
        threads = max(1, (os.cpu_count() or 1) // jobs)
        results: dict[str, dict] = {}
        pending = list(self.stages)
        running: dict[Any, Stage] = {}
        failure: tuple[str, BaseException] | None = None
        ctx = mp.get_context("spawn")
        with Progress(TextColumn("[bold]pipeline"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"),
                      TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                      disable=quiet) as progress, \
                ProcessPoolExecutor(jobs, mp_context=ctx, **_fresh_process_per_task()) as pool:
            task = progress.add_task("", total=len(pending))
            while pending or running:
                self._start_ready(pending, running, results, jobs, force, forced_from, names, pool, threads,
                                  progress, task, failure is None)
                self._write_shares(running)
                progress.update(task, description="running " + ", ".join(s.name for s in running.values()))
                if not running:
                    if failure is not None or not pending:
                        break
                    stuck = ", ".join(s.name for s in pending)
                    raise PipelineError(f"stages {stuck} wait on stages that never ran")
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    stage = running.pop(fut)
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # the child died (killed, out of memory: BrokenProcessPool) or
                        outcome = {"error": exc}  # failed before its stage ran; no marker was written
                    if "error" in outcome:
                        if failure is None:
                            failure = (stage.name, outcome["error"])
                        continue
                    results[stage.name] = {**outcome, "threads": self._threads_of.get(stage.name)}
                    self.console.print(f"[green]{stage.name}[/green]: done in {outcome['wall_s']:.1f} s "
                                       f"({self._threads_of.get(stage.name)} threads)")
                    progress.advance(task)
                progress.update(task, description="running " + ", ".join(s.name for s in running.values()))
        if failure is not None:
            name, exc = failure
            self.console.print(f"[dim]{name}: its output is in {self.run_dir / 'logs' / (name + '.log')}[/dim]")
            raise StageFailed(name, exc) from exc
        return {n: results[n] for n in names if n in results}

    def _write_shares(self, running: dict) -> None:
        """Each running stage's share of the cores, cores // (stages running), in RUN_DIR/logs/.<stage>.threads:
        its training loops re-read it (surgical.threads.follow_share), so a stage started beside another gets
        every core once it runs alone. Written atomically (a stage may read it at any moment)."""
        share = max(1, (os.cpu_count() or 1) // max(1, len(running)))
        for stage in running.values():
            path = share_file(self.run_dir, stage.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(str(share))
            os.replace(tmp, path)

    def _start_ready(self, pending: list[Stage], running: dict, results: dict, jobs: int, force: bool,
                     forced_from: int | None, names: list[str], pool, threads: int, progress, task,
                     may_start: bool) -> None:
        """Skip every ready stage that is cached (which can make later ones ready, so that repeats until nothing
        changes), then start ready stages in stage order while a slot is free. A stage that would run alone
        (nothing running, no other stage ready) gets every core: no other stage can become ready before it
        ends, since readiness changes only when a stage finishes."""
        changed = True
        while changed:
            changed = False
            for stage in list(pending):
                if any(d not in results for d in stage.deps):
                    continue
                idx = names.index(stage.name)
                must_run = force or (forced_from is not None and idx >= forced_from)
                if not must_run and self.is_done(stage):
                    pending.remove(stage)
                    results[stage.name] = self._cached_result(stage)
                    progress.advance(task)
                    changed = True
                    break
        if not may_start:
            return
        ready = [s for s in pending if all(d in results for d in s.deps)]
        alone = not running and len(ready) == 1
        for stage in ready:
            if len(running) >= jobs:
                break
            pending.remove(stage)
            n = max(1, os.cpu_count() or 1) if alone else threads
            fut = pool.submit(_run_stage_in_child, self.rebuild, self.config, str(self.run_dir), stage.name,
                              self.key(stage), n)
            running[fut] = stage
            self._threads_of[stage.name] = n


def share_file(run_dir: str | Path, name: str) -> Path:
    """Where ``--jobs N`` keeps a running stage's current share of the cores (outside every stage's dir)."""
    return Path(run_dir) / "logs" / f".{name}.threads"


def _fresh_process_per_task() -> dict:
    """A new process for every stage where Python can (3.11+): nothing a stage loaded stays in memory for the
    next one."""
    import sys

    return {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}


def _run_stage_in_child(rebuild: Callable[[Any], list[Stage]], config: Any, run_dir: str, name: str, key: str,
                        threads: int) -> dict:
    """One stage in a spawned process, its threads capped (surgical.threads); returns _run_one's record, or
    {"error": exc} (the exception itself when it pickles, so the CLI still tells bad input from a bug)."""
    log = Path(run_dir) / "logs" / f"{name}.log"  # outside the stage's dir: its content is not in any key
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:  # this process's output (libraries' bars and logs) goes to the stage's log
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    os.environ[THREAD_ENV] = str(threads)
    from ..threads import SHARE_FILE_ENV

    os.environ[SHARE_FILE_ENV] = str(share_file(run_dir, name))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    runner = Runner(rebuild(config), run_dir, config, console=Console(stderr=True, quiet=True), rebuild=rebuild)
    try:
        return runner._run_one(runner.by_name[name], quiet=True, key=key)
    except StageFailed as failed:
        exc = failed.__cause__ or failed
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            import traceback

            exc = RuntimeError(f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")
        return {"error": exc}
