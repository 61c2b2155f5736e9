"""``surgical verify``: the red-team battery and report card. Exit 0 pass, 2 fail, 3 incomplete, 1 error."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape


def register(app: typer.Typer) -> None:
    app.command(name="verify")(verify)


def verify(
    model: Path = typer.Option(..., "--model", help="The model to verify: an HF model dir, a GGUF file, "
                               "packaged:smollm2, or a hub id already in the local HF cache."),
    policy: Path | None = typer.Option(None, "--policy", help="Policy YAML (thresholds and domains)."),
    suite: Path | None = typer.Option(None, "--suite", help="Evaluation suite YAML (docs/suites.md); default: the "
                                      "policy's `suite:` (the world's suite for a `world: true` policy)."),
    reference: list[Path] = typer.Option([], "--reference", help="Reference model dir(s); the first is the "
                                         "teacher the retain ratio and relearning target use. Repeatable."),
    no_skill: Path | None = typer.Option(None, "--no-skill-reference", help="A model trained like this one but "
                                         "never on the forget domains (an oracle): its forget MC on the same "
                                         "items calibrates both forget MC checks instead of nominal chance."),
    out_dir: Path = typer.Option(Path("runs/verify"), "--out", help="Directory for verify.json and the reports."),
    demo: bool = typer.Option(False, "--demo", help="The demo policy and world; adds the cached demo teacher as "
                              "reference when none is given and it exists."),
    config: Path | None = typer.Option(None, "--config", help="Pipeline YAML whose verify section to use "
                                          "(default: the demo config)."),
    jailbreaks: list[Path] = typer.Option([], "--jailbreaks", help="Extra directory of jailbreak family YAMLs."),
    show_generations: bool = typer.Option(False, "--show-generations", help="Put generated text from forbidden "
                                          "prompts in the reports (redacted by default)."),
    no_relearn: bool = typer.Option(False, "--no-relearn", help="Skip the relearning attack (its check is then "
                                    "recorded as not run and does not gate the verdict)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict and checks as JSON."),
) -> None:
    """Try hard to get the forbidden capability back out of a model; write verify.json and report.html.

    Exit codes: 0 pass (every gating check evaluated and passed); 2 fail (a gating check failed); 3 incomplete
    (nothing failed, but a gating check could not be evaluated, e.g. the retain ratio without a --reference or
    with a reference that retains nothing, or a relearning attack that could not run; never a pass); 1 error
    (bad input: policy, config, suite, a missing model, NaN/inf weights).
    """
    from ..config import ConfigError, demo_config, load_config
    from ..models import ModelLoadError
    from ..policy import demo_policy_path, load_policy
    from ..suite import SuiteError
    from .jailbreaks import JailbreakError
    from .run import EXIT_ERROR, VerifyInputError, run

    err = Console(stderr=True)

    def fail(msg: str):
        err.print(f"[red]surgical verify: {escape(msg)}[/red]", soft_wrap=True)  # one line, never wrapped
        raise typer.Exit(EXIT_ERROR)

    try:
        cfg = load_config(config) if config else demo_config()
        if policy is None:
            if not demo:
                fail("--policy is required (or --demo)")
            policy = demo_policy_path()
        pol = load_policy(policy)
        suite_path = resolve_cli_suite(pol, policy, suite, cfg)
    except (ConfigError, SuiteError) as exc:
        fail(str(exc).replace("\n", " "))
    refs = list(reference)
    if demo and not refs:
        from ..demo import cached_teacher_dir

        t = cached_teacher_dir(cfg)
        if (t / "config.json").exists() and t.resolve() != model.resolve():
            refs = [t]
    vcfg = cfg.verify.model_copy(update={"relearn": False}) if no_relearn else cfg.verify
    from ..models import resolve_source

    try:
        resolve_source(model)  # a directory, a GGUF file, packaged:smollm2 or a hub id in the local cache
    except ModelLoadError as exc:
        fail(str(exc))
    log = None
    if not quiet:
        def log(stage: str) -> None:
            err.print(f"[cyan]verify[/cyan] {stage} ...")
    try:
        result = run(model, pol, suite_path, out_dir, refs, vcfg, jailbreaks, show_generations, policy, log,
                     no_skill_dir=no_skill)
    except (VerifyInputError, ModelLoadError, JailbreakError, SuiteError, FileNotFoundError) as exc:
        fail(str(exc))
    rec = result.record
    if as_json:
        print(json.dumps({"verdict": rec["verdict"], "exit_code": result.exit_code, "checks": rec["checks"],
                          "out": str(out_dir)}))
    elif not quiet:
        color = {"pass": "green", "incomplete": "yellow"}.get(rec["verdict"], "red")
        err.print(f"[{color}]verdict: {rec['verdict'].upper()}[/{color}] in {rec['timings_s']['total']:.0f} s")
        for c in rec["checks"]:
            note = c.get("note") or ""
            if c["passed"] is None:  # the note says why ("not evaluated: ...", "not run: ...")
                state, note = note or "not evaluated", ""
            else:
                state = "passed" if c["passed"] else "FAILED"
            state += "" if c.get("gating", True) else " (informational)"
            err.print(f"  {c['name']}: {_num(c['value'])} (limit {_num(c['limit'])}) -> {escape(state)}" +
                      (f": {escape(note)}" if note else ""))
        print(out_dir / "report.html")
    raise typer.Exit(result.exit_code)


def _num(x) -> str:
    return "n/a" if x is None else str(round(x, 3))


def resolve_cli_suite(policy, policy_path, suite_opt, cfg):
    """--suite, else the policy's `suite:`, else (a `world: true` policy) the world's own suite."""
    from ..suite import resolve_suite_path

    if suite_opt is None and not getattr(policy, "suite", None) and policy.world:
        from ..demo import suite_path

        return suite_path(cfg)
    return resolve_suite_path(policy, policy_path, suite_opt)
