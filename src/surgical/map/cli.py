"""``surgical map``: a thin typer layer over ``surgical.map.run``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def _fmt(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _summary_lines(s: dict) -> list[str]:
    lines = [f"recommended layers {s['recommended_layers']}, spine {s['spine']}",
             f"attribution vs exact patching (Spearman): {_fmt(s['attribution_vs_exact_spearman'])}"]
    v = s["validation"]
    if "specificity_ratio" in v:
        lines.append(f"ablating top {v['k']} neurons: forget drop {100 * v['map_ablation']['forget_drop']:.1f} pts, "
                     f"retain drop {100 * v['map_ablation']['retain_drop']:.1f} pts; random: "
                     f"{100 * v['random_ablation']['forget_drop']:.1f} / {100 * v['random_ablation']['retain_drop']:.1f}; "
                     f"specificity ratio {_fmt(v['specificity_ratio'])}")
    for b in s["sae"]:
        q = b["quality"]
        lines.append(f"SAE layer {b['layer']}: FVU {q['fvu_heldout']:.3f}, L0 {q['l0']:.1f}, "
                     f"Δ LM loss forget {q['delta_lm_loss_forget']:+.3f} / retain {q['delta_lm_loss_retain']:+.3f}")
    lines.append(f"wall time {s['wall_s']:.0f} s")
    return lines


def one_line(exc: Exception) -> str:
    """An error as one line naming the file and field (a ConfigError's first bad field, not its header)."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors and hasattr(exc, "path"):
        loc, msg = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{exc.path}: {loc}: {msg}{more}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def register(app: typer.Typer) -> None:
    @app.command("map")
    def map_command(
        out_dir: Path = typer.Option(..., "--out", help="Directory to write map.json, map.safetensors, PNGs, map.md."),
        model: str | None = typer.Option(None, "--model", help="Teacher: HF model dir, GGUF file or cached hub id."),
        forget: Path | None = typer.Option(None, "--forget", help="JSONL of forget records (prompt+completion, "
                                              "or text)."),
        retain: Path | None = typer.Option(None, "--retain", help="JSONL of retain records (prompt+completion, "
                                              "or text)."),
        demo: bool = typer.Option(False, "--demo", help="Map the demo teacher (trained first if not cached) on "
                                  "the demo world."),
        suite: Path | None = typer.Option(None, "--suite", help="Evaluation suite YAML (overrides the policy's "
                                          "`suite:`): forget/retain examples from its attack records, validation "
                                          "on its metric."),
        policy: Path | None = typer.Option(None, "--policy", help="Policy YAML: its forbidden/allowed domains "
                                           "pick the suite's forget/retain domains."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline YAML whose `map` section to use "
                                              "(default: the demo config)."),
        no_sae: bool = typer.Option(False, "--no-sae", help="Skip the sparse autoencoder."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary."),
        as_json: bool = typer.Option(False, "--json", help="Print map.json's headline figures as JSON."),
    ) -> None:
        """Feature attribution on the teacher: which layers and units carry the forget data's skill."""
        from ..config import ConfigError, demo_config, load_config
        from ..io import JsonlError
        from ..models import ModelLoadError
        from ..suite import SuiteError
        from .data import MapDataError
        from .run import run_demo, run_files, run_suite

        err = Console(stderr=True, soft_wrap=True)

        def fail(msg: str) -> None:
            err.print(f"[red]surgical map: {msg}[/red]")
            raise typer.Exit(1)

        try:
            cfg = load_config(config) if config else demo_config()
        except ConfigError as exc:
            fail(one_line(exc))
        if no_sae:
            cfg = cfg.model_copy(update={"map": cfg.map.model_copy(update={"sae": False})})
        try:
            if demo:
                if model or forget or retain or suite or policy:
                    fail("--demo takes no --model/--forget/--retain/--suite/--policy")
                result = run_demo(out_dir, cfg, quiet=quiet)
            elif policy or suite:
                from ..policy import load_policy
                from ..suite import resolve_suite_path

                missing = [n for n, v in (("--model", model), ("--policy", policy)) if not v]
                if missing:
                    fail(f"missing {', '.join(missing)} (a suite run needs a model and a policy)")
                pol = load_policy(policy)
                suite_path = resolve_suite_path(pol, policy, suite)
                result = run_suite(cfg.map, model, suite_path, pol, out_dir, quiet=quiet, forget_path=forget,
                                   retain_path=retain)
            else:
                missing = [n for n, v in (("--model", model), ("--forget", forget), ("--retain", retain)) if not v]
                if missing:
                    fail(f"missing {', '.join(missing)} (or pass --suite/--policy, or --demo)")
                result = run_files(cfg.map, model, forget, retain, out_dir, quiet=quiet)
        except (MapDataError, JsonlError, ModelLoadError, SuiteError, ConfigError, ValueError) as exc:
            fail(one_line(exc))
        s = result.summary
        if as_json:
            v = s["validation"]
            print(json.dumps({
                "out": str(out_dir), "recommended_layers": s["recommended_layers"], "spine": s["spine"],
                "attribution_vs_exact_spearman": s["attribution_vs_exact_spearman"],
                "specificity_ratio": v.get("specificity_ratio"),
                "map_ablation": v.get("map_ablation", {}).get("delta_exact_match"),
                "random_ablation": v.get("random_ablation", {}).get("delta_exact_match"),
                "wall_s": s["wall_s"]}))
            return
        if not quiet:
            for line in _summary_lines(s):
                err.print(line)
        print(out_dir / "map.json")
