"""``surgical distill``: teacher -> student with the Safety Divergence Penalty; ``surgical distill cache-logits``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)

distill_app = typer.Typer(
    help="Teacher -> student training with the Safety Divergence Penalty (see docs/distill.md).",
    invoke_without_command=True,
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(distill_app, name="distill")


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(1)


def _load(config: Path | None):
    """The pipeline config (the demo's without ``config``); a bad file prints its errors and exits 1."""
    from ..cli import _load_cfg

    return _load_cfg(config)


def _section(pcfg, pairs: list[str]):
    """The distill section with ``--set FIELD=VALUE`` pairs (keys relative to ``distill:``), validated by the one
    parser every command shares (``config.with_overrides``); a bad pair exits 1 with a one-line error."""
    from ..config import ConfigError, with_overrides

    for p in pairs:
        if "=" not in p or not p.partition("=")[0].strip():
            _fail(f"--set {p!r}: expected KEY=VALUE (a field of the distill section)")
    try:
        return with_overrides(pcfg, [f"distill.{p.strip()}" for p in pairs]).distill
    except ConfigError as exc:
        _fail("; ".join(f"--set {loc}: {msg}" for loc, msg in exc.errors))


@distill_app.callback()
def distill(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="Pipeline YAML; its distill: section is used."),
    demo: bool = typer.Option(False, "--demo", help="The arithmetic world: world teacher, add/sub gold, "
                              "mul/div/mixed forbidden, and test-set evaluation of the student."),
    preset: str | None = typer.Option(None, "--preset", help="surgical | plain-kd | filter-only | oracle."),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher HF model dir."),
    gold: Path | None = typer.Option(None, "--gold", help="Gold JSONL (prompt+completion or text)."),
    forbidden: Path | None = typer.Option(None, "--forbidden", help="Forbidden JSONL (curate's quarantine)."),
    map_path: Path | None = typer.Option(None, "--map", help="map.json (spine, forget neurons, layers)."),
    suite: Path | None = typer.Option(None, "--suite", help="Evaluation suite YAML: periodic val and final test "
                                      "metrics per domain (with --demo: the world's suite)."),
    out_dir: Path = typer.Option(Path("runs/distill"), "--out", help="Output directory."),
    overrides: list[str] = typer.Option([], "--set", help="Override a distill field: --set max_steps=100."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the last checkpoint in OUT/checkpoints."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    as_json: bool = typer.Option(False, "--json", help="Print distill.json's summary as JSON."),
) -> None:
    """Distil a teacher into a student: writes OUT/student/ (HF dir), OUT/distill.json and OUT/curves.png."""
    if ctx.invoked_subcommand is not None:
        return
    from ..models import ModelLoadError
    from ..suite import SuiteError
    from .cache import CacheError
    from .config import PRESETS
    from .data import DataError
    from .run import run, run_demo
    from .student import TokenizerMismatchError

    if preset is not None and preset not in PRESETS:
        _fail(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    pcfg = _load(config)
    dcfg = _section(pcfg, overrides)
    if not demo and (teacher is None or gold is None):
        _fail("give --teacher and --gold (or --demo for the arithmetic world)")
    try:
        if demo and teacher is None:
            result = run_demo(out_dir, preset=preset, pipeline_cfg=pcfg.model_copy(update={"distill": dcfg}),
                              quiet=quiet, gold=str(gold) if gold else None,
                              forbidden=str(forbidden) if forbidden else None, map_path=map_path, suite=suite,
                              resume=resume)
        else:
            if demo and suite is None:
                from ..demo import suite_path

                suite = suite_path(pcfg)
            result = run(dcfg, teacher, gold, forbidden, map_path=map_path, out_dir=out_dir, preset=preset,
                         suite=suite, resume=resume, quiet=quiet)
    except (DataError, ModelLoadError, TokenizerMismatchError, CacheError, SuiteError, FileNotFoundError,
            ValueError) as exc:
        _fail(str(exc))
    if not result.record:  # a rank other than 0 of a distributed run: rank 0 reports
        return
    summary = _summary(result.record)
    if as_json:
        print(json.dumps(summary))
        return
    if not quiet:
        _print(summary)
    print(result.student_dir)


def _summary(rec: dict) -> dict:
    keys = ("preset", "steps", "tokens_seen", "train_wall_s", "tokens_per_s", "retain_ratio",
            "tokens_to_95pct_teacher")
    out = {k: rec.get(k) for k in keys}
    out["student_parameters"] = rec.get("student", {}).get("n_parameters")
    out["size_ratio"] = rec.get("student", {}).get("size_ratio")
    if "test_metrics" in rec:
        out["test_metrics"] = {d: {"exact_match": m["exact_match"], "mc_accuracy": m.get("mc_accuracy")}
                               for d, m in rec["test_metrics"].items()}
    return out


def _print(summary: dict) -> None:
    console.print(f"preset {summary['preset']}: {summary['student_parameters']:,} parameters "
                  f"({summary['size_ratio']:.2f} of the teacher), {summary['steps']} steps, "
                  f"{summary['tokens_seen']:,} tokens in {summary['train_wall_s']:.0f} s")
    if "test_metrics" in summary:
        t = Table(title="student, held-out test")
        for c in ("domain", "exact match", "MC"):
            t.add_column(c, justify="right")
        for d, m in summary["test_metrics"].items():
            t.add_row(d, *("-" if v is None else f"{v:.3f}" for v in (m["exact_match"], m["mc_accuracy"])))
        console.print(t)


@distill_app.command("cache-logits")
def cache_logits_cmd(
    config: Path | None = typer.Option(None, "--config", help="Pipeline YAML; its distill: section is used."),
    demo: bool = typer.Option(False, "--demo", help="The arithmetic world's teacher and data."),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher HF model dir."),
    gold: Path | None = typer.Option(None, "--gold", help="Gold JSONL."),
    forbidden: Path | None = typer.Option(None, "--forbidden", help="Forbidden JSONL (cached too, for 'away')."),
    out_dir: Path = typer.Option(Path("runs/distill/logits-cache"), "--out", help="Cache directory."),
    top_k: int | None = typer.Option(None, "--top-k", help="Logits kept per token (default distill.cache_top_k)."),
    shard_examples: int = typer.Option(8192, "--shard-examples", min=1, help="Examples per shard file (the unit "
                                       "of work of each rank under accelerate launch / torchrun)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a distill field (temperature, max_length...)."),
    as_json: bool = typer.Option(False, "--json", help="Print cache.json."),
) -> None:
    """Store the teacher's top-k logits per token (fp16 or u8 values, uint16/int32 ids, an 'other' bucket) in
    safetensors shards, keyed by the teacher's hash and the data's; point distill at it with --set teacher_logits=cache --set cache_dir=DIR."""
    from ..models import ModelLoadError, load_model, load_tokenizer
    from .cache import cache_logits, data_parallel
    from .data import DataError
    from .run import data_keys, encode_all, load_inputs, teacher_identity

    pcfg = _load(config)
    dcfg = _section(pcfg, overrides)
    try:
        if demo and teacher is None:
            from ..demo import distill_inputs

            teacher, w_gold, w_forb, _ = distill_inputs(pcfg)
            gold_src, forb_src = (str(gold) if gold else w_gold), (str(forbidden) if forbidden else w_forb)
        elif teacher is None or gold is None:
            _fail("give --teacher and --gold (or --demo)")
        else:
            gold_src, forb_src = gold, forbidden
        model, tok = load_model(teacher), load_tokenizer(teacher)
        gold_recs, gold_hash = load_inputs(gold_src)
        forb_recs, forb_hash = load_inputs(forb_src)
    except (DataError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    gold_key, forb_key = data_keys(dcfg, gold_hash, forb_hash)
    encoded = encode_all(dcfg, tok, gold_recs, forb_recs)
    import os

    import torch

    rank, world, barrier = data_parallel()  # under accelerate launch / torchrun: shards per rank
    if world > 1 and torch.cuda.is_available():
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    meta = cache_logits(model, encoded, out_dir, top_k or dcfg.cache_top_k, dcfg.temperature, gold_key, forb_key,
                        pad_id=tok.pad_token_id, shard_examples=shard_examples, rank=rank, world_size=world,
                        barrier=barrier, teacher_sha256=teacher_identity(teacher), value_format=dcfg.cache_values)
    if meta is None:  # not rank 0: rank 0 wrote cache.json
        return
    if as_json:
        print(json.dumps(meta))
        return
    console.print(f"cached {meta['n_tokens']:,} tokens of {meta['n_examples']:,} examples, k={meta['k']}: "
                  f"{meta['bytes_per_token']} B/token vs {meta['full_logits_bytes_per_token_fp32']} B/token for "
                  f"full fp32 logits ({meta['total_bytes']:,} bytes on disk)")
    print(out_dir)
