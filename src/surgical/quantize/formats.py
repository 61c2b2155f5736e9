"""Quantization backends and storage formats: quantize a model in place, save it so it reloads, load it back.

Why re-verify: Zhang et al. 2024 ("Catastrophic Failure of LLM Unlearning via Quantization") showed that
4-bit quantization can bring back knowledge that unlearning had only pushed below the quantization step.
A quantized student is a new model and gets its own verdict.

Backends (imported lazily, only here, because importing them prints noise and they are optional):

=================  ======  =========================  ============================================
backend            scheme  on disk                    reload
=================  ======  =========================  ============================================
torchao            int8    model.safetensors (int8)   ``AutoModelForCausalLM.from_pretrained(dir)``
                           + quantization_config in   (plain transformers; format
                           config.json                ``transformers-torchao``)
torchao (GPT-2)    int8    quantized.safetensors      ``load_quantized(dir)`` (format
                           (torchao's flattened int8  ``torchao-safetensors``): GPT-2's Conv1D layers
                           tensors + metadata)        are turned into nn.Linear first, which
                                                      transformers' torchao loader cannot do
quanto             int8/4/2 quantized.safetensors     ``load_quantized(dir)`` (format
                           (quanto's packed state     ``quanto-safetensors``): transformers does not
                           dict) + quanto_qmap.json   serialise quanto models, so we save quanto's
                                                      own state dict and ``requantize`` on load
=================  ======  =========================  ============================================

torchao int4/int2 are refused with a clear error: its CPU int4 kernel needs the ``mslk`` package.
Output embeddings (the LM head, tied to the input embeddings in most small models) stay fp32 in every
backend, as in transformers' and quanto's defaults.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..io import from_one_metadata_key, one_metadata_key, read_json, write_json

SCHEMES = ("int8", "int4", "int2")
BACKENDS = ("torchao", "quanto")
WEIGHTS_FILE = "quantized.safetensors"  # not model.safetensors: a plain from_pretrained must not half-load it
QMAP_FILE = "quanto_qmap.json"


class QuantizeError(RuntimeError):
    """A quantization request that cannot be honoured here; the message says what to use instead."""


# ---------------------------------------------------------------- backends


def check_supported(scheme: str, backend: str) -> None:
    """Raise QuantizeError for combinations that do not run on this CPU."""
    if scheme not in SCHEMES:
        raise QuantizeError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if backend not in BACKENDS:
        raise QuantizeError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "torchao" and scheme != "int8":
        raise QuantizeError(f"torchao {scheme} needs the mslk package (or a GPU) here; use --backend quanto "
                            f"for {scheme} on the CPU")


def _silence() -> None:
    from .._quiet import silence_import_noise

    silence_import_noise()


def _torchao_config(mode: str = "weight_only"):
    _silence()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if mode == "weight_only":
        return Int8WeightOnlyConfig()
    if mode == "dynamic_activation":
        return Int8DynamicActivationInt8WeightConfig()
    raise QuantizeError(f"unknown torchao mode {mode!r}; expected weight_only or dynamic_activation")


def _quanto_qtype(scheme: str):
    _silence()
    from optimum.quanto import qint2, qint4, qint8

    return {"int8": qint8, "int4": qint4, "int2": qint2}[scheme]


def has_conv1d(model: nn.Module) -> bool:
    """Whether the model uses transformers' Conv1D (GPT-2), which neither backend quantizes."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers Conv1D (weight stored (in, out)) by an equivalent nn.Linear, in place.
    Both backends quantize nn.Linear only; GPT-2 keeps all its projections in Conv1D. Returns the count."""
    from transformers.pytorch_utils import Conv1D

    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, conv in targets:
        n_in, n_out = conv.weight.shape
        lin = nn.Linear(n_in, n_out, bias=conv.bias is not None, dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, lin)
    return len(targets)


def output_embedding_names(model: nn.Module) -> list[str]:
    """Module names of the output embeddings (LM head), which stay unquantized."""
    head = model.get_output_embeddings()
    return [name for name, m in model.named_modules() if m is head] if head is not None else []


def _is_quantized_module(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return type(m).__name__.startswith("QLinear") or (w is not None and type(w).__name__ not in ("Parameter", "Tensor"))


def count_quantized_modules(model: nn.Module) -> int:
    """Modules whose weight is a quantized tensor (torchao) or that are quanto QLinear layers."""
    return sum(1 for m in model.modules() if _is_quantized_module(m))


def quantize_in_place(model: nn.Module, scheme: str, backend: str, mode: str = "weight_only") -> int:
    """Weight-quantize every nn.Linear except the output embeddings, in place. Returns how many modules
    were quantized. GPT-2's Conv1D layers are converted to nn.Linear first."""
    check_supported(scheme, backend)
    conv1d_to_linear(model)
    skip = set(output_embedding_names(model))
    if backend == "torchao":
        from torchao.quantization import quantize_

        cfg = _torchao_config(mode)
        quantize_(model, cfg, filter_fn=lambda m, name: isinstance(m, nn.Linear) and name not in skip)
    else:
        from optimum.quanto import freeze, quantize

        quantize(model, weights=_quanto_qtype(scheme), exclude=sorted(skip) or None)
        freeze(model)
    n = count_quantized_modules(model)
    if n == 0:
        raise QuantizeError("no layer was quantized (the model has no nn.Linear outside its LM head)")
    return n


# ---------------------------------------------------------------- save and reload

def _dedup_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier one (tied embeddings); returns (state, aliases)."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for k, v in state.items():
        if type(v) not in (torch.Tensor, nn.Parameter):  # quantized subclasses own their storage
            out[k] = v
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype)
        if key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        out[k] = v.contiguous()
    return out, aliases


def _save_torchao_transformers(src: Path, out: Path, mode: str) -> int:
    """torchao int8 through transformers' TorchAoConfig: the only path that plain from_pretrained reloads."""
    _silence()
    from transformers import AutoModelForCausalLM, TorchAoConfig

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                 quantization_config=TorchAoConfig(_torchao_config(mode)))
    n = count_quantized_modules(model)
    model.save_pretrained(out, safe_serialization=True)
    return n


def _save_torchao_safetensors(model: nn.Module, out: Path, mode: str) -> int:
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    n = quantize_in_place(model, "int8", "torchao", mode)
    state, aliases = _dedup_shared(model.state_dict())
    tensors, metadata = flatten_tensor_state_dict(state)
    metadata = {**metadata, "surgical_aliases": json.dumps(aliases)}
    save_file(tensors, out / WEIGHTS_FILE, metadata=one_metadata_key(metadata))
    model.config.save_pretrained(out)
    return n


def _save_quanto(model: nn.Module, out: Path, scheme: str) -> int:
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    n = quantize_in_place(model, scheme, "quanto")
    state, aliases = _dedup_shared(model.state_dict())
    save_file(state, out / WEIGHTS_FILE, metadata={"surgical_aliases": json.dumps(aliases)})
    write_json(out / QMAP_FILE, quantization_map(model))
    model.config.save_pretrained(out)
    return n


def _skeleton(model_dir: Path) -> nn.Module:
    """A real-initialised model of the saved config (not meta: non-persistent buffers such as rotary
    frequencies must be computed, not left empty), with Conv1D turned into Linear like at save time."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    conv1d_to_linear(model)
    return model.eval()


def _check_complete(model: nn.Module, loaded: set[str], aliases: dict[str, str], where: Path) -> None:
    missing = [k for k in model.state_dict() if k not in loaded and k not in aliases
               and not any(k.startswith(p) for p in _quanto_aux_prefixes(loaded))]
    if missing:
        raise QuantizeError(f"{where}: {len(missing)} tensors missing from {WEIGHTS_FILE}, e.g. {missing[:3]}")


def _quanto_aux_prefixes(loaded: set[str]) -> list[str]:
    # quanto's packed weights appear as "<name>.weight._data" etc.; the skeleton names them "<name>.weight".
    return sorted({k.split(".weight.")[0] + ".weight" for k in loaded if ".weight." in k})


def load_quantized(model_dir: str | Path, device: str = "cpu") -> nn.Module:
    """Load a model written by this stage, whatever its format (see the module docstring); an unquantized
    HF dir loads too. The returned model is in eval mode."""
    model_dir = Path(model_dir)
    meta = read_json(model_dir / "quantize.json") if (model_dir / "quantize.json").exists() else {}
    fmt = meta.get("format", "transformers")
    if fmt in ("transformers", "transformers-torchao"):
        _silence()
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(model_dir / WEIGHTS_FILE), framework="pt") as fh:
        file_meta = from_one_metadata_key(fh.metadata() or {})
    aliases = json.loads(file_meta.get("surgical_aliases", "{}"))
    tensors = load_file(model_dir / WEIGHTS_FILE)
    model = _skeleton(model_dir)
    if fmt == "quanto-safetensors":
        _silence()
        from optimum.quanto import requantize

        requantize(model, tensors, read_json(model_dir / QMAP_FILE), device=torch.device("cpu"))
        _check_complete(model, set(tensors), aliases, model_dir)
    elif fmt == "torchao-safetensors":
        _silence()
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        state, leftover = unflatten_tensor_state_dict(tensors, file_meta)
        state.update(leftover)
        result = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in result.missing_keys if k not in aliases]
        if missing or result.unexpected_keys:
            raise QuantizeError(f"{model_dir}: weights do not match the config: missing {missing[:3]}, "
                                f"unexpected {result.unexpected_keys[:3]}")
    else:
        raise QuantizeError(f"{model_dir}/quantize.json: unknown format {fmt!r}")
    model.tie_weights()
    return model.to(device).eval()


def save_quantized(src: str | Path, out: str | Path, scheme: str, backend: str,
                   mode: str = "weight_only") -> tuple[str, int]:
    """Quantize the HF model dir ``src`` into ``out`` (model files + tokenizer). Returns (format, number of
    quantized modules)."""
    from ..models import load_model

    check_supported(scheme, backend)
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(src)
    if backend == "torchao" and not has_conv1d(model):
        fmt, n = "transformers-torchao", _save_torchao_transformers(src, out, mode)
    elif backend == "torchao":
        fmt, n = "torchao-safetensors", _save_torchao_safetensors(model, out, mode)
    else:
        fmt, n = "quanto-safetensors", _save_quanto(model, out, scheme)
    _copy_tokenizer(src, out)
    return fmt, n


def _copy_tokenizer(src: Path, out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "vocab.json", "merges.txt", "tokenizer.model"):
        if (src / name).exists() and not (out / name).exists():
            shutil.copy2(src / name, out / name)


