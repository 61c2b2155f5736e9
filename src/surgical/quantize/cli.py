"""`surgical quantize`: a thin CLI over ``surgical.quantize.run``."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``quantize`` command to the surgical CLI."""

    @app.command("quantize")
    def quantize(
        model: Path = typer.Option(..., "--model", help="HF model dir to quantize (a student)."),
        scheme: str = typer.Option("int8", "--scheme", help="int8 | int4 | int2 (weights)."),
        backend: str = typer.Option("torchao", "--backend", help="torchao (int8 only here) | quanto."),
        out: Path = typer.Option(Path("runs/quantize"), "--out", help="Output dir (the model goes in OUT/model)."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Do not re-run the verify battery."),
        policy: Path | None = typer.Option(None, "--policy", help="Policy YAML for verify and the model card."),
        reference: list[Path] | None = typer.Option(None, "--reference", help="Reference model dir(s) for verify."),
        suite: Path | None = typer.Option(None, "--suite", help="Suite YAML for verify (default: the policy's)."),
        no_measure: bool = typer.Option(False, "--no-measure", help="Skip size/memory/speed measurement."),
        quiet: bool = typer.Option(False, "--quiet", help="Print only the output directory."),
        as_json: bool = typer.Option(False, "--json", help="Print quantize.json."),
    ) -> None:
        """Quantize a model, save it so it reloads, compare it with fp32, re-verify it, write a model card."""
        from ..config import ConfigError
        from ..models import ModelLoadError
        from ..suite import SuiteError
        from . import QuantizeError, check_supported, run

        err = Console(stderr=True)
        try:
            check_supported(scheme, backend)
            if not (model / "config.json").exists():
                raise QuantizeError(f"{model}: not an HF model directory (no config.json)")
            verify_fn = None
            if policy is not None and not no_verify:
                from ..config import demo_config
                from ..policy import load_policy
                from ..verify.cli import resolve_cli_suite
                from ..verify.run import verify_summary

                pcfg = demo_config()
                suite_path = resolve_cli_suite(load_policy(policy), policy, suite, pcfg)

                def verify_fn(model_dir, verify_out):
                    return verify_summary(model_dir, verify_out, policy, suite_path, list(reference or [model]),
                                          pcfg.verify)
            with err.status(f"quantizing {model} ({scheme}, {backend})", spinner="dots") if not quiet else nullcontext():
                result = run(model, out, scheme=scheme, backend=backend, verify=verify_fn, policy=policy,
                             do_measure=not no_measure)
        except (QuantizeError, ModelLoadError, OSError, ConfigError, SuiteError) as exc:
            err.print(f"[red]error: {exc}[/red]")
            raise typer.Exit(1) from None
        rec = result.record
        if as_json:
            print(json.dumps(rec, indent=2, default=str))
            return
        if not quiet:
            t = Table(title=f"{scheme} ({backend}, {rec['format']}): {rec['quantized_modules']} layers quantized")
            for c in ("", "fp32", "quantized", "ratio"):
                t.add_column(c, justify="right")
            ratios = rec.get("ratios", {})
            for label, key, rkey in (("weights on disk (bytes)", "size_on_disk_bytes", "size_ratio"),
                                     ("peak RSS (bytes)", "peak_rss_bytes", "peak_rss_ratio"),
                                     ("weights in memory (bytes)", "weights_memory_bytes", "weights_memory_ratio"),
                                     ("CPU tokens/s", "tokens_per_s", "tokens_per_s_ratio")):
                t.add_row(label, str(rec.get("fp32", {}).get(key, "n/a")), str(rec.get("quantized", {}).get(key, "n/a")),
                          str(ratios.get(rkey, "n/a")))
            err.print(t)
            v = rec["verify"]
            err.print(f"verify: {v['status']}" + (f", verdict {v['verdict']}" if v.get("verdict") else ""))
            err.print(f"reload with: {rec['reload']}")
        print(result.model_dir)
        verdict = rec["verify"].get("verdict")
        if verdict == "fail":
            raise typer.Exit(2)
        if verdict == "error":
            raise typer.Exit(1)
        if verdict == "incomplete":
            raise typer.Exit(3)
