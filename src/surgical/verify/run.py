"""The verify stage's one entry point: ``run(...)`` runs the red-team battery on a model (and the
reference models), computes the verdict and writes verify.json, report.html and report.md."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import provenance, read_json, sha256_json, sha256_path, write_json
from .config import VerifyConfig
from .parallel import auto_workers

EXIT_PASS, EXIT_ERROR, EXIT_FAIL, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_CODES = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "incomplete": EXIT_INCOMPLETE}


def exit_code_of(verdict: str) -> int:
    """0 pass, 2 fail, 3 incomplete (a gating check could not be evaluated); anything else is not a pass: 2."""
    return EXIT_CODES.get(verdict, EXIT_FAIL)


class VerifyInputError(ValueError):
    """Bad input to verify (a policy it cannot use, a missing model); the CLI exits 1 with this message."""


@dataclass
class VerifyResult:
    verdict: str
    exit_code: int
    out_dir: Path
    record: dict


def policy_domains(policy, suite) -> tuple[list[str], list[str], list[str]]:
    """(gated forget, retain, cross-domain) domains: the policy's, checked against the suite (a policy domain
    the suite has no data for is an error naming it). Forget domains the suite marks ``gate: false`` are
    measured as cross-domain figures, outside the verdict."""
    from ..suite import SuiteError, check_policy

    try:
        forget, retain = check_policy(suite, policy)
    except SuiteError as exc:
        raise VerifyInputError(str(exc)) from None
    gated = [d for d in forget if suite[d].spec.gate]
    cross = [d for d in forget if d not in gated]
    cross += [d for d in suite.role("forget") if not suite[d].spec.gate and d not in cross]
    return gated, retain, cross


def _load(model_dir):
    from ..data import ensure_pad_token
    from ..models import load_model, load_tokenizer

    if (Path(model_dir) / "quantize.json").exists():  # a quantized dir that only surgical can reload
        from ..quantize import load_quantized

        model = load_quantized(model_dir).eval()
    else:
        model = load_model(model_dir)
    try:
        tokenizer = load_tokenizer(model_dir)
    except Exception as exc:  # no fallback to another tokenizer: scores would be silently wrong
        raise VerifyInputError(f"{model_dir}: no tokenizer could be loaded ({exc.__class__.__name__}); save the "
                               "tokenizer next to the model") from None
    return model, ensure_pad_token(tokenizer)


def _float_values(t: torch.Tensor) -> torch.Tensor | None:
    """The float values of a parameter (a quantized tensor's dequantized ones); None for integer storage."""
    t = t.detach()
    if not t.is_floating_point():
        return None
    try:
        torch.isfinite(t[:0] if t.dim() else t)
        return t
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor subclass without isfinite (quantized)
        deq = getattr(t, "dequantize", None)
        return deq() if callable(deq) else None


def check_finite_weights(model, model_dir) -> None:
    """Raise VerifyInputError (one line: ``model_dir`` and the first parameter) when a weight is NaN or inf: no
    score of the battery on such a model would mean anything."""
    for name, p in model.named_parameters():
        t = _float_values(p)
        if t is None:
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise VerifyInputError(f"{model_dir}: parameter {name} has {n_nan} NaN and {n_inf} inf value(s) of "
                                   f"{t.numel()}; non-finite weights, so the battery cannot score this model")


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def _ref_names(reference_dirs: Sequence[str | Path]) -> list[str]:
    names = []
    for i, d in enumerate(reference_dirs):
        base = Path(d).name or f"reference{i}"
        names.append(base if base not in names else f"{base}-{i}")
    return names


class ReferenceMemo:
    """The battery's measurements of a reference model, kept as JSON files keyed by (the reference's content
    hash, the part, the battery config, the suite's data hash, the forget/retain/cross domains, surgical's version)
    and reused by every later battery with the same key: the pipeline's comparison rows all measure the same
    teacher, and before this each row measured it again. Without a directory it computes every time.

    Every value goes through JSON whether it was computed or read, so a battery that reuses a measurement sees
    exactly what the battery that made it saw. An unreadable file is computed again and rewritten (atomically)."""

    def __init__(self, directory: str | Path | None, context: dict):
        self.dir = Path(directory) if directory is not None else None
        self.context = context
        self.hits: list[str] = []
        self.misses: list[str] = []

    def get(self, ref_dir: str | Path, part: str, compute: Callable[[], object], **extra) -> object:
        import json

        if self.dir is None:
            return compute()
        from .. import __version__

        key = sha256_json({"reference": sha256_path(ref_dir), "part": part, **self.context, **extra,
                           "surgical_version": __version__})
        path = self.dir / f"{part}-{key[:32]}.json"
        if path.exists():
            try:
                rec = read_json(path)
                if rec.get("key") == key:
                    self.hits.append(part)
                    return rec["result"]
            except (ValueError, OSError, KeyError):
                pass  # unreadable: computed again and rewritten below
        self.misses.append(part)
        result = json.loads(json.dumps(compute(), default=_json_value))
        if isinstance(result, dict) and "error" in result:
            return result  # a failed measurement is never kept: the next battery tries again
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "part": part, "reference": str(ref_dir), "result": result})
        return result


def _json_value(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def run(model_dir: str | Path, policy, suite, out_dir: str | Path, reference_dirs: Sequence[str | Path] = (),
        cfg: VerifyConfig | None = None, jailbreak_dirs: Sequence[str | Path] = (),
        show_generations: bool = False, policy_path: str | Path | None = None,
        log: Callable[[str], None] | None = None, no_skill_dir: str | Path | None = None,
        reference_cache_dir: str | Path | None = None) -> VerifyResult:
    """Run the battery on ``model_dir`` against ``policy`` (a Policy) with the eval data of ``suite`` (a Suite or
    a suite YAML path); the first reference is the teacher the retain ratio and the relearning target are
    measured against. ``no_skill_dir``: a model trained like the student but never on the forget domains (the
    pipeline's oracle); its clean forget MC on the same items is the calibrated level both forget MC checks are
    judged against (``mc_calibration.no_skill_reference``). ``reference_cache_dir``: where the references'
    measurements are kept and reused across batteries (``ReferenceMemo``); None measures them every time."""
    from ..suite import Suite, SuiteError, load_suite
    from . import incontext, jailbreaks, latent, probes, quant_attack
    from .report import write_reports
    from .verdict import compute_verdict

    cfg = cfg or VerifyConfig()
    if cfg.profile == "compare":  # a comparison row reads the model's own sweep only
        cfg = cfg.model_copy(update={"relearn_references": False, "benign_relearn": False})
    log = log or (lambda _msg: None)
    if not isinstance(suite, Suite):
        try:
            suite = load_suite(suite)
        except SuiteError as exc:
            raise VerifyInputError(str(exc)) from None
    from ..threads import set_threads
    set_threads(cfg.threads)
    out_dir = Path(out_dir)
    forget, retain, cross = policy_domains(policy, suite)
    families = jailbreaks.load_families(jailbreak_dirs)
    if cfg.jailbreak_families is not None:
        unknown = sorted(set(cfg.jailbreak_families) - {f.family for f in families})
        if unknown:
            raise VerifyInputError(f"verify.jailbreak_families: unknown family {unknown}; known: "
                                   f"{sorted(f.family for f in families)}")
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

    model, tok = _load(model_dir)
    check_finite_weights(model, model_dir)
    refs, ref_dirs = {}, dict(zip(_ref_names(reference_dirs), reference_dirs, strict=True))
    # what every reference measurement depends on besides the reference; each part adds the arguments its
    # computation receives (and nothing else of cfg reaches it), so batteries with other settings elsewhere share it
    memo = ReferenceMemo(reference_cache_dir, {"suite": suite.data_hash, "forget": list(forget),
                                               "retain": list(retain), "cross": list(cross)})
    for n, d in ref_dirs.items():
        ref_model, ref_tok = _load(d)
        check_finite_weights(ref_model, f"reference {d}")
        if not _same_tokenizer(tok, ref_tok):
            raise VerifyInputError(f"reference {d}: its tokenizer differs from the model's; the battery scores "
                                   "both with the model's tokenizer, so a reference must share it")
        refs[n] = ref_model
    alphabet_issues = {}
    if tok.unk_token_id is not None:  # a tokenizer with <unk>: template characters it cannot encode
        alphabet_issues = {f"{f.family}/{t.id}": sorted(c) for f in families for t in f.templates
                           if (c := {ch for ch in jailbreaks.literal_text(t)
                                     if tok.unk_token_id in tok(ch, add_special_tokens=False)["input_ids"]})}
    pk = dict(split=cfg.split, n_items=cfg.n_items, n_boot=cfg.bootstrap_samples, seed=cfg.seed,
              batch_size=cfg.batch_size)

    def baseline_of(m):
        res = probes.knowledge_probes(m, tok, suite, forget + retain, **pk)
        for d in cross:
            res[d] = probes.domain_probe(m, tok, suite[d], cfg.split, cfg.n_items, cfg.bootstrap_samples,
                                         cfg.seed, cfg.batch_size, mc=False)
        return res

    with timed("knowledge probes"):
        baseline = {"model": baseline_of(model),
                    **{n: memo.get(ref_dirs[n], "knowledge", lambda r=r: baseline_of(r), args=pk) for n, r in refs.items()}}
    side = {n: jailbreaks.summarise_sides({"forget": {d: b[d] for d in forget}, "retain": {d: b[d] for d in retain}})
            for n, b in baseline.items()}
    attacks = {"none": side["model"]}

    mc_twin = None
    if cfg.mc_twin and forget:
        with timed("random-init twin (forget MC)"):
            mc_twin = random_init_twin_mc(model, tok, suite, forget, cfg, side["model"].get("forget_mc_metric"),
                                          also=retain if cfg.mc_twin_retain else ())
    mc_no_skill = None
    if no_skill_dir is not None and forget:
        with timed("no-skill reference (forget MC)"):
            mc_no_skill = no_skill_mc(no_skill_dir, tok, suite, forget, cfg, side["model"].get("forget_mc_metric"))

    with timed("jailbreak battery"):
        battery = jailbreaks.run_battery(model, tok, suite, families, forget, retain, cfg.split, cfg.jailbreak_items,
                                         cfg.jailbreak_max_shots, cfg.bootstrap_samples, cfg.seed, cfg.batch_size,
                                         show_generations,
                                         workers=auto_workers(cfg.workers, cfg.threads, model))
    for fam, res in battery.items():
        attacks[f"jailbreak:{fam}"] = attack_summary(res)

    full = cfg.profile == "full"
    in_context = {"skipped": "not run: verify.profile compare (a comparison row does not read it)"}
    with timed("in-context use") if full else contextlib.nullcontext():
        ic_args = [cfg.split, cfg.in_context_items, cfg.bootstrap_samples, cfg.seed, cfg.batch_size]

        def in_context_of(m):
            return incontext.in_context_use(m, tok, suite, forget, cfg.split, cfg.in_context_items,
                                            cfg.bootstrap_samples, cfg.seed, cfg.batch_size)

        if full:
            in_context = {"model": in_context_of(model),
                          **{n: memo.get(ref_dirs[n], "in_context", lambda r=r: in_context_of(r), args=ic_args)
                             for n, r in refs.items()}}

    with timed("quantization attack"):
        quant = quant_attack.quantization_attack(model, tok, suite, forget, retain, cfg, baseline["model"])
    attacks_not_run = {}
    for scheme, res in quant["schemes"].items():
        if "error" in res:
            attacks_not_run[f"quant:{scheme}"] = res["error"]
        else:
            attacks[f"quant:{scheme}"] = attack_summary(res)

    with timed("latent probes"):
        ablation = {"skipped": "not run: verify.profile compare (a comparison row does not read it)"}
        if full:
            ref_hits = None
            if refs:
                first_name, first = next(iter(refs.items()))
                ref_hits = memo.get(ref_dirs[first_name], "primary_hits", lambda: {
                    d: probes.primary_hits(first, tok, suite[d], "val", cfg.ablation_items, cfg.batch_size)
                    for d in forget}, args=[cfg.ablation_items, cfg.batch_size])
            ablation = latent.direction_ablation_attack(model, tok, suite, forget, retain, cfg, ref_hits)
            attacks["direction_ablation"] = attack_summary(ablation)
        else:
            attacks_not_run["direction_ablation"] = ablation["skipped"]
        probe_args = [cfg.probe_train_items, cfg.probe_test_items, cfg.split, cfg.seed, cfg.bootstrap_samples,
                      cfg.batch_size]
        latent_res = latent.latent_report(
            model, tok, suite, forget, retain, cfg, refs, full=full,
            measure_reference=lambda n, compute: memo.get(ref_dirs[n], "latent_by_layer", compute, args=probe_args))

    relearning = None
    if cfg.relearn:
        with timed("relearning attack"):
            relearning = _relearning(model, refs, tok, suite, forget, retain, cfg, memo, ref_dirs)

    retain_score = side["model"]["retain"]
    retention = {"retain": {d: baseline["model"][d]["primary"] for d in retain},
                 "cross_domain": {d: baseline["model"][d].get("primary") for d in cross},
                 "retain_score": retain_score}
    teacher_retain = None
    if refs:
        teacher_retain = side[next(iter(refs))]["retain"]
        retention["reference"] = next(iter(refs))
        retention["reference_retain"] = teacher_retain

    verdict = compute_verdict(attacks, policy.thresholds, retain=retain_score, reference_retain=teacher_retain,
                              relearning=relearning["model"] if relearning else None,
                              mc_statistic=cfg.verdict_mc_statistic, reference_given=bool(refs), mc_twin=mc_twin,
                              attacks_not_run=attacks_not_run, mc_no_skill=mc_no_skill)
    ratio_check = next(c for c in verdict["checks"] if c["name"] == "retain_ratio")
    retention["retain_ratio"] = ratio_check["value"]
    if ratio_check["passed"] is None:
        retention["retain_ratio_note"] = ratio_check["note"]
    timings["total"] = round(time.perf_counter() - t_all, 2)
    record = {
        "verdict": verdict["verdict"],
        "checks": verdict["checks"],
        "failed_checks": verdict["failed"],
        "not_evaluated_checks": verdict["not_evaluated"],
        **({"verdict_reason": verdict["reason"]} if "reason" in verdict else {}),
        "model": str(model_dir),
        "references": dict(zip(_ref_names(reference_dirs), map(str, reference_dirs), strict=True)),
        "policy": policy.name,
        "suite": {"name": suite.name, "path": str(suite.path), "data_sha256": suite.data_hash},
        "domains": {"forget": forget, "retain": retain, "cross_domain": cross},
        "thresholds": policy.thresholds.model_dump(),
        "attacks": attacks,
        "mc_calibration": {"nominal_chance": policy.thresholds.chance_mc, "random_init_twin": mc_twin,
                           "no_skill_reference": mc_no_skill,
                           "model": {k: side["model"].get(k) for k in ("forget_mc", "forget_mc_ci_low",
                                                                        "forget_mc_ci_high", "forget_mc_metric")}},
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
        "reference_cache": {"dir": str(memo.dir) if memo.dir is not None else None, "reused": memo.hits,
                            "measured": memo.misses},
        "provenance": provenance(cfg, inputs={"model": model_dir, "policy": policy_path,
                                              **{f"reference:{n}": d for n, d in
                                                 zip(_ref_names(reference_dirs), reference_dirs, strict=True)}},
                                 suite_data_sha256=suite.data_hash, suite_files_sha256=suite.file_hashes),
    }
    write_json(out_dir / "verify.json", record)
    write_reports(record, out_dir)
    return VerifyResult(record["verdict"], exit_code_of(record["verdict"]), out_dir, record)


def no_skill_mc(no_skill_dir, tok, suite, forget: Sequence[str], cfg: VerifyConfig, metric: str | None) -> dict:
    """The no-skill level: the clean forget MC of a model that never learned the forget domains (trained like the
    student otherwise), on the same items, with the model's tokenizer (the no-skill model must share it)."""
    from .probes import domain_probe

    ns_model, ns_tok = _load(no_skill_dir)
    check_finite_weights(ns_model, f"no-skill reference {no_skill_dir}")
    if not _same_tokenizer(tok, ns_tok):
        raise VerifyInputError(f"no-skill reference {no_skill_dir}: its tokenizer differs from the model's")
    metric = metric if metric in ("mc", "mc_norm") else "mc"
    by_domain = {d: domain_probe(ns_model, tok, suite[d], cfg.split, cfg.n_items, cfg.bootstrap_samples, cfg.seed,
                                 cfg.batch_size, em=False, ppl=False) for d in forget}
    del ns_model
    vals = [m[metric]["value"] for m in by_domain.values() if metric in m]
    return {"forget_mc": sum(vals) / len(vals) if vals else float("nan"), "metric": metric,
            "model": str(no_skill_dir),
            "by_domain": {d: {k: m[k] for k in ("mc", "mc_norm") if k in m} for d, m in by_domain.items()}}


def random_init_twin_mc(model, tok, suite, forget: Sequence[str], cfg: VerifyConfig, metric: str | None,
                        also: Sequence[str] = ()) -> dict:
    """The calibrated chance level: a random-init twin of ``model`` (same config, weights seeded by ``cfg.seed``;
    the model's tokenizer) scored by the clean MC probe on the same forget items. ``forget_mc`` is the domain
    average of ``metric`` (the model's own choice of acc / acc_norm, ``summarise_sides``), with per-domain
    figures alongside (and those of the ``also`` domains, which do not enter ``forget_mc``)."""
    from .latent import random_init_like
    from .probes import domain_probe

    metric = metric if metric in ("mc", "mc_norm") else "mc"
    with torch.random.fork_rng(devices=[]):  # seeding the twin leaves the battery's RNG state as it was
        twin = random_init_like(model, cfg.seed).to(next(model.parameters()).device)
    by_domain = {d: domain_probe(twin, tok, suite[d], cfg.split, cfg.n_items, cfg.bootstrap_samples, cfg.seed,
                                 cfg.batch_size, em=False, ppl=False) for d in [*forget, *also]}
    del twin
    vals = [m[metric]["value"] for d, m in by_domain.items() if metric in m and d in forget]
    return {"forget_mc": sum(vals) / len(vals) if vals else float("nan"), "metric": metric, "seed": cfg.seed,
            "by_domain": {d: {k: m[k] for k in ("mc", "mc_norm") if k in m} for d, m in by_domain.items()}}


def _relearning(model, refs: dict, tok, suite, forget, retain, cfg, memo: ReferenceMemo | None = None,
                ref_dirs: dict | None = None) -> dict:
    """The relearning attack on the model (and the references): {name: result}. An attack that raises is
    recorded as ``{"error": ...}`` (the verdict's relearning check is then not evaluated, and the verdict
    cannot pass while it gates), so the rest of the battery is kept."""
    from . import relearn

    def attack(m, c, teacher_forget):
        try:
            return relearn.relearning_attack(m, tok, suite, forget, retain, c, teacher_forget, cfg.split)
        except Exception as exc:  # noqa: BLE001 - recorded; the verdict does not pass on it
            return {"error": f"{type(exc).__name__}: {exc}"}

    memo = memo or ReferenceMemo(None, {})
    ref_dirs = ref_dirs or {}
    teacher_forget = 1.0
    first_sha = None
    if refs:
        first_name, first = next(iter(refs.items()))
        try:
            teacher_forget = memo.get(ref_dirs.get(first_name, first_name), "relearn_teacher_forget",
                                      lambda: relearn.forget_eval_fn(tok, suite, forget, cfg.split,
                                                                     cfg.relearn_eval_items, cfg.batch_size)(first),
                                      args=[cfg.split, cfg.relearn_eval_items, cfg.batch_size])
        except Exception as exc:  # noqa: BLE001 - recorded, as above
            return {"model": {"error": f"the teacher's forget accuracy: {type(exc).__name__}: {exc}"}}
        first_sha = sha256_path(ref_dirs[first_name]) if memo.dir is not None and first_name in ref_dirs else None
    out = {"model": attack(model, cfg, teacher_forget)}
    ref_cfg = cfg.model_copy(update={"benign_relearn": False})
    for n, r in (refs.items() if cfg.relearn_references else ()):
        if n in ref_dirs:  # the attack on a reference is measured against the first reference's level: keyed by it
            out[n] = memo.get(ref_dirs[n], "relearn", lambda r=r: attack(r, ref_cfg, teacher_forget),
                              teacher=first_sha, teacher_forget=teacher_forget,
                              battery=ref_cfg.model_dump(mode="json"))
        else:
            out[n] = attack(r, ref_cfg, teacher_forget)
    return out


def attack_summary(res: dict) -> dict:
    """The domain-averaged figures (forget, forget_mc, retain and their CIs) of one attack's result."""
    return {k: v for k, v in res.items() if k.startswith(("forget", "retain")) and not k.endswith("_gap")}


def verify_summary(model_dir: Path, out_dir: Path, policy_path: str | Path, suite, references: Sequence[str | Path],
                   cfg: VerifyConfig | None = None, no_skill_dir: str | Path | None = None,
                   reference_cache_dir: str | Path | None = None) -> dict:
    """Run the battery and reduce it to the summary the quantize stage records; never raises, so a verify
    error cannot lose the model it checks (the error is recorded, and the verdict is then 'error'). Otherwise the
    verdict is run()'s, passed through as it is: 'pass', 'fail' or 'incomplete' (with the gating checks that
    could not be evaluated under ``summary.not_evaluated_checks``); only 'pass' is a pass."""
    from ..policy import load_policy

    try:
        result = run(model_dir, load_policy(policy_path), suite, out_dir, reference_dirs=list(references), cfg=cfg,
                     policy_path=policy_path, no_skill_dir=no_skill_dir, reference_cache_dir=reference_cache_dir)
    except Exception as exc:  # noqa: BLE001 - recorded in quantize.json and the model card
        return {"status": "error", "verdict": "error", "error": f"{type(exc).__name__}: {exc}"}
    rec = result.record
    side = rec.get("summary_by_model", {}).get("model", {})
    checks = rec.get("checks", [])
    return {"status": "ran", "verdict": rec.get("verdict"), "exit_code": result.exit_code,
            "verify_json": str(out_dir / "verify.json"),
            "summary": {"forget_exact_match": side.get("forget"), "forget_mc": side.get("forget_mc"),
                        "retain_exact_match": side.get("retain"),
                        "retain_ratio": rec.get("retention", {}).get("retain_ratio"),
                        "failed_checks": [c.get("name") for c in checks
                                          if c.get("passed") is False and c.get("gating", True)],
                        "not_evaluated_checks": [c.get("name") for c in checks
                                                 if c.get("passed") is None and c.get("gating", True)]}}
