"""The quantize stage ("Quantization and Hardening"): quantize a student (``formats``), measure it against fp32
(``measure``) and write a model card. Re-verifying the quantized model is the pipeline's job (its
``verify-quantized`` stage) or the CLI's: a caller may pass a ``verify`` callback, and this module never imports
verify.

Why re-verify: Zhang et al. 2024 ("Catastrophic Failure of LLM Unlearning via Quantization") showed that
4-bit quantization can bring back knowledge that unlearning had only pushed below the quantization step.
A quantized student is a new model and gets its own verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import provenance, write_json, write_text
from ..outputs import check_replaceable, fresh_tmp, replace_dir
from .formats import check_supported, save_quantized
from .measure import compare, measure


@dataclass
class QuantizeResult:
    """What ``run`` produced: the quantized model dir and the quantize.json record."""

    out_dir: Path
    model_dir: Path
    record: dict = field(default_factory=dict)


# ---------------------------------------------------------------- verify (optional) and model card


def _removed_domains(policy: str | Path | None) -> list[str]:
    if not policy:
        return []
    try:
        from ..policy import load_policy

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
        verify_note: str | None = None,
        do_measure: bool = True, mode: str = "weight_only", measure_kwargs: dict | None = None) -> QuantizeResult:
    """The quantize stage: ``out_dir/model/`` (quantized HF dir + tokenizer + README.md model card +
    quantize.json), ``out_dir/quantize.json``, and ``out_dir/verify/`` when ``verify`` is given.

    ``verify(model_dir, verify_out_dir) -> summary`` re-verifies the quantized model; the caller (the pipeline or
    the CLI) supplies it with the policy and suite it was given, so this module never imports verify and never
    verifies against a policy nobody named. Without it the record says verify was not run."""
    check_supported(scheme, backend)
    src, out_dir = Path(model), Path(out_dir)
    model_dir = out_dir / "model"
    check_replaceable(model_dir)  # before any work: never over a directory surgical did not make
    tmp = fresh_tmp(model_dir)
    t0 = time.perf_counter()
    fmt, n_mod = save_quantized(src, tmp, scheme, backend, mode)
    quantize_s = time.perf_counter() - t0
    record: dict[str, Any] = {"source": str(src), "out": str(model_dir), "scheme": scheme, "backend": backend,
                              "mode": mode, "format": format_description(fmt)["format"],
                              "reload": format_description(fmt)["reload"], "quantized_modules": n_mod,
                              "quantize_wall_s": round(quantize_s, 3),
                              "removed_domains": _removed_domains(policy)}
    write_json(tmp / "quantize.json", {"format": fmt, "scheme": scheme, "backend": backend, "mode": mode})
    replace_dir(tmp, model_dir, "quantized model")  # appears whole or not at all
    if do_measure:
        mk = measure_kwargs or {}
        record["fp32"] = measure(src, **mk)
        record["quantized"] = measure(model_dir, **mk)
        record["ratios"] = compare(record["fp32"], record["quantized"])
    if verify is not None:
        record["verify"] = verify(model_dir, out_dir / "verify")
    else:
        record["verify"] = {"status": f"not run here: {verify_note}" if verify_note
                            else "not run: no policy was given to verify against"}
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
