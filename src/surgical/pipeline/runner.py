"""A small content-addressed stage runner: order, caching, resume. It decides nothing else.

Each stage writes into ``RUN_DIR/<stage>/`` and, when it finishes, a marker ``.done.json`` holding its cache
key. The key hashes the stage's config section, the package version and the *content* of every input stage's
output directory, so a stage is skipped exactly when its config and inputs are unchanged. A run killed at any
point leaves the interrupted stage without a valid marker; running again skips the finished stages and
re-runs that one (stages that checkpoint internally, like distill, resume from their checkpoints).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..io import read_json, sha256_json, sha256_path, write_json

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
    """Runs ``stages`` (in the given order, which must respect deps) under ``run_dir``."""

    def __init__(self, stages: list[Stage], run_dir: str | Path, config: Any, console: Console | None = None):
        self.stages = stages
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
            quiet: bool = False) -> dict[str, dict]:
        """Run the stages; returns {stage: {"status": "ran"|"cached", "summary": ..., "wall_s": ...}}."""
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
                    marker = read_json(self.out_dir(stage.name) / MARKER)
                    results[stage.name] = {"status": "cached", "summary": marker.get("summary", {}),
                                           "wall_s": marker.get("wall_s", 0.0)}
                    self.console.print(f"[dim]{stage.name}: unchanged config and inputs, skipped (cached)[/dim]")
                    progress.advance(task)
                    continue
                progress.update(task, description=f"running {stage.name}")
                results[stage.name] = self._run_one(stage, quiet)
                progress.advance(task)
        return results

    def _run_one(self, stage: Stage, quiet: bool) -> dict:
        out = self.out_dir(stage.name)
        out.mkdir(parents=True, exist_ok=True)
        marker = out / MARKER
        if marker.exists():
            marker.unlink()  # a stale marker must never survive a re-run that fails half-way
        key = self.key(stage)  # computed before the stage writes its own output
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
