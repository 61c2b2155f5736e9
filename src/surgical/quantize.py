"""The quantize stage ("Quantization and Hardening"): weight-quantize a student, save it so it reloads,
measure it against fp32, re-run the verify battery on it, and write a model card.

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
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import provenance, read_json, write_json, write_text

SCHEMES = ("int8", "int4", "int2")
BACKENDS = ("torchao", "quanto")
WEIGHTS_FILE = "quantized.safetensors"  # not model.safetensors: a plain from_pretrained must not half-load it
QMAP_FILE = "quanto_qmap.json"


class QuantizeError(RuntimeError):
    """A quantization request that cannot be honoured here; the message says what to use instead."""


@dataclass
class QuantizeResult:
    """What ``run`` produced: the quantized model dir and the quantize.json record."""

    out_dir: Path
    model_dir: Path
    record: dict = field(default_factory=dict)


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
    from ._quiet import silence_import_noise

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
    save_file(tensors, out / WEIGHTS_FILE, metadata=metadata)
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
        file_meta = fh.metadata() or {}
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
    from .models import load_model

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


# ---------------------------------------------------------------- measurement


def dir_size_bytes(path: str | Path, suffixes: tuple[str, ...] = (".safetensors", ".bin")) -> int:
    """Bytes of the weight files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in suffixes)


def tokens_per_s(n_new_tokens: int, batch: int, wall_s: float) -> float:
    """Generated tokens per second of wall time."""
    return n_new_tokens * batch / wall_s if wall_s > 0 else float("nan")


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor, looking inside quantized tensor subclasses (torchao) at their parts."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weights_memory_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory (tied tensors once)."""
    seen, total = set(), 0
    for t in list(model.state_dict(keep_vars=True).values()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_here(model_dir: str | Path, new_tokens: int = 32, batch: int = 8, prompt_tokens: int = 8,
                 repeats: int = 3, threads: int = 1) -> dict:
    """Load ``model_dir`` and time greedy generation of exactly ``new_tokens`` tokens for ``batch`` random
    prompts (KV cache). Meant to run in a fresh process (``measure``), so peak RSS is this model's own."""
    import resource

    torch.set_num_threads(threads)
    rss_before = _rss_bytes()
    model = load_quantized(model_dir)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, prompt_tokens), generator=gen)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  attention_mask=torch.ones_like(ids), pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **kwargs)  # warm-up
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(ids, **kwargs)
            walls.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    best = min(walls)
    return {"tokens_per_s": round(tokens_per_s(new_tokens, batch, best), 1), "generate_wall_s": round(best, 4),
            "weights_memory_bytes": weights_memory_bytes(model),
            "peak_rss_bytes": peak, "peak_rss_over_imports_bytes": max(0, peak - rss_before),
            "new_tokens": new_tokens, "batch": batch, "threads": threads}


def measure(model_dir: str | Path, timeout_s: float = 300, **kw) -> dict:
    """``measure_here`` in a fresh Python process (peak memory is per process), plus size on disk."""
    args = [sys.executable, "-m", "surgical.quantize", "measure", str(model_dir), json.dumps(kw)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise QuantizeError(f"measuring {model_dir} failed: {proc.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["size_on_disk_bytes"] = dir_size_bytes(model_dir)
    return figures


def compare(fp32: dict, quantized: dict) -> dict:
    """Ratios quantized / fp32 of size, peak memory and speed (< 1 size means smaller)."""
    def ratio(key):
        a, b = fp32.get(key), quantized.get(key)
        return round(b / a, 4) if a and b is not None else None

    return {"size_ratio": ratio("size_on_disk_bytes"), "peak_rss_ratio": ratio("peak_rss_bytes"),
            "peak_rss_over_imports_ratio": ratio("peak_rss_over_imports_bytes"),
            "weights_memory_ratio": ratio("weights_memory_bytes"),
            "tokens_per_s_ratio": ratio("tokens_per_s")}


# ---------------------------------------------------------------- verify (optional) and model card


def _removed_domains(policy: str | Path | None) -> list[str]:
    if not policy:
        return []
    try:
        from .policy import load_policy

        return [f.name for f in load_policy(policy).forbidden]
    except Exception:  # the card must still be written; the verify stage reports bad policies
        return []


def model_card(record: dict) -> str:
    """An HF-style model card: YAML front matter, what was removed, the verdict, figures, provenance."""
    import yaml

    q = record
    front = {
        "library_name": "transformers",
        "tags": ["surgical", "selective-distillation", "quantized", q["scheme"], q["backend"]],
        "base_model": str(q["source"]),
        "quantization": {"scheme": q["scheme"], "backend": q["backend"], "format": q["format"],
                         "quantized_modules": q["quantized_modules"]},
        "removed_knowledge": q.get("removed_domains") or "unknown (no policy given)",
        "verification": (q["verify"].get("verdict") or q["verify"]["status"]) if q.get("verify") else "not run",
    }
    load = ("from transformers import AutoModelForCausalLM\n"
            "model = AutoModelForCausalLM.from_pretrained(DIR)" if q["format"] == "transformers-torchao" else
            "from surgical.quantize import load_quantized\nmodel = load_quantized(DIR)  # not loadable by "
            "plain from_pretrained: " + q["format"])
    f32, qq, cmp = q.get("fp32", {}), q.get("quantized", {}), q.get("ratios", {})

    def row(name, key, unit=""):
        return f"| {name} | {f32.get(key, 'n/a')}{unit} | {qq.get(key, 'n/a')}{unit} |"

    removed = ", ".join(q.get("removed_domains") or []) or "not recorded (no policy given)"
    v = q.get("verify") or {}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {Path(q['out']).name}: {q['scheme']} ({q['backend']}) quantization of `{Path(q['source']).name}`", "",
        "Made with surgical (safe, selective distillation): `surgical quantize`.", "",
        "## What was removed", "", f"Forbidden domains of the policy: **{removed}**.", "",
        "## Verification after quantization", "",
        f"Status: **{v.get('status', 'not run')}**" + (f", verdict: **{v['verdict']}**" if v.get("verdict") else ""),
        "", "Quantization can bring removed knowledge back (Zhang et al. 2024), so the verify battery is re-run "
        "on this model, not inherited from the full-precision one.", "",
        "## Figures (measured in one run)", "", "| | fp32 | quantized |", "|---|---|---|",
        row("weights on disk (bytes)", "size_on_disk_bytes"), row("peak RSS (bytes)", "peak_rss_bytes"),
        row("peak RSS over imports (bytes)", "peak_rss_over_imports_bytes"),
        row("weights in memory (bytes)", "weights_memory_bytes"), row("CPU tokens/s", "tokens_per_s"), "",
        f"Ratios (quantized / fp32): {json.dumps(cmp)}", "",
        "## How to load", "", "```python", load.replace("DIR", repr(str(q["out"]))), "```", "",
        "## Provenance", "",
        f"- source: `{q['source']}` (sha256 `{q['provenance']['inputs'].get('model', {}).get('sha256', 'n/a')}`)",
        f"- surgical {q['provenance']['surgical_version']}, torch {q['provenance']['torch_version']}, "
        f"transformers {q['provenance']['transformers_version']}",
        f"- command: `surgical quantize --model {q['source']} --scheme {q['scheme']} --backend {q['backend']} "
        f"--out {Path(q['out']).parent}`", "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the stage


def run(model: str | Path, out_dir: str | Path, scheme: str = "int8", backend: str = "torchao",
        verify: Callable[[Path, Path], dict] | None = None, policy: str | Path | None = None,
        do_measure: bool = True, mode: str = "weight_only", measure_kwargs: dict | None = None) -> QuantizeResult:
    """The quantize stage: ``out_dir/model/`` (quantized HF dir + tokenizer + README.md model card +
    quantize.json), ``out_dir/quantize.json``, and ``out_dir/verify/`` when ``verify`` is given.

    ``verify(model_dir, verify_out_dir) -> summary`` re-verifies the quantized model; the caller (the pipeline or
    the CLI) supplies it with the policy and suite it was given, so this module never imports verify and never
    verifies against a policy nobody named. Without it the record says verify was not run."""
    check_supported(scheme, backend)
    src, out_dir = Path(model), Path(out_dir)
    model_dir = out_dir / "model"
    tmp = out_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    fmt, n_mod = save_quantized(src, tmp, scheme, backend, mode)
    quantize_s = time.perf_counter() - t0
    record: dict[str, Any] = {"source": str(src), "out": str(model_dir), "scheme": scheme, "backend": backend,
                              "mode": mode, "format": format_description(fmt)["format"],
                              "reload": format_description(fmt)["reload"], "quantized_modules": n_mod,
                              "quantize_wall_s": round(quantize_s, 3),
                              "removed_domains": _removed_domains(policy)}
    write_json(tmp / "quantize.json", {"format": fmt, "scheme": scheme, "backend": backend, "mode": mode})
    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)  # appears whole or not at all
    if do_measure:
        mk = measure_kwargs or {}
        record["fp32"] = measure(src, **mk)
        record["quantized"] = measure(model_dir, **mk)
        record["ratios"] = compare(record["fp32"], record["quantized"])
    record["verify"] = (verify(model_dir, out_dir / "verify") if verify is not None
                        else {"status": "not run: no policy was given to verify against"})
    record["provenance"] = provenance({"scheme": scheme, "backend": backend, "mode": mode},
                                      inputs={"model": src, **({"policy": policy} if policy else {})})
    write_json(model_dir / "quantize.json", {"format": fmt, **record})
    write_text(model_dir / "README.md", model_card(record))
    write_json(out_dir / "quantize.json", record)
    return QuantizeResult(out_dir=out_dir, model_dir=model_dir, record=record)


def format_description(fmt: str) -> dict:
    """Human-readable reload instructions of each storage format."""
    return {
        "transformers-torchao": {"format": fmt, "reload": "AutoModelForCausalLM.from_pretrained(dir)"},
        "torchao-safetensors": {"format": fmt, "reload": "surgical.quantize.load_quantized(dir)"},
        "quanto-safetensors": {"format": fmt, "reload": "surgical.quantize.load_quantized(dir)"},
    }[fmt]


if __name__ == "__main__":  # `python -m surgical.quantize measure DIR '{json kwargs}'` (used by measure())
    if len(sys.argv) >= 3 and sys.argv[1] == "measure":
        kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
        print(json.dumps(measure_here(sys.argv[2], **kw)))
    else:
        sys.exit("usage: python -m surgical.quantize measure MODEL_DIR ['{json kwargs}']")
