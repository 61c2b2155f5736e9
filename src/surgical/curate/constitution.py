"""Constitutional rewriting of teacher trajectories, step by step, with a per-token distillation mask.

A constitution is a list of named rules (regex, keyword or classifier checks) applied to each reasoning
step. A step that breaks a rule is replaced by a "reject and re-calculate" step: the refusal marker
followed by a derivation that uses only allowed operations where one exists (``7*3+0=21`` becomes
``[refuse] 7+7+7+0=21``), or by the marker alone otherwise, which also ends the trajectory. This is the
seed's "Constitutional Distillation", with rules in the spirit of Constitutional AI (Bai et al., 2022)
applied as hard rewrites of the distillation targets instead of as critiques.

``replaced_spans`` hold ``[char_start, char_end, rule]`` offsets into the rewritten completion; the
distill stage trains there with cross-entropy on the replacement instead of imitating the teacher's
logits. ``token_kd_mask`` turns the spans into a per-token 0/1 list aligned with ``encode_example``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ..config_base import Section


class Rule(Section):
    """One constitutional rule: a check on a step and what replaces a step that breaks it."""

    name: str = Field(..., description="Identifier reported in replaced_spans and the per-rule counts.")
    kind: Literal["regex", "keyword", "classifier"] = Field("regex", description="How the step is checked.")
    pattern: str = Field("", description="Case-insensitive regex (kind=regex).")
    keywords: list[str] = Field(default_factory=list, description="Case-insensitive substrings (kind=keyword).")
    domain: str = Field("", description="Forbidden domain of the policy whose classifier head scores the step "
                        "(kind=classifier).")
    threshold: float = Field(0.5, ge=0, le=1, description="Classifier probability at which the rule fires.")
    rewrite: Literal["refuse", "repeated_addition", "repeated_subtraction"] = Field(
        "refuse", description="Derivation after the marker: repeated addition for a product, repeated "
        "subtraction for a quotient, or none (a plain refusal that ends the trajectory).")

    @field_validator("pattern")
    @classmethod
    def _compile(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"pattern {v!r} does not compile: {exc}") from None
        return v


class Constitution(Section):
    """Named rules applied to every reasoning step of a trajectory."""

    name: str = "constitution"
    step_separator: str = Field("; ", description="Literal text between two reasoning steps.")
    refusal_marker: str = Field("[refuse]", description="Text that opens every replaced step.")
    max_repeat: int = Field(9, ge=1, description="Most terms a repeated-addition/subtraction derivation may have; "
                            "beyond it the step is a plain refusal.")
    rules: list[Rule] = Field(default_factory=list)


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution YAML; raises ConfigError naming every bad field path."""
    from ..config import load_yaml_model

    return load_yaml_model(path, Constitution)


def demo_constitution_path() -> Path:
    """The packaged copy of configs/constitution-demo.yaml."""
    return Path(__file__).resolve().parent.parent / "data" / "constitution-demo.yaml"


# ---------------------------------------------------------------- allowed-operation derivations (pure)

_PRODUCT = re.compile(r"^(\d+)\s*[*×]\s*(\d+)(?:\s*\+\s*(\d+))?\s*=\s*-?\d+$")
_QUOTIENT = re.compile(r"^(\d+)\s*[/÷]\s*(\d+)\s*=\s*\d+(?:\s*r\s*\d+)?$")


def repeated_addition(step: str, max_repeat: int) -> str | None:
    """``a*b(+c)=r`` as a sum of ``b`` copies of ``a`` (or ``a`` copies of ``b``) plus ``c``, with the true
    result; None when the step is not a product or needs more than ``max_repeat`` terms."""
    m = _PRODUCT.match(step.strip())
    if not m:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    carry = m.group(3)
    if b > max_repeat and a <= max_repeat:
        a, b = b, a
    if b > max_repeat:
        return None
    terms = [str(a)] * b or ["0"]
    if carry is not None:
        terms.append(carry)
    return "+".join(terms) + f"={a * b + int(carry or 0)}"


def repeated_subtraction(step: str, max_repeat: int) -> str | None:
    """``n/d=q r`` as ``n-d-d-...=r q<count>``; None when not a quotient, ``d`` is 0, or q > max_repeat."""
    m = _QUOTIENT.match(step.strip())
    if not m:
        return None
    n, d = int(m.group(1)), int(m.group(2))
    if d == 0 or n // d > max_repeat:
        return None
    q, r = divmod(n, d)
    return f"{n}" + f"-{d}" * q + f"={r} q{q}"


REWRITERS: dict[str, Callable[[str, int], str | None]] = {
    "refuse": lambda step, max_repeat: None,
    "repeated_addition": repeated_addition,
    "repeated_subtraction": repeated_subtraction,
}


# ---------------------------------------------------------------- applying a constitution


def rule_fires(rule: Rule, step: str, classifier=None) -> bool:
    """Whether ``step`` breaks ``rule``. Classifier rules need a PolicyClassifier-like object."""
    if rule.kind == "regex":
        return bool(rule.pattern) and re.search(rule.pattern, step, re.IGNORECASE) is not None
    if rule.kind == "keyword":
        low = step.lower()
        return any(k.lower() in low for k in rule.keywords if k)
    if classifier is None:
        raise ValueError(f"rule {rule.name!r} is a classifier rule but no classifier was given")
    return float(classifier.predict_proba([step])[rule.domain][0]) >= rule.threshold


def apply_constitution(completion: str, constitution: Constitution, classifier=None) -> tuple[str, list[list], list[str]]:
    """Rewrite the steps of ``completion`` that break a rule.

    Returns ``(new_completion, replaced_spans, fired)``: spans ``[start, end, rule]`` in the new text and
    the rule of each replaced step, in order. A plain refusal ends the completion."""
    sep = constitution.step_separator
    pieces = completion.split(sep) if sep else [completion]
    out, spans, fired = "", [], []
    for i, piece in enumerate(pieces):
        if i:
            out += sep
        body = piece.strip()
        lead = piece[: len(piece) - len(piece.lstrip())]
        rule = next((r for r in constitution.rules if body and rule_fires(r, body, classifier)), None)
        if rule is None:
            out += piece
            continue
        derivation = REWRITERS[rule.rewrite](body, constitution.max_repeat)
        replacement = constitution.refusal_marker + (f" {derivation}" if derivation else "")
        out += lead
        spans.append([len(out), len(out) + len(replacement), rule.name])
        out += replacement
        fired.append(rule.name)
        if derivation is None:  # no allowed derivation: refuse and stop here
            break
    return out, spans, fired


def token_kd_mask(tokenizer, prompt: str, completion: str, replaced_spans: Sequence[Sequence]) -> list[int]:
    """Per-token mask aligned with ``encode_example(tokenizer, prompt, completion)``'s ``input_ids``
    (BOS prompt completion EOS): 1 = imitate the teacher's logits, 0 = a token that overlaps a replaced
    span (trained with cross-entropy on the replacement). Prompt tokens are 1 (their labels are -100
    anyway); EOS is 0 when the completion ends inside a replaced span (a refusal's end)."""
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(int(s), int(e)) for s, e, *_ in replaced_spans]
    mask = [1] * len(p_ids)
    for start, end in enc["offset_mapping"]:
        mask.append(0 if any(start < se and end > ss for ss, se in spans) else 1)
    mask.append(0 if any(se >= len(completion) for _, se in spans) else 1)
    return mask
