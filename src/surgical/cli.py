"""The ``surgical`` command line: a thin typer layer over each stage's Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from ._quiet import silence_import_noise

silence_import_noise()

app = typer.Typer(
    help="surgical: safe, selective distillation. Pipeline: world -> teacher -> map -> curate -> generate -> "
    "distill -> verify -> quantize (-> verify again). `surgical demo` runs it all on the arithmetic world.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show or validate pipeline configs.", no_args_is_help=True)
suite_app = typer.Typer(help="Check an evaluation suite or export its MC sets as lm-eval tasks.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(suite_app, name="suite")

console = Console(stderr=True)
out = Console()


def _load_cfg(config: Path | None, overrides: list[str] | tuple[str, ...] = ()):
    """The pipeline config (the demo's without ``config``) with ``--set`` overrides; bad input exits 1."""
    from .config import ConfigError, demo_config, load_config, with_overrides

    try:
        return with_overrides(load_config(config) if config else demo_config(), overrides)
    except ConfigError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit(0)


# ---------------------------------------------------------------- config


@config_app.command("show")
def config_show(config: Path | None = typer.Argument(None, help="A pipeline YAML (default: the demo config).")) -> None:
    """Print the full config (every default filled in) as YAML."""
    import yaml

    cfg = _load_cfg(config)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("validate")
def config_validate(config: Path = typer.Argument(..., help="A pipeline YAML to check.")) -> None:
    """Validate a pipeline YAML: the schema (every error with its field path), then every file it names (policy,
    suite and the policy's domains in it, corpus, teacher). Exits 1 if anything is wrong."""
    from .config import referenced_file_errors

    cfg = _load_cfg(config)
    errors = referenced_file_errors(cfg)
    if errors:
        console.print(f"{config}: {len(errors)} error(s)", style="red", markup=False, highlight=False)
        for where, msg in errors:
            console.print(f"  {where}: {msg}", style="red", markup=False, highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]{config}: valid[/green]")


# ---------------------------------------------------------------- suites


def _load_suite_or_exit(path: Path):
    from .config import ConfigError
    from .suite import SuiteError, load_suite

    try:
        return load_suite(path)
    except (SuiteError, ConfigError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@suite_app.command("validate")
def suite_validate(suite: Path = typer.Argument(..., help="A suite YAML (docs/suites.md)."),
                   policy: Path | None = typer.Option(None, "--policy", help="Also check that every domain of "
                                                      "this policy has eval data in the suite."),
                   as_json: bool = typer.Option(False, "--json", help="Print the per-domain summary as JSON.")) -> None:
    """Check a suite manifest and every data file it names (exit 1 naming the file, line and field)."""
    from .suite import SuiteError, check_policy, summary

    s = _load_suite_or_exit(suite)
    if policy is not None:
        from .config import ConfigError
        from .policy import load_policy

        try:
            check_policy(s, load_policy(policy))
        except (SuiteError, ConfigError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    rows = summary(s)
    if as_json:
        print(json.dumps({"suite": s.name, "data_sha256": s.data_hash, "domains": rows}))
        return
    t = Table(title=f"suite {s.name} ({suite})")
    for c in ("domain", "role", "gate", "chat", "mc", "qa", "perplexity", "attack", "probe", "scorer"):
        t.add_column(c)
    for r in rows:
        def cell(v):
            return ", ".join(f"{k} {n}" for k, n in v.items()) if isinstance(v, dict) else str(v if v is not None else "")

        t.add_row(*[cell(r.get(c)) for c in ("domain", "role", "gate", "chat", "mc", "qa", "perplexity",
                                             "attack", "probe", "scorer")])
    out.print(t)
    out.print(f"[green]{suite}: valid[/green]")


@suite_app.command("lm-eval")
def suite_lm_eval(suite: Path = typer.Argument(..., help="A suite YAML."),
                  out_dir: Path = typer.Option(..., "--out", help="Directory for the task YAMLs and their data."),
                  split: str = typer.Option("test", "--split", help="Which MC split to export.")) -> None:
    """Write one lm-evaluation-harness task YAML per MC set; prints the lm_eval command that runs them."""
    from .suite import write_lm_eval_tasks

    written = write_lm_eval_tasks(_load_suite_or_exit(suite), out_dir, split)
    if not written:
        console.print(f"[red]{suite}: no domain has an MC set in split {split!r}[/red]")
        raise typer.Exit(1)
    for task, f in written.items():
        out.print(f"{task}: {f}")
    console.print(f"HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL_DIR --device cpu "
                  f"--include_path {Path(out_dir).resolve()} --tasks {','.join(written)}")


# ---------------------------------------------------------------- the stages: each package's cli.register(app)

_STAGE_CLIS = ("surgical.world.cli", "surgical.map.cli", "surgical.curate.cli", "surgical.distill.cli", "surgical.verify.cli",
               "surgical.quantize.cli", "surgical.pipeline.cli", "surgical.experiment.cli")


def _register_stages() -> None:
    import importlib

    for mod_name in _STAGE_CLIS:
        importlib.import_module(mod_name).register(app)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    quiet: bool = typer.Option(False, "--quiet"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Run up to N independent stages at once, each in its "
                             "own process with cores // N threads (docs/pipeline.md)."),
) -> None:
    """Run the whole method on the embedded arithmetic world: every stage, the baselines, the report."""
    from .pipeline.graph import run_demo

    code = run_demo(out_dir, quiet=quiet, jobs=jobs)
    raise typer.Exit(code)


_register_stages()


def main() -> None:  # pragma: no cover
    sys.exit(app())
