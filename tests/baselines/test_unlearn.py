"""Unlearn-only baselines: the losses by hand, and each method moving the forget loss the intended way."""

from __future__ import annotations

import json
import math

import pytest
import torch

from surgical.baselines.unlearn import (
    UnlearnConfig,
    graddiff_loss,
    kl_uniform_to_model,
    masked_mse,
    masked_token_ce,
    random_unit_vector,
    scaled_rmu_layer,
    suite_unlearn_records,
    unlearn,
)
from surgical.demo import unlearn_records as world_unlearn_records
from surgical.models import decoder_layers, mlp_down_proj

# ---------------------------------------------------------------- pure functions


def test_kl_uniform_is_zero_at_uniform_and_matches_hand_value():
    labels = torch.tensor([[-100, 1, 2]])
    assert kl_uniform_to_model(torch.zeros(1, 3, 4), labels).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    # KL(U || p) = sum_v 1/4 * log((1/4) / p_v)
    hand = sum(0.25 * math.log(0.25 / p) for p in (0.7, 0.1, 0.1, 0.1))
    got = kl_uniform_to_model(logits.expand(1, 3, 4), torch.tensor([[-100, 5, -100]]))
    assert got.item() == pytest.approx(hand, rel=1e-5)


def test_masked_token_ce_shifts_and_masks():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    labels = torch.tensor([[-100, -100, 1]])  # only position 1 predicts token 1 (p = 0.1)
    assert masked_token_ce(logits, labels).item() == pytest.approx(-math.log(0.1), rel=1e-5)


def test_masked_mse_and_graddiff():
    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
    assert masked_mse(h, torch.zeros(2), torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    assert masked_mse(h, torch.zeros(2), torch.tensor([[0, 1]])).item() == pytest.approx(9.0)
    assert graddiff_loss(torch.tensor(2.0), torch.tensor(1.0), 0.5).item() == pytest.approx(-1.5)


def test_control_vector_and_layer_scaling():
    u = random_unit_vector(16, 0)
    assert u.norm().item() == pytest.approx(1.0) and (u >= 0).all()
    assert torch.equal(u, random_unit_vector(16, 0))
    assert scaled_rmu_layer(32) == 7  # the WMDP reference itself
    assert scaled_rmu_layer(4) == 2 and scaled_rmu_layer(2) == 0 and scaled_rmu_layer(12) == 3


# ---------------------------------------------------------------- methods on tiny trained models


_PRETRAINED: dict = {}


def _pretrained_tiny(family, world, tmp_path_factory):
    """A tiny model briefly trained on all four domains, so there is something to forget."""
    from surgical.data import PadCollator, encode_example
    from surgical.models import make_tiny_model

    if family in _PRETRAINED:
        return _PRETRAINED[family]
    tok = world.tokenizer
    model = make_tiny_model(family, len(tok), layers=4, seed=0)
    recs = world_unlearn_records(world, ["add", "sub", "mul", "div"])
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    collate = PadCollator(tok.pad_token_id)
    model.train()
    for _ in range(40):
        idx = torch.randint(len(recs), (32,), generator=g).tolist()
        b = collate([encode_example(tok, recs[i]["prompt"], recs[i]["completion"]) for i in idx])
        loss = model(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp(f"teacher-{family}")
    model.eval().save_pretrained(d)
    tok.save_pretrained(d)
    _PRETRAINED[family] = d
    return d


@pytest.fixture
def unlearn_data(world):
    return world_unlearn_records(world, ["mul", "div"])[:256], world_unlearn_records(world, ["add", "sub"])[:256]


@pytest.mark.parametrize("method", ["graddiff", "maxent", "rmu"])
def test_method_raises_forget_loss_keeps_retain(method, family, world, unlearn_data, tmp_path, tmp_path_factory):
    teacher = _pretrained_tiny(family, world, tmp_path_factory)
    forget, retain = unlearn_data
    # RMU here: a larger c and a smaller alpha than the WMDP defaults, because a 32-wide model trained for
    # 40 steps barely moves in 12 steps under alpha = 1200 (docs/baselines.md); the objective is the same.
    extra = {"steering_coeff": 20.0, "alpha": 100.0} if method == "rmu" else {}
    lr = {"graddiff": 3e-3, "maxent": 3e-3, "rmu": 3e-2}[method]
    steps = 30 if method == "rmu" else 12  # RMU moves representations first and the loss only later
    cfg = UnlearnConfig(max_steps=steps, batch_size=16, lr=lr, threads=1, eval_items=64, **extra)
    rec = unlearn(teacher, method, forget, retain, cfg, tmp_path / method)
    b, a = rec["before"], rec["after"]
    assert a["forget_ce"] > b["forget_ce"] + 0.05, rec
    assert a["forget_ce"] - b["forget_ce"] > a["retain_ce"] - b["retain_ce"], rec  # selective
    assert a["retain_ce"] < 1.5 * b["retain_ce"], rec  # no blow-up
    saved = json.loads((tmp_path / method / "unlearn.json").read_text())
    assert saved["method"] == method and saved["steps"] == steps and saved["train_flops"] > 0
    assert (tmp_path / method / "config.json").exists() and (tmp_path / method / "tokenizer.json").exists()


def test_rmu_only_changes_down_projections(family, world, unlearn_data, tmp_path, tmp_path_factory):
    from surgical.models import load_model

    teacher = _pretrained_tiny(family, world, tmp_path_factory)
    forget, retain = unlearn_data
    cfg = UnlearnConfig(max_steps=4, batch_size=8, lr=1e-2, threads=1, eval_items=16)
    rec = unlearn(teacher, "rmu", forget, retain, cfg, tmp_path / "rmu")
    before, after = load_model(teacher), load_model(tmp_path / "rmu")
    layers = decoder_layers(before)
    allowed = {n for n, p in before.named_parameters()
               if any(p is mlp_down_proj(layers[i]).weight for i in range(rec["layer"] - 2, rec["layer"] + 1))}
    assert len(allowed) == 3 and rec["layer"] == 2
    a_params = dict(after.named_parameters())
    changed = {n for n, p in before.named_parameters() if not torch.equal(p, a_params[n])}
    assert changed == allowed


def test_rejects_bad_input(world, tmp_path, unlearn_data):
    forget, retain = unlearn_data
    with pytest.raises(ValueError, match="unknown unlearning method"):
        unlearn(tmp_path, "npo", forget, retain)
    with pytest.raises(ValueError, match="non-empty"):
        unlearn(tmp_path, "rmu", [], retain)


def test_suite_unlearn_records_are_the_attack_records(tmp_path):
    from surgical.io import write_jsonl
    from surgical.suite import SuiteError

    write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "q", "answers": ["a"]}])
    write_jsonl(tmp_path / "attack.jsonl", [{"prompt": "07*3:", "completion": " so 21"}])
    (tmp_path / "suite.yaml").write_text("domains:\n  - {name: mul, role: forget, qa: qa.jsonl, attack: attack.jsonl}\n"
                                         "  - {name: add, role: retain, qa: qa.jsonl}\n")
    assert suite_unlearn_records(tmp_path / "suite.yaml", ["mul"]) == [
        {"prompt": "07*3:", "completion": " so 21", "domain": "mul"}]
    with pytest.raises(SuiteError, match="no `attack`"):
        suite_unlearn_records(tmp_path / "suite.yaml", ["add"])
    with pytest.raises(SuiteError, match="zzz"):
        suite_unlearn_records(tmp_path / "suite.yaml", ["zzz"])


def test_stage_modules_do_not_import_the_world():
    import re
    from pathlib import Path

    import surgical

    root = Path(surgical.__file__).parent
    files = [*(root / "distill").glob("*.py"), *(root / "baselines").glob("*.py"), root / "curate" / "generate.py"]
    pattern = re.compile(r"^\s*(from\s+(\.\.world|surgical\.world)\b|import\s+surgical\.world\b)", re.M)
    offenders = [str(f.relative_to(root)) for f in files if pattern.search(f.read_text())]
    assert not offenders, offenders
