"""Teacher trajectories: tiny random models of every family exercise the machinery (not the quality)."""

from __future__ import annotations

import json

from surgical.curate.config import GenerateConfig
from surgical.curate.constitution import demo_constitution_path, load_constitution, token_kd_mask
from surgical.curate.generate import _trajectory, demo_prompts, generate, is_correct
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


def test_demo_prompts_per_domain():
    from surgical.config import demo_config

    pcfg = demo_config()
    cfg = GenerateConfig(demo_per_domain=3, demo_domains=["add", "mul"])
    ps = demo_prompts(pcfg, cfg)
    assert [p["domain"] for p in ps].count("add") == 3 and [p["domain"] for p in ps].count("mul") == 3
    assert all(p["prompt"].endswith(":") and "answer" in p for p in ps)
