"""``surgical curate`` and ``surgical generate``: thin typer commands over curate.run and curate.generate."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()


def _fail(msg: str) -> None:
    from rich.markup import escape

    # escaped: a message may hold brackets (pip install 'surgical[scale]', a saved dataset's [split]) that rich
    # would otherwise take for markup and drop
    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(1)


def _pipeline_cfg(config: Path | None):
    """The pipeline config (the demo's without ``config``); a bad file prints its errors and exits 1."""
    from ..cli import _load_cfg

    return _load_cfg(config)


def register(app: typer.Typer) -> None:
    """Add ``curate`` and ``generate`` to the surgical app."""

    @app.command("curate")
    def curate(
        out_dir: Path = typer.Option(..., "--out", help="Directory for gold/quarantine/borderline JSONL and curate.json."),
        input_path: list[Path] | None = typer.Option(None, "--input", help="Corpus: JSONL, parquet, text or a saved HF "
                                                     "dataset; repeat it for several files (shards), read in order."),
        policy: Path | None = typer.Option(None, "--policy", help="Policy YAML (default: the demo policy)."),
        demo: bool = typer.Option(False, "--demo", help="Curate the arithmetic world's corpus with the demo policy."),
        text_field: str | None = typer.Option(None, "--text-field", help="Record field holding the text."),
        eval_path: Path | None = typer.Option(None, "--eval", help="Labelled held-out JSONL for recall/over-filtering."),
        classify_all: bool = typer.Option(False, "--classify-all", help="Run the classifier on every record, "
                                          "not only blocklist-escalated ones."),
        num_proc: int | None = typer.Option(None, "--num-proc", min=1, help="Worker processes for stage 1."),
        batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Documents per streamed batch."),
        engine: str | None = typer.Option(None, "--engine", help="local (this process; the default) or ray "
                                          "(Ray Data: each input file a shard; needs the 'scale' extra)."),
        ray_address: str | None = typer.Option(None, "--ray-address", help="With --engine ray: join the Ray "
                                               "cluster at this address instead of starting one with --num-proc CPUs."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline YAML whose curate section to use."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print curate.json's headline figures as JSON."),
    ) -> None:
        """Two-stage policy filter (blocklist -> classifier) with dedup: gold / quarantine / borderline."""
        from ..config import ConfigError
        from .classifier import ClassifierConfigError, EmbedderLoadError
        from .ray_engine import RayEngineError
        from .run import run, run_demo

        if not demo and not input_path:
            _fail("give --input FILE (with --policy) or --demo")
        if engine is not None and engine not in ("local", "ray"):
            _fail(f"--engine {engine!r}: expected 'local' or 'ray'")
        pcfg = _pipeline_cfg(config)
        overrides = {k: v for k, v in {"text_field": text_field, "num_proc": num_proc, "batch_size": batch_size,
                                       "classify": "all" if classify_all else None, "engine": engine,
                                       "ray_address": ray_address}.items() if v is not None}
        cfg = pcfg.curate.model_copy(update=overrides)
        if ray_address and cfg.engine != "ray":
            _fail("--ray-address needs --engine ray")
        pcfg = pcfg.model_copy(update={"curate": cfg})
        try:
            if demo:
                result = run_demo(out_dir, pcfg, quiet=quiet, policy_path=policy)
            else:
                corpus = input_path[0] if len(input_path) == 1 else input_path
                result = run(cfg, corpus, out_dir, policy_path=policy, eval_path=eval_path, quiet=quiet)
        except ConfigError as exc:
            _fail(str(exc))
        except (EmbedderLoadError, ClassifierConfigError, RayEngineError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        _print_curate(result.report, as_json)
        print(result.out_dir)

    @app.command("generate")
    def generate(
        out_dir: Path = typer.Option(..., "--out", help="Directory for trajectories.jsonl and generate.json."),
        model: Path | None = typer.Option(None, "--model", help="Teacher: an HF model dir."),
        prompts: Path | None = typer.Option(None, "--prompts", help="JSONL with prompt (+ answer, domain)."),
        constitution: str | None = typer.Option(None, "--constitution", help="Constitution YAML, or 'none' "
                                                   "(default: the demo constitution)."),
        demo: bool = typer.Option(False, "--demo", help="World teacher (cached or trained) on world prompts."),
        sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
        num_samples: int | None = typer.Option(None, "--num-samples", min=1, help="Samples per prompt."),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1),
        config: Path | None = typer.Option(None, "--config", help="Pipeline YAML whose generate section to use."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print generate.json's figures as JSON."),
    ) -> None:
        """Teacher trajectories with a correctness filter and constitutional rewriting (per-token masks)."""
        from ..config import ConfigError
        from ..models import ModelLoadError
        from .generate import run, run_demo

        pcfg = _pipeline_cfg(config)
        overrides = {k: v for k, v in {"do_sample": True if sample else None, "num_samples": num_samples,
                                       "max_new_tokens": max_new_tokens, "constitution": constitution}.items()
                     if v is not None}
        cfg = pcfg.generate.model_copy(update=overrides)
        try:
            if demo:
                result = run_demo(out_dir, pcfg.model_copy(update={"generate": cfg}), quiet=quiet)
            else:
                if model is None or prompts is None:
                    _fail("give --model DIR and --prompts JSONL, or --demo")
                result = run(cfg, model, prompts, out_dir, constitution_path=constitution, quiet=quiet)
        except ConfigError as exc:
            _fail(str(exc))
        except (ModelLoadError, FileNotFoundError, ValueError, OSError) as exc:
            _fail(str(exc))
        r = result.report
        if as_json:
            print(json.dumps({k: r[k] for k in ("counts", "tokens_per_s", "tokens_generated", "decoding")}))
        else:
            c = r["counts"]
            console.print(f"{c['kept']} of {c['samples']} trajectories kept ({c['rejected_incorrect']} incorrect), "
                          f"{c['trajectories_rewritten']} rewritten, {r['tokens_per_s']} tokens/s")
            if c["rejected_steps_per_rule"]:
                console.print("rejected steps per rule: " + ", ".join(
                    f"{k}={v}" for k, v in c["rejected_steps_per_rule"].items()))
        print(result.out_dir)


def _print_curate(report: dict, as_json: bool) -> None:
    keys = ("forbidden_recall", "overfilter_rate", "precision", "f1", "throughput_docs_per_s",
            "throughput_docs_per_s_by_stage", "counts", "measured_on", "engine")
    if as_json:
        print(json.dumps({k: report[k] for k in keys if k in report}, default=str))
        return

    def ci(m):
        return f"{m['value']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] n={m['n']}"

    t = Table(title=f"curate ({report['measured_on']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("forbidden recall", ci(report["forbidden_recall"]))
    t.add_row("over-filtering", ci(report["overfilter_rate"]))
    t.add_row("precision / F1", f"{report['precision']:.4f} / {report['f1']:.4f}")
    t.add_row("engine", str(report.get("engine", "local")))
    for k, v in report["counts"]["by_decision"].items():
        t.add_row(f"records -> {k}", str(v))
    for k, v in report["throughput_docs_per_s_by_stage"].items():
        t.add_row(f"docs/s ({k})", str(v))
    console.print(t)
