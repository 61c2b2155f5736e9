"""`surgical run PIPELINE.yaml`: every stage in order with content-addressed caching."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def input_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a broken environment (a file, a field, a model that does not load, a
    full disk, a path that cannot be written): one line, exit 1. Anything else is a bug and keeps its traceback."""
    from ..models import ModelLoadError
    from ..quantize import QuantizeError

    return (ValueError, OSError, ModelLoadError, QuantizeError)


def exit_code_of(verdict: str | None) -> int:
    """0 pass (or no verify ran, e.g. --only map), 2 fail, 3 anything else that is not a pass."""
    return {None: 0, "pass": 0, "fail": 2}.get(verdict, 3)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        config: Path | None = typer.Argument(None, help="Pipeline YAML (default: the demo config)."),
        run_dir: Path | None = typer.Option(None, "--run-dir", help="Override the config's run_dir."),
        from_stage: str | None = typer.Option(None, "--from", help="Re-run this stage and every later one."),
        only: str | None = typer.Option(None, "--only", help="Run just this stage (its inputs must exist)."),
        force: bool = typer.Option(False, "--force", help="Re-run every stage, cached or not."),
        status: bool = typer.Option(False, "--status", help="Print which stages are done and exit."),
        quiet: bool = typer.Option(False, "--quiet"),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Run up to N independent stages at once, each in "
                                 "its own process with cores // N threads (docs/pipeline.md)."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config field: --set map.ig_steps=0 "
                                            "(SECTION.FIELD=VALUE, VALUE as YAML; repeatable)."),
    ) -> None:
        """Run a pipeline YAML stage by stage; unchanged stages are skipped, interrupted runs resume.
        Exit 0 when the final verdict passes, 2 when it fails, 3 when it is incomplete (a check could not run, or
        a battery errored), 1 on bad input."""
        from ..cli import _load_cfg
        from .graph import final_verdict, make_runner
        from .runner import PipelineError, StageFailed

        console = Console(stderr=True)
        cfg = _load_cfg(config, overrides)
        runner = make_runner(cfg, run_dir, console=Console(stderr=True, quiet=quiet))
        if status:
            for name, st in runner.status().items():
                print(f"{name}\t{st}")
            return
        try:
            runner.run(from_stage=from_stage, only=only, force=force, quiet=quiet, jobs=jobs)
        except PipelineError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        except StageFailed as exc:
            if isinstance(exc.__cause__, input_error_types()):
                console.print(str(exc), style="red", markup=False, highlight=False)
                raise typer.Exit(1) from None
            raise
        done = Path(run_dir or cfg.run_dir)
        print(done / "report.html")
        verdict = final_verdict(done)
        if verdict is not None and verdict != "pass":
            console.print(f"[red]final verdict: {verdict.upper()}[/red]")
            raise typer.Exit(exit_code_of(verdict))
        if verdict == "pass":
            console.print("[green]final verdict: PASS[/green]")
