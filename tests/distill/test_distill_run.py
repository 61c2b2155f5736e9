"""The distill recipe end to end on tiny models: presets, outputs, resume, CLI, accelerate (slow)."""

import json
from pathlib import Path

import pytest
import torch

from surgical.distill.config import DistillConfig
from surgical.distill.run import run, suite_metrics
from surgical.io import sha256_path, write_jsonl
from surgical.models import make_tiny_model

TINY = dict(student_hidden_size=16, student_heads=2, student_intermediate_size=32, batch_size=8, logging_steps=2,
            threads=1, eval_every=0, warmup_steps=0)


@pytest.mark.parametrize("preset", ["surgical", "plain-kd", "filter-only", "oracle"])
def test_presets_write_student_and_record(files, tmp_path, preset):
    cfg = DistillConfig(max_steps=4, penalty_forms=["away", "maxent", "refusal", "representation"], **TINY)
    res = run(cfg, files / "teacher", files / "gold.jsonl", files / "forbidden.jsonl", out_dir=tmp_path,
              preset=preset, quiet=True)
    rec = json.loads((tmp_path / "distill.json").read_text())
    assert rec["preset"] == preset and rec["steps"] == 4 and rec["tokens_seen"] > 0
    assert rec["provenance"] and rec["data"]["gold_sha256"] and rec["teacher_sha256"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    terms = {k for c in rec["curves"] for k in c if k.startswith("term_")}
    if preset == "surgical":
        assert {"term_kd", "term_maxent", "term_refusal", "term_rmu_forget", "term_rmu_retain"} <= terms
    elif preset == "oracle":
        assert "term_ce" in terms and "term_kd" not in terms
    else:
        assert "term_kd" in terms and not {"term_maxent", "term_away", "term_refusal"} & terms
    n_forbidden = len((files / "forbidden.jsonl").read_text().splitlines())
    assert rec["data"]["n_forbidden"] == (n_forbidden if preset in ("surgical", "plain-kd") else 0)
    from surgical.models import load_model

    student = load_model(res.student_dir)
    assert not any("surgical_align" in k for k in student.state_dict())  # projections are not shipped


def test_penalty_changes_the_student_through_the_trainer(files, tmp_path):
    """Same teacher-copy student, same stream: with the maxent penalty the forbidden tokens end up with
    a higher entropy than without it (the trainer routes forbidden rows to the penalty)."""
    from surgical.distill.data import DistillCollator, encode_record, read_records
    from surgical.distill.losses import maxent_penalty
    from surgical.models import load_model, load_tokenizer

    common = dict(TINY, student_init="noised", noise_alpha=0.0, max_steps=10, lr=1e-2, forbidden_ratio=0.5,
                  penalty_forms=["maxent"], penalty_weight=3.0)
    runs = {}
    for preset in ("surgical", "filter-only"):
        runs[preset] = run(DistillConfig(**common), files / "teacher", files / "gold.jsonl",
                           files / "forbidden.jsonl", out_dir=tmp_path / preset, preset=preset, quiet=True)
    tok = load_tokenizer(files / "teacher")
    batch = DistillCollator(tok.pad_token_id)([{**encode_record(tok, r), "forbidden": 1, "example_index": 0}
                                               for r in read_records(files / "forbidden.jsonl")])
    gap = {}
    for preset, res in runs.items():
        m = load_model(res.student_dir)
        with torch.no_grad():
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        gap[preset] = maxent_penalty(logits, (batch["labels"][:, 1:] != -100).long()).item()
    assert gap["surgical"] < 0.5 * gap["filter-only"]


def run_killed_at_step_4(monkeypatch, cfg, args, out_dir):
    """Run distill and kill it (KeyboardInterrupt) once 4 steps are done, as a SIGINT would."""
    from surgical.distill import trainer as trainer_mod

    original = trainer_mod.DistillTrainer.training_step

    def killed(self, *a, **kw):
        if self.state.global_step >= 4:
            raise KeyboardInterrupt("killed mid-run")
        return original(self, *a, **kw)

    monkeypatch.setattr(trainer_mod.DistillTrainer, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, *args, out_dir=out_dir, quiet=True)
    monkeypatch.setattr(trainer_mod.DistillTrainer, "training_step", original)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(files, tmp_path, monkeypatch):
    cfg = DistillConfig(max_steps=6, save_steps=3, **TINY)
    args = (files / "teacher", files / "gold.jsonl", files / "forbidden.jsonl")
    full = run(cfg, *args, out_dir=tmp_path / "full", quiet=True)
    run_killed_at_step_4(monkeypatch, cfg, args, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "distill.json").exists()
    res = run(cfg, *args, out_dir=tmp_path / "resumed", quiet=True, resume=True)
    assert res.record["resumed_from"].endswith("checkpoint-3") and res.record["steps"] == 6
    from surgical.models import load_model

    a, b = load_model(full.student_dir), load_model(res.student_dir)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=False):
        assert torch.allclose(p, q, atol=1e-5), name


def test_noised_student_from_another_tokenizer_is_refused(files, tmp_path, world):
    from surgical.distill.student import TokenizerMismatchError
    from surgical.world.tokenizer import train_world_tokenizer

    other = tmp_path / "other"
    tok = train_world_tokenizer(["x"])
    tok.add_tokens(["<new>"])
    make_tiny_model("llama", len(tok)).save_pretrained(other)
    tok.save_pretrained(other)
    cfg = DistillConfig(max_steps=1, student_init="noised", student_init_from=str(other), **TINY)
    with pytest.raises(TokenizerMismatchError):
        run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path / "o", quiet=True)


def _cli(*args):
    from typer.testing import CliRunner

    from surgical.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_cache_then_distill_and_errors(files, world, tmp_path):
    r = _cli("distill", "cache-logits", "--teacher", str(files / "teacher"), "--gold", str(files / "gold.jsonl"),
             "--forbidden", str(files / "forbidden.jsonl"), "--out", str(tmp_path / "cache"), "--json",
             "--top-k", "16")
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)
    # the world's vocabulary fits uint16 ids: 16 x (2 + 2) + 4 bytes per token
    assert meta["k"] == 16 and meta["bytes_per_token"] == 68 and meta["index_dtype"] == "uint16"
    assert meta["teacher_sha256"] == sha256_path(files / "teacher")
    (tmp_path / "p.yaml").write_text("distill:\n  max_steps: 2\n  batch_size: 4\n  student_hidden_size: 16\n")
    r = _cli("distill", "--config", str(tmp_path / "p.yaml"), "--teacher", str(files / "teacher"),
             "--gold", str(files / "gold.jsonl"), "--forbidden", str(files / "forbidden.jsonl"),
             "--out", str(tmp_path / "out"), "--quiet", "--json",
             "--set", "teacher_logits=cache", "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 2
    assert (tmp_path / "out" / "student" / "config.json").exists()
    # the same cache dir under another teacher (UNDO's unlearned teacher, say) is refused, not silently reused
    other = tmp_path / "other-teacher"
    make_tiny_model("llama", len(world.tokenizer), layers=2, seed=7).save_pretrained(other)
    world.tokenizer.save_pretrained(other)
    r = _cli("distill", "--config", str(tmp_path / "p.yaml"), "--teacher", str(other),
             "--gold", str(files / "gold.jsonl"), "--forbidden", str(files / "forbidden.jsonl"),
             "--out", str(tmp_path / "out2"), "--quiet",
             "--set", "teacher_logits=cache", "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.exit_code == 1 and "another teacher" in r.output and "Traceback" not in r.output, r.output
    # and so is another k
    r = _cli("distill", "--config", str(tmp_path / "p.yaml"), "--teacher", str(files / "teacher"),
             "--gold", str(files / "gold.jsonl"), "--forbidden", str(files / "forbidden.jsonl"),
             "--out", str(tmp_path / "out3"), "--quiet", "--set", "cache_top_k=8",
             "--set", "teacher_logits=cache", "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.exit_code == 1 and "cache_top_k=8" in r.output, r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1:", "completion": " 2"}\n{"oops": 1}\n')
    r = _cli("distill", "--teacher", str(files / "teacher"), "--gold", str(bad), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output
    r = _cli("distill", "--teacher", str(files / "teacher"), "--gold", str(bad), "--set", "max_stepz=3")
    assert r.exit_code == 1 and "max_stepz" in r.output
    r = _cli("distill", "--teacher", str(files / "teacher"), "--gold", str(bad), "--set", "max_steps=lots")
    assert r.exit_code == 1 and "distill.max_steps" in r.output and "Traceback" not in r.output, r.output
    r = _cli("distill", "--teacher", str(files / "teacher"), "--gold", str(bad), "--set", "max_steps")
    assert r.exit_code == 1 and "KEY=VALUE" in r.output, r.output
    r = _cli("distill", "--preset", "nope", "--demo")
    assert r.exit_code == 1 and "--preset" in r.output


def test_teacher_layers_student_from_the_map(files, tmp_path):
    from surgical.io import write_json

    write_json(tmp_path / "map.json", {"spine": [1], "forget_neurons": {"1": [3, 4, 5]},
                                       "recommended_layers": [0]})
    cfg = DistillConfig(**{**TINY, "max_steps": 2, "student_init": "teacher_layers", "cut_forget_neurons": 2,
                           "mlp_keep_fraction": 0.5, "hidden_weight": 1.0,
                           "penalty_forms": ["representation"]})
    res = run(cfg, files / "teacher", files / "gold.jsonl", files / "forbidden.jsonl",
              map_path=tmp_path / "map.json", out_dir=tmp_path / "o", quiet=True)
    st = res.record["student"]
    assert st["kept_layers"] == [1] and {3, 4} <= set(st["cut_neurons"]["1"])
    rec = json.loads((tmp_path / "o" / "distill.json").read_text())
    assert rec["layers"] == {"align_pairs": [[1, 0]], "rmu_pairs": [[0, 0]]}
    assert "term_hidden" in res.record["curves"][-1] and "term_rmu_forget" in res.record["curves"][-1]


def write_small_suite(d: Path) -> Path:
    """A two-domain suite in arithmetic text (the world tokenizer's alphabet): QA (val + test) and MC for a
    forget domain (scorer regex) and a retain domain (scorer contains, MC only on test)."""
    d.mkdir(parents=True, exist_ok=True)
    qa = lambda op, f: [{"prompt": f"{a:02d}{op}{b:02d}:", "answers": [str(f(a, b))]}  # noqa: E731
                        for a, b in ((3, 4), (12, 5), (7, 9), (21, 3))]
    mc = lambda op, f: [{"question": f"{a:02d}{op}{b:02d}:", "choices": [f" so {f(a, b)}", f" so {f(a, b) + 1}"],  # noqa: E731
                         "gold": 0} for a, b in ((2, 2), (8, 1), (6, 3))]
    write_jsonl(d / "mul-qa.jsonl", qa("*", lambda a, b: a * b))
    write_jsonl(d / "mul-mc.jsonl", mc("*", lambda a, b: a * b))
    write_jsonl(d / "add-qa.jsonl", qa("+", lambda a, b: a + b))
    write_jsonl(d / "add-qa-val.jsonl", qa("+", lambda a, b: a + b)[:2])
    write_jsonl(d / "add-mc.jsonl", mc("+", lambda a, b: a + b))
    (d / "suite.yaml").write_text(
        "name: small\ndomains:\n"
        "  - {name: mul, role: forget, qa: mul-qa.jsonl, mc: mul-mc.jsonl, scorer: regex, "
        "answer_regex: 'so (-?\\d+)', max_new_tokens: 6, target_delimiter: ''}\n"
        "  - {name: add, role: retain, qa: {test: add-qa.jsonl, val: add-qa-val.jsonl}, mc: add-mc.jsonl, "
        "scorer: contains, max_new_tokens: 6}\n")
    return d / "suite.yaml"


def test_suite_evaluation_records_test_metrics_per_domain(files, tmp_path):
    suite = write_small_suite(tmp_path / "suite")
    cfg = DistillConfig(**{**TINY, "max_steps": 2, "eval_every": 1})
    res = run(cfg, files / "teacher", files / "gold.jsonl", files / "forbidden.jsonl", out_dir=tmp_path / "o",
              suite=suite, quiet=True)
    rec = json.loads((tmp_path / "o" / "distill.json").read_text())
    assert rec == json.loads(json.dumps(res.record))
    assert set(rec["test_metrics"]) == {"mul", "add"} == set(rec["teacher_test_metrics"])
    for m in (*rec["test_metrics"].values(), *rec["teacher_test_metrics"].values()):
        assert m["n"] == 4 and m["n_mc"] == 3
        assert 0 <= m["exact_match"] <= 1 and 0 <= m["mc_accuracy"] <= 1 and 0 <= m["mc_accuracy_norm"] <= 1
    assert set(rec["retain_ratio"]) == {"add"}  # the retain domains only
    assert [h["step"] for h in rec["eval_history"]] == [1, 2] and all("add" in h and "mul" not in h
                                                                        for h in rec["eval_history"])
    assert rec["suite"]["name"] == "small" and rec["suite"]["retain_domains"] == ["add"]
    with pytest.raises(ValueError, match="nope"):
        run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path / "o2", suite=suite,
            eval_domains=["nope"], quiet=True)


def test_suite_metrics_score_with_the_domain_scorer(files, tmp_path, monkeypatch):
    """A model that always writes the right answer: exact match 1 under both scorers; MC via the suite."""
    from surgical.models import load_model, load_tokenizer
    from surgical.suite import load_suite

    suite = load_suite(write_small_suite(tmp_path / "suite"))
    tok, model = load_tokenizer(files / "teacher"), load_model(files / "teacher")
    import surgical.scoring as scoring

    answers = {r["prompt"]: r["answers"][0] for d in suite.domains.values() for r in d.qa["test"]}
    monkeypatch.setattr(scoring, "greedy_generate",
                        lambda m, t, prompts, **kw: [f" 1+1=2; so {answers[p]}" for p in prompts])
    m = suite_metrics(model, tok, suite, ["mul", "add"], mc=False)
    assert m["mul"]["exact_match"] == 1.0 and m["add"]["exact_match"] == 1.0
    assert "mc_accuracy" not in m["mul"]


def test_world_suite_metrics_match_the_old_world_evaluation(files, world, world_suite):
    """The world suite reproduces evaluate_world (regex on the last `so N` of the first line, MC with an
    empty delimiter) on the same model."""
    from surgical.models import load_model, load_tokenizer
    from surgical.world.teacher import evaluate_world

    tok, model = load_tokenizer(files / "teacher"), load_model(files / "teacher")
    old = evaluate_world(model, tok, world, split="test", domains=("add", "mul"), limit=12)
    new = suite_metrics(model, tok, world_suite, ["add", "mul"], limit=12)
    for d in ("add", "mul"):
        for k in ("exact_match", "n", "mc_accuracy", "mc_accuracy_norm"):
            assert new[d][k] == pytest.approx(old[d][k]), (d, k)


def test_cli_suite_prints_test_metrics(files, tmp_path):
    suite = write_small_suite(tmp_path / "suite")
    r = _cli("distill", "--teacher", str(files / "teacher"), "--gold", str(files / "gold.jsonl"), "--suite",
             str(suite), "--out", str(tmp_path / "o"), "--quiet", "--json", "--set", "max_steps=1",
             "--set", "batch_size=4", "--set", "student_hidden_size=16", "--set", "threads=1")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary["test_metrics"]) == {"mul", "add"} and "add" in summary["retain_ratio"]
    (tmp_path / "bad.yaml").write_text("domains: []\n")
    r = _cli("distill", "--teacher", str(files / "teacher"), "--gold", str(files / "gold.jsonl"), "--suite",
             str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2"), "--set", "max_steps=1")
    assert r.exit_code == 1


def test_curates_quarantine_is_valid_forbidden_input(tmp_path):
    """quarantine.jsonl also holds what curate could not read or score; as forbidden data those lines are skipped,
    while the same lines in gold data are an error."""
    import json

    import pytest

    from surgical.distill.data import DataError, read_records

    q = tmp_path / "quarantine.jsonl"
    q.write_text("\n".join([
        json.dumps({"raw": "{broken", "curate": {"reason": "unreadable"}}),
        json.dumps({"body": "x", "curate": {"reason": "missing_text_field"}}),
        json.dumps({"prompt": "07*3:", "completion": " so 21", "curate": {"reason": "blocklist+classifier"}}),
        json.dumps({"text": "84/4: so 21", "curate": {"reason": "blocklist+classifier"}}),
        "not json",
    ]) + "\n")
    recs = read_records(q, skip_unusable=True)
    assert [r.get("prompt") or r.get("text") for r in recs] == ["07*3:", "84/4: so 21"]
    with pytest.raises(DataError):
        read_records(q)


def test_resume_refuses_checkpoints_of_another_run_and_auto_starts_fresh(files, tmp_path, monkeypatch):
    """A checkpoint records what made it: --resume onto a changed config refuses with a clear message (it would
    otherwise 'resume' a finished run and record the new config); the pipeline's 'auto' starts over instead."""
    cfg = DistillConfig(max_steps=6, save_steps=3, **TINY)
    args = (files / "teacher", files / "gold.jsonl", files / "forbidden.jsonl")
    run_killed_at_step_4(monkeypatch, cfg, args, tmp_path)
    changed = cfg.model_copy(update={"lr": cfg.lr * 2})
    with pytest.raises(ValueError, match="different run"):
        run(changed, *args, out_dir=tmp_path, quiet=True, resume=True)
    res = run(changed, *args, out_dir=tmp_path, quiet=True, resume="auto")
    assert res.record["resumed_from"] is None and res.record["steps"] == 6
    # a setting that does not change the weights (threads) still resumes
    run_killed_at_step_4(monkeypatch, cfg, args, tmp_path / "b")
    res = run(cfg.model_copy(update={"threads": 2}), *args, out_dir=tmp_path / "b", quiet=True, resume=True)
    assert res.record["resumed_from"].endswith("checkpoint-3")


def test_distill_never_overwrites_a_student_dir_it_did_not_make(files, tmp_path):
    from surgical.outputs import MARK, OutputError

    user = tmp_path / "student"
    user.mkdir()
    (user / "my-notes.txt").write_text("mine")
    cfg = DistillConfig(max_steps=2, **TINY)
    with pytest.raises(OutputError, match="not made by surgical"):
        run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path, quiet=True)
    assert (user / "my-notes.txt").read_text() == "mine"
    user.rename(tmp_path / "moved")
    run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path, quiet=True)
    assert (tmp_path / "student" / MARK).exists()
    run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path, quiet=True)  # its own: replaced
    assert not list(tmp_path.glob(".student.*"))


def test_cache_root_shares_one_cache_per_teacher_and_data(files, world, tmp_path):
    """cache_root: two students of one teacher on the same data read one cache (built by the first run); a second
    teacher (UNDO's unlearned one, say) and other data each get their own subdirectory; a cached student equals
    the online one when k covers the vocabulary (the bucket loss is then the full KL)."""
    root = tmp_path / "shared"
    common = dict(TINY, max_steps=3, teacher_logits="cache", cache_root=str(root), cache_top_k=4096)
    gold, forb = files / "gold.jsonl", files / "forbidden.jsonl"
    run(DistillConfig(**common), files / "teacher", gold, forb, out_dir=tmp_path / "a", quiet=True)
    run(DistillConfig(**common), files / "teacher", gold, forb, out_dir=tmp_path / "b", quiet=True,
        preset="plain-kd")
    a, b = (json.loads((tmp_path / d / "distill.json").read_text())["cache"] for d in "ab")
    assert a["dir"] == b["dir"] and Path(a["dir"]).parent == root
    assert a["built_by_this_run"] and not b["built_by_this_run"]
    assert a["k"] == len(world.tokenizer)  # k clipped to the vocabulary: exact
    other = tmp_path / "other-teacher"
    make_tiny_model("llama", len(world.tokenizer), layers=2, seed=7).save_pretrained(other)
    world.tokenizer.save_pretrained(other)
    run(DistillConfig(**common), other, gold, forb, out_dir=tmp_path / "c", quiet=True)
    c = json.loads((tmp_path / "c" / "distill.json").read_text())["cache"]
    assert c["dir"] != a["dir"] and c["built_by_this_run"] and c["teacher_sha256"] == sha256_path(other)
    short = tmp_path / "gold-short.jsonl"
    short.write_text("".join(gold.read_text().splitlines(keepends=True)[:5]))
    run(DistillConfig(**common), files / "teacher", short, forb, out_dir=tmp_path / "d", quiet=True)
    d = json.loads((tmp_path / "d" / "distill.json").read_text())["cache"]
    assert d["dir"] not in (a["dir"], c["dir"])
    assert len([p for p in root.iterdir() if p.is_dir()]) == 3
    # with k = V the cached student is the online one (same seed, same stream)
    run(DistillConfig(**{**common, "teacher_logits": "online"}), files / "teacher", gold, forb,
        out_dir=tmp_path / "online", quiet=True)
    from surgical.models import load_model

    sa, so = (load_model(tmp_path / d / "student").state_dict() for d in ("a", "online"))
    assert max(float((sa[k] - so[k]).abs().max()) for k in sa) < 5e-3


def test_teacher_metrics_are_measured_once_per_run_dir(files, tmp_path, monkeypatch):
    """With cache_root (the pipeline's), a student in another process reads the teacher's test metrics from
    the run's memo instead of measuring the same teacher again; the record is the same."""
    from surgical.distill import run as run_mod

    suite = write_small_suite(tmp_path / "suite")
    cfg = DistillConfig(**{**TINY, "max_steps": 1, "cache_root": str(tmp_path / "shared")})
    first = run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path / "a", suite=suite, quiet=True)
    assert len(list((tmp_path / "shared").glob("teacher-metrics-*.json"))) == 1
    run_mod._TEACHER_METRICS.clear()  # as in a fresh process
    measured = []
    real = run_mod.suite_metrics
    monkeypatch.setattr(run_mod, "suite_metrics", lambda model, *a, **k: measured.append(model) or real(model, *a, **k))
    second = run(cfg, files / "teacher", files / "gold.jsonl", out_dir=tmp_path / "b", suite=suite, quiet=True)
    assert len(measured) == 1  # the student only
    assert second.record["teacher_test_metrics"] == first.record["teacher_test_metrics"]
    run_mod._TEACHER_METRICS.clear()
    measured.clear()
    run(cfg.model_copy(update={"cache_root": None}), files / "teacher", files / "gold.jsonl", out_dir=tmp_path / "c",
        suite=suite, quiet=True)
    assert len(measured) == 2  # no memo dir: the teacher is measured in this process


@pytest.mark.parametrize(("margin", "active"), [(0.0, 0.0), (1e6, 1.0)])
def test_penalty_activity_is_recorded(files, tmp_path, margin, active):
    """distill.json's penalty_activity: the away hinge is active on no forbidden token at margin 0 (and then its
    gradient is exactly 0) and on every one at a huge margin; maxent has a gradient on every forbidden token of
    a non-uniform student; the figures are in the logged curves too."""
    cfg = DistillConfig(**{**TINY, "max_steps": 4, "forbidden_ratio": 0.5, "penalty_forms": ["away", "maxent"],
                           "away_margin": margin, "term_grad_every": 2, "logging_steps": 2})
    run(cfg, files / "teacher", files / "gold.jsonl", files / "forbidden.jsonl", out_dir=tmp_path, quiet=True)
    rec = json.loads((tmp_path / "distill.json").read_text())
    act = rec["penalty_activity"]
    assert set(act) >= {"away", "maxent"}
    assert act["away"]["active_fraction"] == active and act["away"]["active_fraction_batches"] == 4
    assert act["maxent"]["active_fraction"] == 1.0
    assert act["away"]["grad_norm_ratio_vs_kd_batches"] == 2  # steps 1 and 3 (0-based)
    if active:
        assert act["away"]["grad_norm_ratio_vs_kd"] > 0
    else:
        assert act["away"]["grad_norm_ratio_vs_kd"] == 0.0
    assert act["maxent"]["grad_norm_ratio_vs_kd"] > 0
    logged = {k for c in rec["curves"] for k in c}
    assert {"active_away", "active_maxent", "gradratio_away", "gradratio_maxent"} <= logged


def test_distill_demo_trains_on_the_pipelines_teacher_trajectories(tmp_path, monkeypatch):
    """`surgical distill --demo` learns from what the pipeline's distill stage learns from: the teacher's
    trajectories on generate.demo_per_domain train prompts of each allowed domain (not the world's whole gold
    split); forbidden stays the world's mul/div/mixed."""
    import surgical.curate.generate as gen
    import surgical.demo as demo
    import surgical.distill.run as drun
    from surgical.config import demo_config
    from surgical.io import read_jsonl, write_jsonl

    cfg = demo_config()
    cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"demo_per_domain": 7})})
    monkeypatch.setattr(demo, "distill_inputs", lambda c, quiet=True: (tmp_path / "teacher", [{"text": "whole split"}],
                                                                       [{"text": "forbidden"}], tmp_path / "suite.yaml"))
    seen = {}

    def fake_generate(gcfg, teacher, prompts, out_dir, constitution_path=None, quiet=True, suite=None):
        recs = list(read_jsonl(prompts))
        seen.update(prompts=recs, constitution=constitution_path, teacher=teacher)
        write_jsonl(Path(out_dir) / "trajectories.jsonl",
                    [{"prompt": r["prompt"], "completion": " x", "domain": r["domain"]} for r in recs])

    monkeypatch.setattr(gen, "run", fake_generate)
    monkeypatch.setattr(drun, "run", lambda c, t, gold, forbidden, **k: seen.update(gold=gold, forbidden=forbidden))
    drun.run_demo(tmp_path / "out", preset="surgical", pipeline_cfg=cfg, quiet=True)
    domains = [r["domain"] for r in seen["prompts"]]
    assert sorted(set(domains)) == ["add", "sub"] and domains.count("add") == domains.count("sub") == 7
    assert all("answer" in r for r in seen["prompts"])  # the teacher's answers are checked against them
    assert seen["constitution"] == cfg.generate.constitution and seen["teacher"] == tmp_path / "teacher"
    assert len(seen["gold"]) == 14 and seen["gold"][0]["completion"] == " x"
    assert seen["forbidden"] == [{"text": "forbidden"}]

    monkeypatch.setattr(gen, "run", lambda g, t, p, out_dir, **k: write_jsonl(Path(out_dir) / "trajectories.jsonl", []))
    with pytest.raises(ValueError, match="no trajectory"):
        drun.run_demo(tmp_path / "out2", preset="surgical", pipeline_cfg=cfg, quiet=True)
