"""The teacher recipe on a tiny budget: determinism, caching, the saved artifacts and the CLI interface."""

import json

from typer.testing import CliRunner

from surgical.cli import app
from surgical.config import TeacherConfig, WorldConfig
from surgical.world.teacher import encode_example, get_or_train_teacher, teacher_dir, train_teacher

TINY = TeacherConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_steps=12, batch_size=8,
                     warmup_steps=2, threads=1)
WORLD = WorldConfig(test_per_domain=10, val_per_domain=10)


def test_same_seed_same_loss_curve(tmp_path):
    a = train_teacher(WORLD, TINY, tmp_path / "a", quiet=True)
    b = train_teacher(WORLD, TINY, tmp_path / "b", quiet=True)
    c = train_teacher(WORLD, TINY.model_copy(update={"seed": 1}), tmp_path / "c", quiet=True)
    assert [h["loss"] for h in a["loss_curve"]] == [h["loss"] for h in b["loss_curve"]]
    assert [h["loss"] for h in a["loss_curve"]] != [h["loss"] for h in c["loss_curve"]]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "teacher.json"):
        assert (tmp_path / "a" / name).exists(), name
    prov = json.loads((tmp_path / "a" / "teacher.json").read_text())["provenance"]
    assert prov["config"]["teacher"]["max_steps"] == 12 and prov["world_data_sha256"]


def test_cache_is_keyed_by_config_and_moves_with_surgical_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGICAL_HOME", str(tmp_path / "home"))
    d, trained = get_or_train_teacher(WORLD, TINY, quiet=True)
    assert trained and d.parent.parent == tmp_path / "home"
    d2, trained2 = get_or_train_teacher(WORLD, TINY, quiet=True)
    assert d2 == d and not trained2
    assert teacher_dir(WORLD, TINY.model_copy(update={"lr": 1e-3})) != d


def test_loss_is_on_the_answer_only(world_tokenizer):
    enc = encode_example(world_tokenizer, "07+45:", " 7+5+0=12; 0+4+1=5; so 52")
    n_prompt = len(world_tokenizer("07+45:")["input_ids"])
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert enc["labels"][-1] == world_tokenizer.eos_token_id
    assert len(enc["labels"]) == len(enc["input_ids"])


def test_cli_train_prints_dir_last_and_eval_json_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGICAL_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("world: {test_per_domain: 10, val_per_domain: 10}\n"
                   "teacher: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_steps: 5, "
                   "batch_size: 8, warmup_steps: 1, threads: 1}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["teacher", "train", "--config", str(cfg), "--quiet"])
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert (tmp_path / "home" / "teachers") in __import__("pathlib").Path(last).parents
    r = runner.invoke(app, ["teacher", "eval", last, "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(metrics) == {"add", "sub", "mul", "div"}
    for m in metrics.values():
        assert set(m) == {"exact_match", "mc_accuracy"} and 0 <= m["exact_match"] <= 1 and 0 <= m["mc_accuracy"] <= 1


def test_a_corrupted_cached_teacher_is_not_reused(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("SURGICAL_HOME", str(tmp_path / "home"))
    d, trained = get_or_train_teacher(WORLD, TINY, quiet=True)
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    w.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="do not match"):
        d2, trained2 = get_or_train_teacher(WORLD, TINY, quiet=True)
    assert d2 == d and trained2
    assert get_or_train_teacher(WORLD, TINY, quiet=True) == (d, False)  # retrained, now intact
