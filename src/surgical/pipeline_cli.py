"""`surgical run PIPELINE.yaml`: every stage in order with content-addressed caching."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


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
    ) -> None:
        """Run a pipeline YAML stage by stage; unchanged stages are skipped, interrupted runs resume."""
        from .config import ConfigError, demo_config, load_config
        from .demo.pipeline import make_runner
        from .runner import PipelineError

        console = Console(stderr=True)
        try:
            cfg = load_config(config) if config else demo_config()
        except ConfigError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        runner = make_runner(cfg, run_dir, console=Console(stderr=True, quiet=quiet))
        if status:
            for name, st in runner.status().items():
                print(f"{name}\t{st}")
            return
        try:
            runner.run(from_stage=from_stage, only=only, force=force, quiet=quiet)
        except PipelineError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        from .demo.pipeline import final_verdict

        done = Path(run_dir or cfg.run_dir)
        print(done / "report.html")
        if final_verdict(done) == "fail":
            console.print("[red]final verdict: FAIL[/red]")
            raise typer.Exit(2)
