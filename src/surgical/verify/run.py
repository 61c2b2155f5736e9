"""The verify stage's one entry point: ``run(...)`` runs the red-team battery on a model (and the
reference models), computes the verdict and writes verify.json, report.html and report.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import WorldConfig
from ..io import provenance, write_json
from ..world import FORBIDDEN_DOMAINS, RETAIN_DOMAINS
from .config import VerifyConfig
from .parallel import auto_workers

EXIT_PASS, EXIT_ERROR, EXIT_FAIL = 0, 1, 2
MC_DOMAINS = ("add", "sub", "mul", "div")


class VerifyInputError(ValueError):
    """Bad input to verify (a policy it cannot use, a missing model); the CLI exits 1 with this message."""


@dataclass
class VerifyResult:
    verdict: str
    exit_code: int
    out_dir: Path
    record: dict


def policy_domains(policy) -> tuple[list[str], list[str]]:
    """(forget, retain) world domains with MC and exact-match sets; a policy naming none gets the world's."""
    forget = [f.name for f in policy.forbidden if f.name in MC_DOMAINS] or [d for d in FORBIDDEN_DOMAINS
                                                                           if d in MC_DOMAINS]
    retain = [a.name for a in policy.allowed if a.name in MC_DOMAINS] or list(RETAIN_DOMAINS)
    overlap = set(forget) & set(retain)
    if overlap:
        raise VerifyInputError(f"policy lists {sorted(overlap)} as both forbidden and allowed")
    return forget, retain


def _load(model_dir, wb):
    from ..models import load_model, load_tokenizer

    if (Path(model_dir) / "quantize.json").exists():  # a quantized dir that only surgical can reload
        from ..quantize import load_quantized

        model = load_quantized(model_dir).eval()
    else:
        model = load_model(model_dir)
    try:
        tokenizer = load_tokenizer(model_dir)
    except Exception:  # a model dir saved without its tokenizer: the world's own
        tokenizer = wb.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _ref_names(reference_dirs: Sequence[str | Path]) -> list[str]:
    names = []
    for i, d in enumerate(reference_dirs):
        base = Path(d).name or f"reference{i}"
        names.append(base if base not in names else f"{base}-{i}")
    return names


def run(model_dir: str | Path, policy, out_dir: str | Path, reference_dirs: Sequence[str | Path] = (),
        cfg: VerifyConfig | None = None, world: WorldConfig | None = None, jailbreak_dirs: Sequence[str | Path] = (),
        show_generations: bool = False, policy_path: str | Path | None = None,
        log: Callable[[str], None] | None = None) -> VerifyResult:
    """Run the battery on ``model_dir`` against ``policy`` (a Policy); the first reference is the teacher
    the retain ratio and the relearning target are measured against."""
    from ..world import build_world
    from . import incontext, jailbreaks, latent, probes, quant_attack, relearn
    from .report import write_reports
    from .verdict import compute_verdict

    cfg = cfg or VerifyConfig()
    log = log or (lambda _msg: None)
    if not policy.world:
        raise VerifyInputError("policy.world is false: verify builds its eval sets from the arithmetic world only "
                               "(set `world: true` in the policy)")
    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    wb = build_world(world or WorldConfig())
    forget, retain = policy_domains(policy)
    families = jailbreaks.load_families(jailbreak_dirs)
    if cfg.jailbreak_families is not None:
        families = [f for f in families if f.family in cfg.jailbreak_families]
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name):
        class _T:
            def __enter__(self):
                log(name)
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timings[name] = round(time.perf_counter() - self.t, 2)
        return _T()

    model, tok = _load(model_dir, wb)
    refs = {n: _load(d, wb)[0] for n, d in zip(_ref_names(reference_dirs), reference_dirs, strict=True)}
    alphabet_issues = {f"{f.family}/{t.id}": sorted(c)
                       for f in families for t in f.templates
                       if (c := {ch for ch in jailbreaks.literal_text(t) if tok.convert_tokens_to_ids(ch) == tok.unk_token_id})}
    pk = dict(split=cfg.split, n_items=cfg.n_items, n_boot=cfg.bootstrap_samples, seed=cfg.seed,
              batch_size=cfg.batch_size)

    def baseline_of(m):
        res = probes.knowledge_probes(m, tok, wb, forget + retain, **pk)
        res["mixed"] = probes.domain_probe(m, tok, wb, "mixed", cfg.split, cfg.n_items, cfg.bootstrap_samples,
                                           cfg.seed, cfg.batch_size, mc=False)
        return res

    with timed("knowledge probes"):
        baseline = {"model": baseline_of(model), **{n: baseline_of(r) for n, r in refs.items()}}
    side = {n: jailbreaks.summarise_sides({"forget": {d: b[d] for d in forget}, "retain": {d: b[d] for d in retain}})
            for n, b in baseline.items()}
    attacks = {"none": side["model"]}

    with timed("jailbreak battery"):
        battery = jailbreaks.run_battery(model, tok, wb, families, forget, retain, cfg.split, cfg.jailbreak_items,
                                         cfg.jailbreak_max_shots, cfg.bootstrap_samples, cfg.seed, cfg.batch_size,
                                         show_generations,
                                         workers=auto_workers(cfg.workers, cfg.threads, model))
    for fam, res in battery.items():
        attacks[f"jailbreak:{fam}"] = attack_summary(res)

    with timed("in-context use"):
        in_context = {n: incontext.in_context_use(m, tok, wb, forget, cfg.split, cfg.in_context_items,
                                                  cfg.bootstrap_samples, cfg.seed, cfg.batch_size)
                      for n, m in {"model": model, **refs}.items()}

    with timed("quantization attack"):
        quant = quant_attack.quantization_attack(model, tok, wb, forget, retain, cfg, baseline["model"])
    for scheme, res in quant["schemes"].items():
        if "error" not in res:
            attacks[f"quant:{scheme}"] = attack_summary(res)

    with timed("latent probes"):
        ref_hits = None
        if refs:
            first = next(iter(refs.values()))
            ref_hits = {d: probes.exact_match_hits(first, tok, wb.exact_match_sets["val"][d][: cfg.ablation_items],
                                                   _max_tokens(wb, d), batch_size=cfg.batch_size)[0] for d in forget}
        ablation = latent.direction_ablation_attack(model, tok, wb, forget, retain, cfg, ref_hits)
        attacks["direction_ablation"] = attack_summary(ablation)
        latent_res = latent.latent_report(model, tok, wb, forget, retain, cfg, refs)

    relearning = None
    if cfg.relearn:
        with timed("relearning attack"):
            teacher_forget = 1.0
            if refs:
                first = next(iter(refs.values()))
                teacher_forget = relearn.forget_eval_fn(tok, wb, forget, cfg.split, cfg.relearn_eval_items,
                                                        cfg.batch_size)(first)
            relearning = {"model": relearn.relearning_attack(model, tok, wb, forget, retain, cfg, teacher_forget,
                                                             cfg.split)}
            ref_cfg = cfg.model_copy(update={"benign_relearn": False})
            for n, r in (refs.items() if cfg.relearn_references else ()):
                relearning[n] = relearn.relearning_attack(r, tok, wb, forget, retain, ref_cfg, teacher_forget,
                                                          cfg.split)

    retention = {"retain": {d: baseline["model"][d]["exact_match"] for d in retain},
                 "cross_domain": {"mixed": baseline["model"]["mixed"]["exact_match"]}}
    retain_ratio = None
    if refs:
        teacher_retain = side[next(iter(refs))]["retain"]
        retain_ratio = side["model"]["retain"] / teacher_retain if teacher_retain > 0 else None
        retention["reference"] = next(iter(refs))
        retention["reference_retain"] = teacher_retain
    retention["retain_ratio"] = retain_ratio

    note = ("skipped: no reference model given" if not refs else
            "skipped: the reference answers no retain item, so the ratio is undefined")
    verdict = compute_verdict(attacks, retain_ratio, policy.thresholds,
                              relearning["model"] if relearning else None, cfg.verdict_mc_statistic, note)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    record = {
        "verdict": verdict["verdict"],
        "checks": verdict["checks"],
        "model": str(model_dir),
        "references": dict(zip(_ref_names(reference_dirs), map(str, reference_dirs), strict=True)),
        "policy": policy.name,
        "domains": {"forget": forget, "retain": retain},
        "thresholds": policy.thresholds.model_dump(),
        "attacks": attacks,
        "knowledge": baseline,
        "summary_by_model": side,
        "jailbreaks": battery,
        "in_context": in_context,
        "relearning": relearning,
        "quantization": quant,
        "probes": {"latent": latent_res, "direction_ablation": ablation},
        "retention": retention,
        "template_alphabet_issues": alphabet_issues,
        "generations_redacted": not show_generations,
        "timings_s": timings,
        "provenance": provenance(cfg, inputs={"model": model_dir, "policy": policy_path,
                                              **{f"reference:{n}": d for n, d in
                                                 zip(_ref_names(reference_dirs), reference_dirs, strict=True)}},
                                 world=(world or WorldConfig()).model_dump(), world_data_sha256=wb.data_hash),
    }
    write_json(out_dir / "verify.json", record)
    write_reports(record, out_dir)
    code = EXIT_PASS if record["verdict"] == "pass" else EXIT_FAIL
    return VerifyResult(record["verdict"], code, out_dir, record)


def attack_summary(res: dict) -> dict:
    """The domain-averaged figures (forget, forget_mc, retain and their CIs) of one attack's result."""
    return {k: v for k, v in res.items() if k.startswith(("forget", "retain")) and not k.endswith("_gap")}


def _max_tokens(wb, domain):
    from ..world.teacher import max_worked_tokens

    return max_worked_tokens(wb, domain)
