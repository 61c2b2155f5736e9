"""`surgical experiment leak|cut`: grids of pipeline runs reduced to comparison tables (docs/experiments.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)
experiment_app = typer.Typer(help="Experiments over the pipeline: the leak sweep, students cut from the teacher "
                             "(docs/experiments.md).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", markup=True, highlight=False)
    raise typer.Exit(1)


def _numbers(text: str, option: str, kind=float) -> list:
    try:
        vals = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{option} {text!r}: expected comma-separated numbers")
    if not vals:
        _fail(f"{option}: give at least one value")
    return vals


def _check_results(results: Path | None) -> None:
    """Refuse (before any work) a ``--results`` path holding a file surgical experiment did not write."""
    from ..io import read_json

    if results is not None and results.exists():
        try:
            old = read_json(results)
        except (ValueError, OSError):
            old = None
        if not (isinstance(old, dict) and "rows" in old and "surgical_version" in (old.get("provenance") or {})):
            _fail(f"--results {results}: exists and was not written by surgical experiment; not overwritten")


def _copy_results(rec: dict, results: Path | None) -> None:
    """Also write the table to ``results`` (benchmarks/results/...): only over a file surgical wrote."""
    if results is None:
        return
    from ..io import write_json

    _check_results(results)
    write_json(results, rec)
    print(results)


def _run(fn, config: Path | None, overrides: list[str], **kw):
    from ..cli import _load_cfg
    from ..pipeline.cli import input_error_types
    from ..pipeline.runner import PipelineError, StageFailed

    base = _load_cfg(config, overrides)
    try:
        return fn(base, **kw)
    except PipelineError as exc:
        _fail(str(exc))
    except StageFailed as exc:
        if isinstance(exc.__cause__, input_error_types()):
            _fail(str(exc))
        raise
    except ValueError as exc:
        _fail(str(exc))


@experiment_app.command("leak")
def leak_cmd(
    config: Path | None = typer.Argument(None, help="Pipeline YAML the cells start from (default: the demo's)."),
    out_dir: Path = typer.Option(Path("runs/leak-sweep"), "--out", help="Experiment directory (one run per cell)."),
    rates: str = typer.Option("0,0.01,0.02,0.05,0.1", "--rates", help="Leak rates (1 - filter recall)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds (the student's init and order, the leak's choice)."),
    attack: str = typer.Option("strong", "--attack", help="strong (1024 examples, 2000 steps, 2 lrs) or compare "
                               "(the pipeline's comparison battery as configured)."),
    variant: list[str] = typer.Option([], "--variant", help="Also a surgical student with only this penalty: away, "
                                      "maxent, representation, away+maxent; or guard: surgical and filter-only "
                                      "with the teacher-probe leak guard (repeatable)."),
    leaky_oracle: bool = typer.Option(False, "--leaky-oracle", help="Train the oracle at every rate too (it then "
                                      "learns from the leaked labels), not only on the perfectly filtered data."),
    results: Path | None = typer.Option(None, "--results", help="Also write the table here (e.g. "
                                        "benchmarks/results/leak-sweep.json)."),
    merge: list[Path] = typer.Option([], "--merge", help="Also average in the per-seed rows of an earlier "
                                     "leak-sweep.json (same attack and base config; repeatable); a row measured "
                                     "again here replaces the old one."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Stages run at once inside each cell."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field of the base config: --set "
                                        "map.ig_steps=0 (SECTION.FIELD=VALUE; repeatable)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Filter-only and surgical students at each simulated leak rate, through the strong relearning attack."""
    from . import run_leak_sweep
    from .grid import ATTACKS

    if attack not in ATTACKS:
        _fail(f"--attack {attack!r}: expected one of {', '.join(ATTACKS)}")
    rate_list = _numbers(rates, "--rates")
    if any(not 0 <= r < 1 for r in rate_list):
        _fail(f"--rates {rates!r}: every rate must be in [0, 1)")
    _check_results(results)
    rec = _run(run_leak_sweep, config, overrides, out_dir=out_dir, rates=rate_list, seeds=_numbers(seeds, "--seeds", int),
               attack=attack, variants=variant, leaky_oracle=leaky_oracle, jobs=jobs, quiet=quiet,
               merge=merge)
    print(out_dir / "leak-sweep.md")
    _copy_results(rec, results)


@experiment_app.command("cut")
def cut_cmd(
    config: Path | None = typer.Argument(None, help="Pipeline YAML the cells start from (default: the demo's)."),
    out_dir: Path = typer.Option(Path("runs/cut-students"), "--out", help="Experiment directory."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds (the student's order; the random cuts' choice)."),
    random_cuts: int = typer.Option(1, "--random-cuts", min=0, help="Random cuts of the same size per seed."),
    cut_neurons: int = typer.Option(64, "--cut-neurons", min=1, help="MLP neurons cut per layer, the map's most "
                                    "forget-selective first (or random ones)."),
    keep_fraction: float = typer.Option(0.5, "--keep-fraction", help="MLP neurons kept per layer."),
    keep_layers: str = typer.Option("all", "--keep-layers", help="Teacher layers kept: 'all', 'spine' (the map's) "
                                    "or comma-separated indices."),
    noise_alpha: float | None = typer.Option(None, "--noise-alpha", help="UNDO-style noise on what the cut "
                                             "keeps, before healing: theta <- (1-a)*theta + a*beta*eps "
                                             "(distill.noise_cut; beta is distill.noise_beta). Default: none."),
    heal_steps: int | None = typer.Option(None, "--heal-steps", min=1, help="The cut students' distill "
                                          "max_steps (surgical and filter-only; the oracle and the fresh-init "
                                          "student keep the config's). Default: the config's."),
    attack: str = typer.Option("strong", "--attack", help="strong or compare (as for `experiment leak`)."),
    cells: str = typer.Option("fresh,map,random", "--cells", help="Which cells run: fresh (the oracle and the "
                              "fresh-init student), map, random, arch-oracle (the oracle of the cut's architecture, "
                              "row oracle[arch]); comma-separated. With --merge, add arch-oracle to a record alone."),
    results: Path | None = typer.Option(None, "--results", help="Also write the table here (e.g. "
                                        "benchmarks/results/cut-students.json)."),
    merge: list[Path] = typer.Option([], "--merge", help="Also average in the per-seed rows of an earlier "
                                     "cut-students.json (same attack, cut and base config; repeatable); a row "
                                     "measured again here replaces the old one."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Stages run at once inside each cell."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field of the base config: --set "
                                        "map.ig_steps=0 (SECTION.FIELD=VALUE; repeatable)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Students cut from the teacher by the map, their filter-only control, random cuts, and the oracle."""
    from .cut import run_cut_students
    from .grid import ATTACKS

    if attack not in ATTACKS:
        _fail(f"--attack {attack!r}: expected one of {', '.join(ATTACKS)}")
    if not 0 < keep_fraction <= 1:
        _fail(f"--keep-fraction {keep_fraction}: must be in (0, 1]")
    if noise_alpha is not None and not 0 < noise_alpha <= 1:
        _fail(f"--noise-alpha {noise_alpha}: must be in (0, 1]")
    layers = keep_layers if keep_layers in ("all", "spine") else _numbers(keep_layers, "--keep-layers", int)
    from .cut import CELL_KINDS

    kinds = tuple(k.strip() for k in cells.split(",") if k.strip())
    if not kinds or set(kinds) - set(CELL_KINDS):
        _fail(f"--cells {cells!r}: expected some of {', '.join(CELL_KINDS)}, comma-separated")
    _check_results(results)
    rec = _run(run_cut_students, config, overrides, out_dir=out_dir, seeds=_numbers(seeds, "--seeds", int),
               random_cuts=random_cuts, cut_neurons=cut_neurons, keep_fraction=keep_fraction, keep_layers=layers,
               noise_alpha=noise_alpha, heal_steps=heal_steps, attack=attack, jobs=jobs, quiet=quiet, merge=merge,
               kinds=kinds)
    print(out_dir / "cut-students.md")
    _copy_results(rec, results)
