"""`surgical demo` end to end: wall time in a fresh SURGICAL_HOME (the teacher trained) and again with the teacher
cached, with the per-stage table, the comparison rows and the targets of each run.

    .venv/bin/python benchmarks/bench_demo.py [--cached-only] [--home DIR] [--out runs/bench_demo] [--jobs 2]
                                              [--serial-baseline]

Each run is `surgical demo --out RUN --quiet` in a subprocess (so it is what a user runs); its stages' wall times
come from the runner's RUN/<stage>/.done.json markers, the peak RSS from RUSAGE_CHILDREN. The fresh run uses a new
temporary SURGICAL_HOME (deleted after); the cached run reuses it with a new run directory, so every stage runs
again except the world's teacher. --cached-only skips the fresh run and uses --home (default: $SURGICAL_HOME or
~/.cache/surgical), training the teacher there first if it is missing (that run is not reported).

Writes benchmarks/results/bench_demo.json: `fresh_wall_s`, `cached_wall_s`, `stages` (the cached run's, s),
`stages_fresh`, `peak_rss_bytes`, `rows`, `targets`, `exit_codes`; with --serial-baseline also the cached demo
with --jobs 1 in the same session (`cached_serial_wall_s`, `cached_speedup_vs_serial`, `stages_serial`).
Goals (issue 15): <= 15 min fresh and <= 8 min
cached on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_demo.json"


def _demo(run_dir: Path, home: Path, jobs: int) -> dict:
    surgical = Path(sys.executable).parent / "surgical"
    env = {**os.environ, "SURGICAL_HOME": str(home)}
    t0 = time.perf_counter()
    code = subprocess.call([str(surgical), "demo", "--out", str(run_dir), "--quiet", "--jobs", str(jobs)], env=env,
                           stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    stages = {}
    for marker in sorted(run_dir.glob("*/.done.json")):
        rec = json.loads(marker.read_text())
        stages[rec.get("stage", marker.parent.name)] = rec.get("wall_s")
    rows = json.loads((run_dir / "comparison.json").read_text()) if (run_dir / "comparison.json").exists() else []
    targets = []
    for f in run_dir.glob("*/targets.json"):
        targets = json.loads(f.read_text())
    res = {"wall_s": round(wall, 1), "exit_code": code, "stages": stages, "rows": rows,
           "targets": [{k: t.get(k) for k in ("name", "met", "measured", "target")} for t in targets]}
    print(f"{run_dir}: {wall:.0f} s, exit {code}, stages " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()
                                                                       if isinstance(v, int | float)), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cached-only", action="store_true")
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_demo"))
    ap.add_argument("--jobs", type=int, default=2, help="surgical demo --jobs (default 2: one stage per core)")
    ap.add_argument("--serial-baseline", action="store_true",
                    help="also time the cached demo with --jobs 1, the baseline of the parallel runner's ratio")
    args = ap.parse_args()
    for d in ("fresh", "cached", "cached-serial", "warm-teacher"):
        if (args.out / d).exists():
            shutil.rmtree(args.out / d)  # made by this script on an earlier run
    results: dict = {"machine": f"{os.cpu_count()} CPU cores",
                     "command": f"surgical demo --out RUN --quiet --jobs {args.jobs}", "jobs": args.jobs}
    if args.cached_only:
        home = args.home or Path(os.environ.get("SURGICAL_HOME", Path.home() / ".cache" / "surgical"))
        tmp = None
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench_demo_home_"))
        home = tmp
    try:
        if args.cached_only:
            from surgical.config import demo_config
            from surgical.world.teacher import teacher_dir

            os.environ["SURGICAL_HOME"] = str(home)
            cfg = demo_config()
            if not (teacher_dir(cfg.world, cfg.teacher) / "teacher.json").exists():
                print("training the demo teacher first (not timed)", flush=True)
                subprocess.check_call([str(Path(sys.executable).parent / "surgical"), "teacher", "train", "--quiet"],
                                      env={**os.environ, "SURGICAL_HOME": str(home)}, stdout=subprocess.DEVNULL)
        else:
            fresh = _demo(args.out / "fresh", home, args.jobs)
            results.update(fresh_wall_s=fresh["wall_s"], stages_fresh=fresh["stages"])
            results.setdefault("exit_codes", {})["fresh"] = fresh["exit_code"]
        cached = _demo(args.out / "cached", home, args.jobs)
        results.update(cached_wall_s=cached["wall_s"], stages=cached["stages"], rows=cached["rows"],
                       targets=cached["targets"])
        results.setdefault("exit_codes", {})["cached"] = cached["exit_code"]
        # the largest single process (a stage); with --jobs N up to N such processes run at once
        results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if args.serial_baseline and args.jobs > 1:
            serial = _demo(args.out / "cached-serial", home, 1)
            results.update(cached_serial_wall_s=serial["wall_s"], stages_serial=serial["stages"],
                           cached_speedup_vs_serial=round(serial["wall_s"] / cached["wall_s"], 3),
                           rows_serial=serial["rows"], targets_serial=serial["targets"])
            results["exit_codes"]["cached-serial"] = serial["exit_code"]
        if RESULTS.exists():  # an earlier run's figures, marked as such (another commit: not this run's baseline)
            old = json.loads(RESULTS.read_text())
            if "fresh_wall_s" not in results and "fresh_wall_s" in old:
                results["fresh_wall_s_from_earlier_run"] = old["fresh_wall_s"]
            results["earlier_run"] = {k: old.get(k) for k in ("command", "cached_wall_s", "fresh_wall_s")}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("rows", "targets")}, indent=2))
    print(RESULTS)


if __name__ == "__main__":
    main()
