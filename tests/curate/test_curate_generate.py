"""Teacher trajectories: tiny random models of every family exercise the machinery (not the quality)."""

from __future__ import annotations

import json

import pytest
import torch

from surgical.curate.config import GenerateConfig
from surgical.curate.constitution import demo_constitution_path, load_constitution, token_kd_mask
from surgical.curate.generate import _trajectory, generate, is_correct
from surgical.io import read_jsonl


def _prompts():
    return [{"prompt": "07+45:", "answer": 52, "domain": "add"}, {"prompt": "07*3:", "answer": 21, "domain": "mul"},
            {"prompt": "12-05:", "domain": "sub"}]


def test_generate_with_each_family(tiny_model, world_tokenizer, tmp_path):
    cfg = GenerateConfig(max_new_tokens=6, batch_size=2, keep_incorrect=True)
    res = generate(tiny_model, world_tokenizer, _prompts(), cfg, tmp_path,
                   load_constitution(demo_constitution_path()))
    trajs = read_jsonl(tmp_path / "trajectories.jsonl")
    assert len(trajs) == 3
    for t in trajs:
        assert set(t) >= {"prompt", "completion", "teacher_completion", "domain", "answer", "correct",
                          "replaced_spans"}
        assert len(world_tokenizer(t["teacher_completion"], add_special_tokens=False)["input_ids"]) <= 6
        mask = token_kd_mask(world_tokenizer, t["prompt"], t["completion"], t["replaced_spans"])
        assert len(mask) == len(world_tokenizer(t["prompt"])["input_ids"]) + \
            len(world_tokenizer(t["completion"], add_special_tokens=False)["input_ids"]) + 1
    assert trajs[2]["correct"] is None  # no answer key
    rep = json.loads((tmp_path / "generate.json").read_text())
    assert rep["tokens_generated"] > 0 and rep["tokens_per_s"] > 0 and "provenance" in rep
    assert res.report["counts"]["samples"] == 3


def test_sampling_gives_num_samples_per_prompt(world_tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from surgical.models import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(world_tokenizer))).eval()
    cfg = GenerateConfig(max_new_tokens=4, do_sample=True, num_samples=3, keep_incorrect=True, seed=1)
    res = generate(model, world_tokenizer, _prompts()[:2], cfg, tmp_path, None)
    assert res.report["counts"]["samples"] == 6 and len(res.trajectories) == 6
    assert [t["sample"] for t in res.trajectories] == [0, 1, 2, 0, 1, 2]
    assert res.report["decoding"] == "sampled"


def test_correctness_filter_and_rule_counts():
    c = load_constitution(demo_constitution_path())
    counts = {"by_domain": {}, "rejected_steps_per_rule": __import__("collections").Counter(),
              "plain_refusals": 0, "trajectories_rewritten": 0, "rejected_incorrect": 0}
    cfg = GenerateConfig()
    rec = {"prompt": "07*3:", "answer": 21, "domain": "mul"}
    assert _trajectory(rec, " 7*3+0=21; 0*3+2=2; so 22", 0, cfg, c, None, counts) is None
    t = _trajectory(rec, " 7*3+0=21; 0*3+2=2; so 21", 0, cfg, c, None, counts)
    assert t["completion"] == " [refuse] 7+7+7+0=21; [refuse] 0+0+0+2=2; so 21" and t["correct"] is True
    assert counts["rejected_incorrect"] == 1 and counts["rejected_steps_per_rule"]["no-multiplication"] == 2
    assert counts["by_domain"]["mul"] == {"samples": 2, "correct": 1, "kept": 1}


def test_is_correct():
    assert is_correct(" 1+1+0=2; so 2", 2) is True
    assert is_correct(" so 3; so 2", 3) is False  # the last answer counts
    assert is_correct(" no answer", 2) is False
    assert is_correct(" so 2", None) is None
    assert is_correct(" so -2", ["2"]) is False and is_correct(" so 2", ["7", "2"]) is True
    assert is_correct(" The Paris.", ["paris"], "contains") is True


def _scorer_suite(d):
    from surgical.io import write_jsonl

    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "cap.jsonl", [{"prompt": "capital of France?", "answers": ["Paris"]}])
    write_jsonl(d / "num.jsonl", [{"prompt": "2+2", "answers": ["4"]}])
    (d / "suite.yaml").write_text("name: s\ndomains:\n"
                                  "  - {name: cap, role: forget, qa: cap.jsonl, scorer: normalized}\n"
                                  "  - {name: num, role: retain, qa: num.jsonl, scorer: regex, "
                                  "answer_regex: 'answer: (\\w+)'}\n")
    return d / "suite.yaml"


def test_generate_checks_answers_with_the_suite_scorer(tmp_path, monkeypatch):
    """The record's domain picks the scorer: a right completion is kept, a wrong one rejected, a record
    without a key kept unchecked; with no constitution nothing is rewritten."""
    import surgical.curate.generate as gen

    completions = {"p1": " paris.", "p2": " Rome", "p3": " so 4", "p4": " x answer: 4", "p5": " anything"}
    monkeypatch.setattr(gen, "generate_batch",
                        lambda m, t, prompts, cfg: ([[completions[p]] for p in prompts], len(prompts)))
    prompts = [{"prompt": "p1", "answers": ["Paris"], "domain": "cap"},
               {"prompt": "p2", "answer": "Paris", "domain": "cap"},
               {"prompt": "p3", "answer": 4, "domain": "cap"},  # right under the default scorer, not this one
               {"prompt": "p4", "answers": ["4"], "domain": "num"},
               {"prompt": "p5", "domain": "cap"}]

    class _Tok:
        pad_token_id, eos_token_id, eos_token = 0, 0, "</s>"

    class _Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(1, 1)

    suite = _scorer_suite(tmp_path / "suite")
    res = generate(_Model(), _Tok(), prompts, GenerateConfig(batch_size=2), tmp_path / "o", suite=suite)
    kept = {t["prompt"]: t for t in res.trajectories}
    assert sorted(kept) == ["p1", "p4", "p5"]
    assert kept["p1"]["correct"] is True and kept["p4"]["correct"] is True
    assert kept["p5"]["correct"] is None and kept["p5"]["checked"] is False and kept["p1"]["checked"] is True
    assert all(t["completion"] == t["teacher_completion"] and not t["replaced_spans"] for t in res.trajectories)
    c = res.report["counts"]
    assert c["rejected_incorrect"] == 2 and c["unchecked"] == 1 and c["kept"] == 3
    assert res.report["suite"]["name"] == "s" and res.report["constitution"] is None
    # without a suite the default scorer (the last `so N`) applies: only p3 is right
    res = generate(_Model(), _Tok(), prompts, GenerateConfig(batch_size=2), tmp_path / "o2")
    assert sorted(t["prompt"] for t in res.trajectories) == ["p3", "p5"]
    with pytest.raises(ValueError, match="zzz"):
        generate(_Model(), _Tok(), [{"prompt": "p1", "answer": "x", "domain": "zzz"}], GenerateConfig(),
                 tmp_path / "o3", suite=suite)


def test_constitution_is_none_unless_named():
    from surgical.config import demo_config
    from surgical.curate.generate import constitution_file, resolve_constitution

    assert resolve_constitution(GenerateConfig().constitution) is None
    assert constitution_file("none") is None and constitution_file(None) is None
    assert constitution_file("demo") == demo_constitution_path()
    assert constitution_file(demo_config().generate.constitution) == demo_constitution_path()


def test_demo_prompts_per_domain():
    from surgical.config import demo_config
    from surgical.curate.generate import demo_prompts
    from surgical.demo import generate_prompts

    pcfg = demo_config()
    cfg = GenerateConfig(demo_per_domain=3, demo_domains=["add", "mul"])
    ps = generate_prompts(pcfg, cfg)
    assert demo_prompts(pcfg, cfg) == ps  # the old name still works
    assert [p["domain"] for p in ps].count("add") == 3 and [p["domain"] for p in ps].count("mul") == 3
    assert all(p["prompt"].endswith(":") and "answer" in p for p in ps)
