"""A grid of pipeline runs ("cells") reduced to comparison rows, and the rows reduced to means over seeds.

An experiment (the leak sweep, the cut students) is a list of cells. A cell is a pipeline config (the base config
with a few overrides), the stages of the ordinary pipeline graph it needs, and which of their ``row.json`` files
become rows. Each cell runs with ``surgical.pipeline.runner.Runner`` in its own run directory, so it caches,
resumes and runs its independent stages in parallel (``jobs``) exactly like ``surgical run``; cells that name the
same directory run one after another and share whatever stages their configs share. The stages every cell of an
experiment has in common and that do not depend on the cell (the world's data, the teacher, the map) run once, in
the first cell, and are copied into the others: the runner's content-addressed markers then accept them as done.

Nothing here trains or measures anything itself: every figure is a comparison row of the pipeline's battery.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..io import read_json

SHARED_STAGES = ("data", "teacher", "map")  # the same for every cell of an experiment (the base config's)

# The strong relearning attack (issue 14, item 4): enough forbidden examples, steps and learning rates that the
# oracle itself climbs, so each method's steps can be given as a ratio to the oracle's (UNDO's relative robustness).
# Measured on the demo's oracle (a 2 x 64 student that never saw mul/div): 512 examples x 1000 steps moved it to
# 0.08 exact-match; 1024 examples x 2000 steps at lr 2e-3 to 0.27 at step 1500 and 0.45 at step 2000 (teacher 1.0).
STRONG_ATTACK = {
    "relearn_examples": 1024, "relearn_max_steps": 2000, "relearn_lrs": [1e-3, 2e-3], "relearn_batch_size": 32,
    "relearn_eval_steps": [100, 200, 500, 1000, 1500, 2000], "relearn_eval_items": 32, "relearn_early_stop": False,
}
ATTACKS = {"strong": STRONG_ATTACK, "compare": {}}


@dataclass
class Cell:
    """One pipeline run of an experiment: ``run_dir`` (relative to the experiment's directory), the config
    ``overrides`` (nested dicts merged into the base config, section by section), ``rows`` (stage name -> the
    method label its row.json gets) and ``tags`` (copied into each of its rows: leak_rate, seed, cut ...).
    ``copy_from``: an earlier cell's run_dir whose curate and generate outputs this cell starts from (a penalty
    variant of the same data): copied with their markers, they count as done only if this cell's config gives them
    the same keys, so a wrong ``copy_from`` costs a re-run, never a wrong result."""

    run_dir: str
    overrides: dict
    rows: dict[str, str]
    tags: dict = field(default_factory=dict)
    copy_from: str | None = None


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in: nested dicts key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def cell_config(base, overrides: dict):
    """The cell's PipelineConfig (validated: a bad override is a ConfigError naming the field)."""
    from ..config import parse_config

    return parse_config(merge(base.model_dump(mode="json"), overrides), source="experiment cell")


def needed_stages(stages: list, wanted: list[str]) -> list:
    """The stages ``wanted`` and everything they depend on, in graph order."""
    by_name = {s.name: s for s in stages}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise ValueError(f"experiment cell: no stage {missing} in this config's graph (is the baseline enabled?)")
    keep: set[str] = set()
    todo = list(wanted)
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo += by_name[n].deps
    return [s for s in stages if s.name in keep]


def _copy_stages(src: Path, dst: Path, names=SHARED_STAGES) -> None:
    """Copy finished stages' outputs (with their markers) from an earlier cell into a new one."""
    for name in names:
        if (src / name / ".done.json").exists() and not (dst / name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src / name, dst / name)


def run_cells(base, cells: list[Cell], out_dir: str | Path, jobs: int = 1, quiet: bool = False,
              console: Console | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every cell (cached stages are skipped) and return their rows, each with the cell's tags, its
    ``run_dir`` and ``cell_wall_s``."""
    from ..pipeline.graph import build_stages
    from ..pipeline.runner import Runner

    out_dir = Path(out_dir)
    console = console or Console(stderr=True, quiet=quiet)
    rows: list[dict] = []
    first: Path | None = None
    for i, cell in enumerate(cells):
        cfg = cell_config(base, cell.overrides)
        run_dir = out_dir / cell.run_dir
        if first is not None and first != run_dir:
            _copy_stages(first, run_dir)
        if cell.copy_from and out_dir / cell.copy_from != run_dir:
            _copy_stages(out_dir / cell.copy_from, run_dir, (*SHARED_STAGES, "curate", "generate"))
        first = first or run_dir
        console.print(f"[bold]cell {i + 1}/{len(cells)}[/bold] {cell.run_dir} -> {', '.join(cell.rows.values())}")
        t0 = time.perf_counter()
        runner = Runner(needed_stages(build_stages(cfg), list(cell.rows)), run_dir, cfg,
                        console=console, rebuild=build_stages)
        runner.run(quiet=quiet, jobs=jobs)
        wall = round(time.perf_counter() - t0, 1)
        teacher = teacher_fingerprint(run_dir)
        for stage, method in cell.rows.items():
            row = {**read_json(run_dir / stage / "row.json"), "method": method, **cell.tags,
                   "run_dir": str(run_dir), "cell_wall_s": wall, "teacher_weights": teacher}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def teacher_fingerprint(run_dir: Path) -> str | None:
    """A short hash of the weights of the teacher a cell ran against, or None when the cell has no teacher stage or
    the teacher cannot be hashed (a hub id). The same config can give a different world teacher on another machine
    or at another thread count (float reductions in another order), so rows merged from an earlier record are
    compared by this, not by config alone."""
    from ..io import sha256_json, weights_hashes

    stage = Path(run_dir) / "teacher"
    if not (stage / "location.json").exists():
        return None
    recorded = (read_json(stage / "teacher.json") if (stage / "teacher.json").exists() else {}).get("sha256")
    if recorded:  # a user's teacher: the content hash its teacher stage recorded (file or directory)
        return str(recorded)[:16]
    tdir = Path(read_json(stage / "location.json")["teacher_dir"])
    hashes = weights_hashes(tdir) if tdir.is_dir() else {}
    return sha256_json(hashes)[:16] if hashes else None


def teacher_conflicts(rows: list[dict]) -> tuple[list, list]:
    """(seeds whose rows ran against more than one teacher, seeds with a row that records no teacher and so cannot
    be checked). Within a seed the steps ratios divide one row by another, which is only meaningful against one
    teacher; rows of different seeds are only averaged, and may come from different teachers."""
    seen: dict = {}
    for r in rows:
        seen.setdefault(r.get("seed"), set()).add(r.get("teacher_weights"))
    differ = [s for s, hashes in seen.items() if len(hashes - {None}) > 1]
    unchecked = [s for s, hashes in seen.items() if None in hashes]
    return sorted(differ, key=str), sorted(unchecked, key=str)


# ---------------------------------------------------------------- rows -> means over seeds


SCALARS = ("forget_exact_match", "forget_mc", "retain_ratio", "forget_worst_jailbreak", "forget_int4",
           "steps_to_25pct_ratio_vs_oracle", "steps_to_50pct_ratio_vs_oracle", "steps_to_50pct_teacher",
           "no_skill_mc", "probe_accuracy", "size_ratio",
           "steps_to_25pct_ratio_vs_arch_oracle", "steps_to_50pct_ratio_vs_arch_oracle")


def with_ratios_by_seed(rows: list[dict], oracle_key: Callable[[dict], tuple]) -> list[dict]:
    """Each row with its steps-to-teacher ratios against the oracle row of its own group (``oracle_key(row)``:
    usually the seed, so every student is compared with the oracle trained on the same seed)."""
    from ..pipeline.graph import with_oracle_ratios

    oracles = {oracle_key(r): r for r in rows if r.get("method") == "oracle"}
    out = []
    for r in rows:
        o = oracles.get(oracle_key(r))
        out.append(with_oracle_ratios([o, r])[1] if o is not None else dict(r))
    return out


def _stats(values: list) -> dict:
    vals = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": round(mean, 4), "std": round(std, 4), "min": round(min(vals), 4), "max": round(max(vals), 4),
            "n": len(vals)}


def aggregate(rows: list[dict], group_by: tuple[str, ...]) -> list[dict]:
    """One row per (method, *group_by) with the mean of each figure over the seeds, its spread in
    ``<figure>_spread`` (std, min, max, n) and the seeds it covers. ``forget_after_relearn`` is averaged budget by
    budget; a ratio that is only a bound on some seed keeps the weakest bound flag in ``..._bound``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], *(r.get(k) for k in group_by)), []).append(r)
    out = []
    for key, rs in groups.items():
        agg: dict = {"method": key[0], **dict(zip(group_by, key[1:], strict=True)), "seeds": [r.get("seed") for r in rs]}
        for name in SCALARS:
            if name.endswith("_vs_arch_oracle") and not any(name in r for r in rs):
                continue  # only a cut experiment with its same-size oracle has these
            s = _stats([r.get(name) for r in rs])
            agg[name], agg[f"{name}_spread"] = s["mean"], {k: s[k] for k in ("std", "min", "max", "n")}
        for name in (f"{n}_bound" for n in SCALARS if "_ratio_vs_" in n):
            flags = {r.get(name) for r in rs if r.get(name)}
            if flags:
                agg[name] = "exact" if flags == {"exact"} else ",".join(sorted(flags))
        budgets = sorted({b for r in rs for b in (r.get("forget_after_relearn") or {})}, key=int)
        after, spread = {}, {}
        for b in budgets:
            s = _stats([(r.get("forget_after_relearn") or {}).get(b) for r in rs])
            after[b], spread[b] = s["mean"], {k: s[k] for k in ("std", "min", "max", "n")}
        agg["forget_after_relearn"], agg["forget_after_relearn_spread"] = after, spread
        lrs: dict[str, list] = {}
        for r in rs:
            for b, lr in (r.get("relearn_best_lr_by_budget") or {}).items():
                lrs.setdefault(b, []).append(lr)
        agg["relearn_best_lr_by_budget"] = lrs  # one per seed: the attacker's best lr is not averaged
        out.append(agg)
    return out
