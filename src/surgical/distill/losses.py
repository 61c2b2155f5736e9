"""The distill stage's math as pure functions on tensors.

Every divergence is computed per token from two *log-distributions* over the same buckets (the full
vocabulary, or the teacher's top-k tokens plus one "other" bucket) and then reduced over the tokens a
mask selects. Conventions:

* ``*_logits`` have shape ``[..., V]``; masks have the leading shape ``[...]`` and are 1 where a token
  counts. A mask that selects nothing gives a loss of 0 (the denominator is clamped to 1, as in TRL's
  ``generalized_jsd_loss``).
* The temperature ``T`` divides both sets of logits; following Hinton et al. (2015) the KD terms are
  multiplied by ``T**2`` so their gradient scale does not shrink as ``T`` grows.
* ``reduction``: ``"mean"`` (over masked tokens), ``"sum"``, or ``"none"`` (per token, zeros where masked).

Sources: forward/reverse KL for sequence KD (Kim & Rush 2016; Gu et al. 2024, MiniLLM), the generalised
JSD(beta) of GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models"), whose convention we
keep: beta = 0 is forward KL(teacher || student), beta = 1 is reverse KL(student || teacher).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Reduction = str  # "mean" | "sum" | "none"
_FLOOR = -1e4


# ---------------------------------------------------------------- divergences between log-distributions


def _kl_from_logp(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities; buckets with p = 0 contribute 0 (even where q = 0).
    The -inf entries are replaced before the product so that no 0 * inf reaches the backward pass."""
    p = logp.exp()
    pos = p > 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return (p * (torch.where(pos, logp, zero) - torch.where(pos, logq, zero))).sum(-1)


def jsd_from_logp(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD(beta) per row, in GKD's (and TRL's ``generalized_jsd_loss``) parameterisation:
    m = beta*t + (1 - beta)*s and JSD = beta*KL(t || m) + (1 - beta)*KL(s || m) for 0 < beta < 1;
    beta = 0 is defined as forward KL(t || s) and beta = 1 as reverse KL(s || t)."""
    if beta <= 0:
        return _kl_from_logp(teacher_logp, student_logp)
    if beta >= 1:
        return _kl_from_logp(student_logp, teacher_logp)
    log_m = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log1p(-beta)]), dim=0)
    return beta * _kl_from_logp(teacher_logp, log_m) + (1 - beta) * _kl_from_logp(student_logp, log_m)


def reduce_masked(per_token: torch.Tensor, mask: torch.Tensor | None, reduction: Reduction = "mean") -> torch.Tensor:
    """Apply ``mask`` and reduce: mean over selected tokens (0 when none), sum, or per token."""
    if mask is None:
        mask = torch.ones_like(per_token)
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if reduction == "none":
        return masked
    if reduction == "sum":
        return masked.sum()
    if reduction == "mean":
        return masked.sum() / mask.sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}; expected mean, sum or none")


# ---------------------------------------------------------------- KD losses on full logits


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KD loss between full-vocabulary logits: ``kind`` = forward_kl (KL(t||s)), reverse_kl (KL(s||t)) or
    jsd (generalised JSD(beta)); scaled by ``temperature**2``."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return reduce_masked(_divergence(t, s, kind, beta) * temperature**2, mask, reduction)


def _divergence(teacher_logp, student_logp, kind: str, beta: float) -> torch.Tensor:
    if kind == "forward_kl":
        return jsd_from_logp(teacher_logp, student_logp, 0.0)
    if kind == "reverse_kl":
        return jsd_from_logp(teacher_logp, student_logp, 1.0)
    if kind == "jsd":
        return jsd_from_logp(teacher_logp, student_logp, beta)
    raise ValueError(f"unknown KD loss {kind!r}; expected forward_kl, reverse_kl or jsd")


# ---------------------------------------------------------------- KD losses against a top-k cache


def topk_bucket_logp(logits: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``logits`` (full vocabulary) collapsed onto k+1 buckets: the k tokens in
    ``indices`` and one "other" bucket holding the rest of the mass. Shape ``[..., k+1]``."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    top = logp.gather(-1, indices.long())
    # A finite floor instead of -inf keeps logsumexp's gradient finite when k = V (no "other" mass):
    # the bucket then holds ~exp(-1e4) = 0, exactly the right probability in float32.
    rest = logp.scatter(-1, indices.long(), _FLOOR)
    other = torch.logsumexp(rest, dim=-1, keepdim=True)
    return torch.cat([top, other], dim=-1)


def teacher_topk_logp(values: torch.Tensor, other_lse: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's k+1 bucket log-probabilities from cached top-k logits ``values [..., k]`` and
    ``other_lse [...]`` = logsumexp of the remaining logits divided by ``temperature`` (-inf when k = V)."""
    scaled = torch.cat([values.float() / temperature, other_lse.float().unsqueeze(-1)], dim=-1)
    return F.log_softmax(scaled, dim=-1)


def kd_loss_topk(
    student_logits: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_other_lse: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KD loss against a cached teacher (top-k logits + an "other" bucket). Both distributions are
    compared on the same k+1 buckets, so the result is a proper divergence; with k = V it equals
    ``kd_loss`` on the full logits."""
    s = topk_bucket_logp(student_logits, teacher_indices, temperature)
    t = teacher_topk_logp(teacher_values, teacher_other_lse, temperature)
    return reduce_masked(_divergence(t, s, kind, beta) * temperature**2, mask, reduction)


def topk_cache_entry(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0):
    """What the cache stores per token: top-k logits (values, indices) and the logsumexp of the remaining
    logits / temperature (the "other" bucket; -inf when k = V)."""
    values, indices = teacher_logits.float().topk(k, dim=-1)
    rest = (teacher_logits.float() / temperature).scatter(-1, indices, float("-inf"))
    return values, indices, torch.logsumexp(rest, dim=-1)


# ---------------------------------------------------------------- CE, alignment and penalties


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
              reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy of ``targets [...]`` under ``logits [..., V]`` on masked tokens."""
    per_token = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten().long().clamp_min(0),
                                reduction="none").view(targets.shape)
    return reduce_masked(per_token, mask, reduction)


def hidden_mse(student_hidden: torch.Tensor, target_hidden: torch.Tensor, mask: torch.Tensor | None = None,
               reduction: Reduction = "mean") -> torch.Tensor:
    """Mean squared error per token (averaged over the hidden dimension) between two ``[..., d]`` tensors."""
    per_token = (student_hidden.float() - target_hidden.float()).pow(2).mean(-1)
    return reduce_masked(per_token, mask, reduction)


def away_hinge(divergence: torch.Tensor, margin: float, mask: torch.Tensor | None = None,
               reduction: Reduction = "mean") -> torch.Tensor:
    """Safety Divergence Penalty, form ``away``: relu(margin - KL(teacher || student)) per forbidden token,
    from the per-token divergence (``kd_loss(..., kind="forward_kl", reduction="none")``). Zero once the
    student is at least ``margin`` nats away from the teacher on that token."""
    return reduce_masked(F.relu(margin - divergence), mask, reduction)


def maxent_penalty(student_logits: torch.Tensor, mask: torch.Tensor | None = None,
                   reduction: Reduction = "mean") -> torch.Tensor:
    """Safety Divergence Penalty, form ``maxent``: KL(student || uniform) = log V - H(student) per token,
    which is 0 exactly at the uniform distribution (the MaxEnt unlearning objective)."""
    logp = F.log_softmax(student_logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return reduce_masked(math.log(student_logits.shape[-1]) - entropy, mask, reduction)


def rmu_forget_loss(student_hidden: torch.Tensor, direction: torch.Tensor, steering_coeff: float,
                    mask: torch.Tensor | None = None, reduction: Reduction = "mean") -> torch.Tensor:
    """Safety Divergence Penalty, form ``representation`` (forget half of RMU, Li et al. 2024, "The WMDP
    Benchmark"): MSE between the hidden state and ``steering_coeff * direction`` (a fixed unit vector)."""
    target = (steering_coeff * direction.float()).expand_as(student_hidden)
    return hidden_mse(student_hidden, target, mask, reduction)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Weight multiplier of a penalty under a linear warm-up: 0 -> 1 over ``warmup_steps`` steps."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)
