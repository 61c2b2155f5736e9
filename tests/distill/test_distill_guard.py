"""The leak guard (distill/guard.py): a teacher-representation probe that takes forbidden records out of gold."""

import json

import numpy as np
import pytest

from surgical.distill.config import DistillConfig
from surgical.distill.guard import fit_guard
from surgical.distill.run import run
from surgical.io import read_jsonl, write_jsonl

TINY = dict(student_hidden_size=16, student_heads=2, student_intermediate_size=32, batch_size=8, logging_steps=2,
            threads=1, eval_every=0, warmup_steps=0, max_steps=2)


def test_out_of_fold_scores_catch_rows_labelled_gold_that_look_forbidden():
    """Gold holds 10 rows drawn from the forbidden cluster, labelled gold: a probe fit on them in-sample could
    learn their label; scored out of fold they land on the forbidden side, and clean gold does not."""
    rng = np.random.default_rng(0)
    gold = rng.normal(0, 1, (200, 8))
    forb = rng.normal(0, 1, (100, 8)) + 3.0
    leaked = rng.normal(0, 1, (10, 8)) + 3.0
    p_gold, p_forb = fit_guard(np.concatenate([gold, leaked]), forb, folds=5, seed=0)
    assert (p_gold[200:] >= 0.5).all()
    assert (p_gold[:200] >= 0.5).mean() < 0.02
    assert (p_forb >= 0.5).mean() > 0.95


def test_too_few_records_to_cross_fit_is_an_error():
    with pytest.raises(ValueError, match="leak_guard"):
        fit_guard(np.zeros((3, 2)), np.ones((10, 2)), folds=5, seed=0)


@pytest.fixture(scope="module")
def leaky_gold(files, tmp_path_factory):
    """The fixture's gold plus 8 of its forbidden records, labelled gold (a filter that let them through), their
    completions replaced by gold ones, as the constitution rewrites a leaked multiplication's steps into
    additions: only the prompt still says what they are."""
    d = tmp_path_factory.mktemp("leaky")
    forb = read_jsonl(files / "forbidden.jsonl")
    gold = read_jsonl(files / "gold.jsonl")
    leaked = [{**f, "completion": g["completion"]} for f, g in zip(forb[:8], gold, strict=False)]
    write_jsonl(d / "gold.jsonl", gold + leaked)
    write_jsonl(d / "forbidden.jsonl", forb[8:])
    return d


@pytest.mark.parametrize("preset", ["surgical", "filter-only"])
def test_guard_moves_leaked_records_to_the_penalty_or_drops_them(files, leaky_gold, tmp_path, preset):
    n_gold = len(read_jsonl(leaky_gold / "gold.jsonl"))
    n_forb = len(read_jsonl(leaky_gold / "forbidden.jsonl"))
    cfg = DistillConfig(leak_guard="probe", **TINY)
    run(cfg, files / "teacher", leaky_gold / "gold.jsonl", leaky_gold / "forbidden.jsonl", out_dir=tmp_path,
        preset=preset, quiet=True)
    rec = json.loads((tmp_path / "distill.json").read_text())
    g = rec["leak_guard"]
    assert g["layer"] == 1 and g["n_gold"] == n_gold  # the middle of the 2-layer teacher, without a map
    assert g["ground_truth"]["gold_in_forbidden_domains"] == 8
    assert g["ground_truth"]["caught"] >= 7 and g["ground_truth"]["false_flags"] <= 1
    assert rec["data"]["n_gold"] == n_gold - g["flagged"]
    if preset == "surgical":
        assert g["flagged_go_to"] == "penalty" and rec["data"]["n_forbidden"] == n_forb + g["flagged"]
    else:
        assert g["flagged_go_to"] == "dropped" and rec["data"]["n_forbidden"] == 0


def test_guard_off_by_default_and_in_the_presets_it_cannot_serve(files, leaky_gold, tmp_path):
    run(DistillConfig(**TINY), files / "teacher", leaky_gold / "gold.jsonl", leaky_gold / "forbidden.jsonl",
        out_dir=tmp_path / "off", quiet=True)
    assert json.loads((tmp_path / "off" / "distill.json").read_text())["leak_guard"] is None
    run(DistillConfig(leak_guard="probe", **TINY), files / "teacher", leaky_gold / "gold.jsonl",
        leaky_gold / "forbidden.jsonl", out_dir=tmp_path / "kd", preset="plain-kd", quiet=True)
    assert json.loads((tmp_path / "kd" / "distill.json").read_text())["leak_guard"] is None


def test_guard_without_forbidden_records_or_with_a_bad_layer_fails(files, leaky_gold, tmp_path):
    with pytest.raises(ValueError, match="leak_guard: probe needs the forbidden records"):
        run(DistillConfig(leak_guard="probe", **TINY), files / "teacher", leaky_gold / "gold.jsonl", None,
            out_dir=tmp_path / "a", quiet=True)
    with pytest.raises(ValueError, match="leak_guard_layer: 7"):
        run(DistillConfig(leak_guard="probe", leak_guard_layer=7, **TINY), files / "teacher",
            leaky_gold / "gold.jsonl", leaky_gold / "forbidden.jsonl", out_dir=tmp_path / "b", quiet=True)
    assert not (tmp_path / "a" / "student").exists()
