"""The world's own commands: ``surgical world`` (write its splits, eval sets and suite) and
``surgical teacher train|eval`` (its teacher). Registered by surgical.cli like every stage's CLI."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    from ..cli import _load_cfg

    console = Console(stderr=True)
    out = Console()
    teacher_app = typer.Typer(help="Train or evaluate the arithmetic world's teacher.", no_args_is_help=True)
    app.add_typer(teacher_app, name="teacher")

    @app.command(name="world")
    def world(
        out_dir: Path = typer.Option(Path("runs/world"), "--out", help="Directory to write the world into."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline YAML (default: the demo config)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Write the arithmetic world: splits, eval sets (lm-eval shape), lm-eval task YAMLs, tokenizer."""
        from . import build_world, write_world

        cfg = _load_cfg(config)
        files = write_world(cfg.world, out_dir)
        wb = build_world(cfg.world)
        summary = {split: {d: len(v) for d, v in wb.splits[split].items()} for split in ("train", "val", "test")}
        if as_json:
            out.print_json(json.dumps({"out": str(out_dir), "counts": summary, "files": files}))
            return
        t = Table(title=f"arithmetic world -> {out_dir}")
        t.add_column("domain")
        for split in ("train", "val", "test"):
            t.add_column(split, justify="right")
        for d in summary["train"]:
            t.add_row(d, *(str(summary[s][d]) for s in ("train", "val", "test")))
        out.print(t)
        out.print(str(out_dir))


    @teacher_app.command("train")
    def teacher_train(
        config: Path | None = typer.Option(None, "--config", help="Pipeline YAML (default: the demo config)."),
        force: bool = typer.Option(False, "--force", help="Retrain even if a cached teacher exists."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Train the world's teacher (cached under $SURGICAL_HOME by config hash). Prints its directory last."""
        from .teacher import get_or_train_teacher, load_teacher_record

        cfg = _load_cfg(config)
        d, trained = get_or_train_teacher(cfg.world, cfg.teacher, quiet=quiet, force=force)
        rec = load_teacher_record(d)
        if not quiet:
            console.print(("trained" if trained else "cached") + f" teacher: {rec['n_parameters']:,} parameters, "
                          f"{rec['train_wall_s']:.0f} s of training")
            _print_metrics(rec["test_metrics"], console)
        print(d)


    def _print_metrics(metrics: dict, where: Console) -> None:
        t = Table(title="held-out test accuracy")
        for c in ("domain", "exact match", "MC", "MC (length-norm.)", "n"):
            t.add_column(c, justify="right")
        for d, m in metrics.items():
            t.add_row(d, f"{m['exact_match']:.3f}", f"{m['mc_accuracy']:.3f}", f"{m.get('mc_accuracy_norm', float('nan')):.3f}",
                      str(m.get("n", "")))
        where.print(t)


    @teacher_app.command("eval")
    def teacher_eval(
        model_dir: Path = typer.Argument(..., help="An HF model dir trained on the world (teacher or student)."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline YAML whose world to use."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object of per-domain metrics."),
        split: str = typer.Option("test", "--split", help="test or val."),
    ) -> None:
        """Exact-match and MC accuracy per domain on the world's held-out set."""

        from ..models import ModelLoadError, load_model
        from . import build_world
        from .teacher import evaluate_world

        cfg = _load_cfg(config)
        from ..threads import set_threads
        set_threads(cfg.teacher.threads)
        wb = build_world(cfg.world)
        try:
            model = load_model(model_dir)
        except ModelLoadError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        metrics = evaluate_world(model, wb.tokenizer, wb, split=split)
        if as_json:
            print(json.dumps({d: {"exact_match": m["exact_match"], "mc_accuracy": m["mc_accuracy"]}
                              for d, m in metrics.items()}))
        else:
            _print_metrics(metrics, out)
