"""Stage order, caching and the demo. The runner decides order and caching, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from .io import write_json

# The stages of `surgical demo`, in order, and whether each is built.
DEMO_STAGES = ["world", "teacher", "map", "curate", "generate", "distill", "verify", "quantize", "verify-quantized",
               "report"]
BUILT_STAGES = {"world", "teacher"}


def run_demo(out_dir: str | Path = "runs/demo", quiet: bool = False) -> int:
    """Run every built stage of the demo on the arithmetic world and say which are still missing.
    Returns the process exit code (0 when every built stage succeeded)."""
    from .config import demo_config
    from .world import write_world
    from .world.teacher import get_or_train_teacher, load_teacher_record

    console = Console(stderr=True, quiet=quiet)
    out_dir = Path(out_dir)
    cfg = demo_config()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    console.rule("[bold]world")
    write_world(cfg.world, out_dir / "world")
    timings["world"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.rule("[bold]teacher")
    tdir, trained = get_or_train_teacher(cfg.world, cfg.teacher, quiet=quiet)
    rec = load_teacher_record(tdir)
    timings["teacher"] = time.perf_counter() - t0
    console.print(f"{'trained' if trained else 'reused cached'} teacher at {tdir}")
    from .cli import _print_metrics

    _print_metrics(rec["test_metrics"], console)

    missing = [s for s in DEMO_STAGES if s not in BUILT_STAGES]
    console.rule("[bold]not built yet")
    for s in missing:
        console.print(f"[yellow]{s}[/yellow]: not built yet")
    write_json(out_dir / "demo.json", {"teacher_dir": str(tdir), "teacher_test_metrics": rec["test_metrics"],
                                       "timings_s": timings, "missing_stages": missing})
    return 0
