from pathlib import Path

from surgical.world.problems import ALL_DOMAINS, DOMAINS, Difficulty, parse_worked_answer
from surgical.world.splits import make_splits, mc_records


def test_splits_are_disjoint_and_sized(world):
    s = world.splits
    for d in ALL_DOMAINS:
        train = {p.key for p in s.train[d]}
        val = {p.key for p in s.val[d]}
        test = {p.key for p in s.test[d]}
        assert not train & val and not train & test and not val & test, d
        assert len(test) == len(s.test[d])  # no duplicates inside a split
    for d in DOMAINS:
        assert len(s.test[d]) == 200 and len(s.val[d]) == 100


def test_splits_are_seeded():
    a = make_splits(1, Difficulty())
    b = make_splits(1, Difficulty())
    c = make_splits(2, Difficulty())
    assert [p.key for p in a.test["mul"]] == [p.key for p in b.test["mul"]]
    assert [p.key for p in a.test["mul"]] != [p.key for p in c.test["mul"]]


def test_mc_records_have_one_correct_choice_and_near_misses(world):
    d = world.difficulty
    for domain in DOMAINS:
        recs = mc_records(world.splits.test[domain], d, seed=0)
        assert all(r["question"].endswith(":") for r in recs)
        for r in recs:
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
            values = [parse_worked_answer(c) for c in r["choices"]]
            assert values[r["gold"]] == r["answer"]
            assert sum(v == r["answer"] for v in values) == 1
        # the gold index is spread over positions (no position bias to exploit)
        golds = [r["gold"] for r in recs]
        assert min(golds.count(i) for i in range(4)) > len(recs) / 10


def test_write_world_files(tmp_path):
    import json

    import yaml

    from surgical.config import WorldConfig
    from surgical.world import write_world

    files = write_world(WorldConfig(), tmp_path)
    rec = json.loads(open(files["test-mul-mc"]).readline())
    assert set(rec) >= {"question", "choices", "gold"}
    task = yaml.safe_load(open(tmp_path / "lm_eval_tasks" / "surgical_arith_mul.yaml"))
    assert task["output_type"] == "multiple_choice" and task["dataset_path"] == "json"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(files["tokenizer"])
    assert tok.decode(tok("12*3=630")["input_ids"], skip_special_tokens=True) == "12*3=630"


def test_answers_are_computed_from_operands_never_with_eval():
    import pytest

    from surgical.world.problems import _arith

    assert _arith("78+93") == 171 and _arith("(12+3)*4") == 60 and _arith("84//4") == 21 and _arith("7-9") == -2
    for bad in ("__import__('os')", "2**10", "1.5+1", "x+1"):
        with pytest.raises(ValueError):
            _arith(bad)
    src = (Path(__file__).resolve().parents[2] / "src" / "surgical" / "world" / "problems.py").read_text()
    assert "eval(" not in src


def test_a_test_split_larger_than_the_world_is_a_clear_error():
    import pytest

    from surgical.config import WorldConfig
    from surgical.world import build_world

    with pytest.raises(ValueError, match="has only 100 problems"):
        build_world(WorldConfig(add_digits=1, sub_digits=1, test_per_domain=200, val_per_domain=100))
