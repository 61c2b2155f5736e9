"""Quantize stage: reload round-trips on every family, the quanto path, refusals, the model card."""

from __future__ import annotations

import json

import pytest
import torch

from surgical.quantize import (
    QuantizeError,
    check_supported,
    compare,
    conv1d_to_linear,
    load_quantized,
    quantize_in_place,
    run,
    tensor_bytes,
    tokens_per_s,
)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_torchao_int8_round_trip(family, tiny_model, tiny_model_dir, tmp_path):
    ids = torch.randint(3, tiny_model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = _logits(tiny_model, ids)
    res = run(tiny_model_dir, tmp_path / "q", "int8", "torchao", verify=None, do_measure=False)
    rec = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert rec["quantized_modules"] >= 4 * 2  # at least q/k/v-or-fused, out, up, down per layer, 2 layers
    reloaded = load_quantized(res.model_dir)
    out = _logits(reloaded, ids)
    # quantization changes the logits a little, never a lot, and the reload is the quantized model
    err = (out - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item() + 0.05
    weights = [m.weight for m in reloaded.modules() if isinstance(m, torch.nn.Linear)
               and m is not reloaded.get_output_embeddings()]
    assert weights and all(type(w).__name__ not in ("Parameter", "Tensor") for w in weights)
    in_memory = load_quantized(tiny_model_dir)  # fp32 dir loads too
    quantize_in_place(in_memory, "int8", "torchao")
    assert torch.allclose(_logits(in_memory, ids), out, atol=1e-5)
    if family != "gpt2":  # Linear-only families reload through plain transformers
        from transformers import AutoModelForCausalLM

        assert rec["format"] == "transformers-torchao"
        plain = AutoModelForCausalLM.from_pretrained(res.model_dir).eval()
        assert torch.allclose(_logits(plain, ids), out, atol=1e-6)
    else:
        assert rec["format"] == "torchao-safetensors"


@pytest.mark.parametrize("scheme", ["int8", "int4", "int2"])
def test_quanto_round_trip_and_error_grows_with_fewer_bits(scheme, world_tokenizer, tmp_path):
    from surgical.models import make_tiny_model

    model = make_tiny_model("llama", len(world_tokenizer), hidden=64, intermediate=128)
    src = tmp_path / "src"
    model.save_pretrained(src)
    world_tokenizer.save_pretrained(src)
    ids = torch.randint(3, len(world_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    ref = _logits(model, ids)
    res = run(src, tmp_path / "q", scheme, "quanto", verify=None, do_measure=False)
    assert (res.model_dir / "quantized.safetensors").exists() and not (res.model_dir / "model.safetensors").exists()
    out = _logits(load_quantized(res.model_dir), ids)
    in_memory = load_quantized(src)
    quantize_in_place(in_memory, scheme, "quanto")
    assert torch.allclose(_logits(in_memory, ids), out, atol=1e-5)
    err = (out - ref).abs().max().item()
    bound = {"int8": 0.02, "int4": 0.2, "int2": 1.0}[scheme]
    assert 0 < err < bound
    size = sum(f.stat().st_size for f in res.model_dir.glob("*.safetensors"))
    fp32 = (src / "model.safetensors").stat().st_size
    assert size < {"int8": 0.6, "int4": 0.5, "int2": 0.45}[scheme] * fp32


def test_quanto_gpt2_conv1d_is_quantized(world_tokenizer, tmp_path):
    from surgical.models import make_tiny_model

    model = make_tiny_model("gpt2", len(world_tokenizer))
    src = tmp_path / "src"
    model.save_pretrained(src)
    res = run(src, tmp_path / "q", "int4", "quanto", verify=None, do_measure=False)
    assert res.record["quantized_modules"] == 4 * 2  # c_attn, c_proj, c_fc, mlp.c_proj per layer
    ids = torch.randint(3, len(world_tokenizer), (1, 8))
    assert torch.isfinite(_logits(load_quantized(res.model_dir), ids)).all()


def test_conv1d_to_linear_is_exact(world_tokenizer):
    from surgical.models import make_tiny_model

    model = make_tiny_model("gpt2", len(world_tokenizer))
    ids = torch.randint(3, len(world_tokenizer), (2, 9))
    ref = _logits(model, ids)
    assert conv1d_to_linear(model) == 8
    assert torch.allclose(_logits(model, ids), ref, atol=1e-5)


def test_refuses_what_does_not_run_here():
    with pytest.raises(QuantizeError, match="mslk"):
        check_supported("int4", "torchao")
    with pytest.raises(QuantizeError, match="unknown scheme"):
        check_supported("int3", "quanto")
    check_supported("int2", "quanto")


def test_pure_helpers():
    assert tokens_per_s(32, 8, 2.0) == 128.0
    r = compare({"size_on_disk_bytes": 100, "tokens_per_s": 50.0}, {"size_on_disk_bytes": 25, "tokens_per_s": 100.0})
    assert r["size_ratio"] == 0.25 and r["tokens_per_s_ratio"] == 2.0 and r["peak_rss_ratio"] is None
    assert tensor_bytes(torch.zeros(3, 4)) == 48
    assert tensor_bytes(torch.zeros(3, 4, dtype=torch.int8)) == 12


@pytest.mark.slow
def test_measure_and_model_card(world_tokenizer, tmp_path):
    """Full stage with measurement subprocesses and the card (about 20 s: two fresh Python processes)."""
    from surgical.models import make_tiny_model

    src = tmp_path / "src"
    make_tiny_model("llama", len(world_tokenizer)).save_pretrained(src)
    world_tokenizer.save_pretrained(src)
    res = run(src, tmp_path / "q", "int8", "torchao", verify=lambda m, o: {"status": "ran", "verdict": "pass"},
              measure_kwargs={"new_tokens": 8, "batch": 2, "repeats": 1})
    rec = res.record
    assert rec["quantized"]["weights_memory_bytes"] < 0.6 * rec["fp32"]["weights_memory_bytes"]
    assert rec["ratios"]["size_ratio"] < 0.6 and rec["quantized"]["tokens_per_s"] > 0
    assert rec["verify"] == {"status": "ran", "verdict": "pass"}
    card = (res.model_dir / "README.md").read_text()
    assert card.startswith("---\n") and "scheme: int8" in card and "## Provenance" in card
    assert rec["provenance"]["inputs"]["model"]["sha256"]


def test_cli_quantize(tiny_model_dir, tmp_path, family):
    if family != "qwen2":
        pytest.skip("one family is enough for the CLI")
    from typer.testing import CliRunner

    from surgical.cli import app

    r = CliRunner().invoke(app, ["quantize", "--model", str(tiny_model_dir), "--scheme", "int2", "--backend",
                                 "quanto", "--out", str(tmp_path / "q"), "--no-verify", "--no-measure", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "q" / "model" / "README.md").exists()
    bad = CliRunner().invoke(app, ["quantize", "--model", str(tiny_model_dir), "--scheme", "int4", "--backend",
                                   "torchao", "--out", str(tmp_path / "q2"), "--no-verify"])
    assert bad.exit_code == 1 and "mslk" in bad.output


def test_quantize_never_overwrites_a_model_dir_it_did_not_make(world_tokenizer, tmp_path):
    from surgical.models import make_tiny_model
    from surgical.outputs import MARK, OutputError

    src = tmp_path / "src"
    make_tiny_model("llama", len(world_tokenizer)).save_pretrained(src)
    world_tokenizer.save_pretrained(src)
    user = tmp_path / "q" / "model"
    user.mkdir(parents=True)
    (user / "weights.bin").write_bytes(b"the user's")
    with pytest.raises(OutputError, match="not made by surgical"):
        run(src, tmp_path / "q", "int8", "quanto", do_measure=False)
    assert (user / "weights.bin").read_bytes() == b"the user's"
    run(src, tmp_path / "q2", "int8", "quanto", do_measure=False)
    assert (tmp_path / "q2" / "model" / MARK).exists()
    run(src, tmp_path / "q2", "int8", "quanto", do_measure=False)  # its own: replaced, nothing left beside it
    assert sorted(p.name for p in (tmp_path / "q2").iterdir()) == ["model", "quantize.json"]
