"""The quantization attack: reload the model at int8 and int4 and rerun the knowledge probes.

Zhang et al. 2024 ("Catastrophic Failure of LLM Unlearning via Quantization") found that 4-bit
quantization brings unlearned knowledge back (21% -> 83% on their benchmark): unlearning by small weight
updates can sit below the quantization step. The backends are imported here only (lazily), so the rest
of surgical never loads torchao or quanto. On this CPU, quanto does int8 and int4 (weights only, in
place, not serialisable); torchao does int8 (its int4 kernel needs the ``mslk`` package).
"""

from __future__ import annotations


class QuantizationUnavailable(RuntimeError):
    """The backend cannot quantize at this precision here."""


def quantize_copy(model, scheme: str, backend: str = "quanto"):
    """A weight-quantized deep copy of ``model``, quantized exactly as the quantize stage ships a model
    (``surgical.quantize.quantize_in_place``: every nn.Linear, GPT-2's Conv1D layers converted to nn.Linear first,
    the output embeddings left in float), so the attack measures the model a user would get. Returns (model,
    number of quantized modules)."""
    from ..models import float_copy
    from ..quantize import QuantizeError, quantize_in_place

    work = float_copy(model).eval()
    if backend not in ("quanto", "torchao"):
        raise ValueError(f"unknown quantization backend {backend!r}")
    try:
        n = quantize_in_place(work, scheme, backend)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise QuantizationUnavailable(f"{backend} is not installed ({exc})") from None
    except QuantizeError as exc:
        raise QuantizationUnavailable(str(exc)) from None
    return work, n


def quantization_attack(model, tokenizer, suite, forget_domains, retain_domains, cfg, baseline: dict) -> dict:
    """Knowledge probes (exact match and MC) of each quantized copy, and the gap to ``baseline`` (the
    full-precision probes on the same items): ``forget_gap`` > 0 means quantization brought knowledge back."""
    from .jailbreaks import summarise_sides
    from .probes import knowledge_probes

    out = {"backend": cfg.quant_backend, "schemes": {}}
    from ..quantize import count_quantized_modules

    # Not ``model.is_quantized``: transformers sets it on a GGUF model it has dequantized to float, and the
    # attack would then be skipped on a float model. Count modules whose weights really are quantized.
    if count_quantized_modules(model) > 0:
        # The model under test is itself quantized (surgical quantize's output): the knowledge probes above
        # already measure it, and quantizing quantized weights again is not supported by the backends.
        out["skipped"] = "the model is already quantized; its own probes are the quantized figures"
        return out
    base = summarise_sides({"forget": {d: baseline[d] for d in forget_domains},
                            "retain": {d: baseline[d] for d in retain_domains}})
    for scheme in cfg.quant_schemes:
        try:
            qmodel, n_mod = quantize_copy(model, scheme, cfg.quant_backend)
        except QuantizationUnavailable as exc:
            out["schemes"][scheme] = {"error": str(exc)}
            continue
        kw = dict(split=cfg.split, n_items=cfg.n_items, n_boot=cfg.bootstrap_samples, seed=cfg.seed,
                  batch_size=cfg.batch_size, ppl=False)
        forget = knowledge_probes(qmodel, tokenizer, suite, forget_domains, **kw)
        retain = knowledge_probes(qmodel, tokenizer, suite, retain_domains, mc=False, **kw)
        summary = summarise_sides({"forget": forget, "retain": retain})
        out["schemes"][scheme] = {"quantized_modules": n_mod, "by_domain": {"forget": forget, "retain": retain}, **summary,
                                  "forget_gap": summary["forget"] - base["forget"],
                                  "forget_mc_gap": summary["forget_mc"] - base["forget_mc"],
                                  "retain_gap": summary["retain"] - base["retain"]}
        del qmodel
    return out
