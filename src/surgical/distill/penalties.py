"""The Safety Divergence Penalty: what the student is pushed toward on forbidden batches.

Forms (selectable and combinable; each returns one scalar term):

* ``away``: hinge on divergence, relu(margin - KL(teacher || student)) on forbidden answer tokens: the student
  is penalised while it is closer than ``margin`` nats to the teacher there (gradient-difference-style
  unlearning, bounded so it cannot blow up as in plain gradient ascent).
* ``maxent``: KL(student || uniform) on forbidden answer tokens (MaxEnt unlearning).
* ``refusal``: CE toward a refusal continuation of the forbidden prompt.
* ``representation``: RMU (Li et al. 2024, "The WMDP Benchmark", Sec. 5): at the mapped layers the
  student's hidden states on forbidden inputs are pushed toward ``c * u`` (u a fixed random unit vector);
  on gold inputs they are kept close to the teacher's through a learned projection (the retain half).
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import away_hinge, hidden_mse, masked_ce, maxent_penalty, reduce_masked, rmu_forget_loss


def random_directions(layers: list[int], width: int, seed: int) -> dict[int, torch.Tensor]:
    """One fixed random unit vector per student layer (RMU's control vector u)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        u = torch.rand(width, generator=gen)  # RMU samples u uniformly in [0, 1) and normalises it
        out[layer] = u / u.norm()
    return out


def away_term(forward_kl_per_token: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    return away_hinge(forward_kl_per_token, margin, mask)


def maxent_term(student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return maxent_penalty(student_logits, mask)


ACTIVE_TOL = 1e-3  # nats (or squared units for RMU): a token whose term is below this gives it no real gradient


def active_fraction(per_token: torch.Tensor, mask: torch.Tensor, tol: float = ACTIVE_TOL) -> float:
    """The fraction of ``mask``'s tokens whose per-token term exceeds ``tol`` (0 when the mask is empty)."""
    mask = mask.bool()
    n = int(mask.sum())
    return float(((per_token.detach() > tol) & mask).sum()) / n if n else 0.0


def refusal_term(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor, activity_tol: float | None = None):
    """CE of the refusal continuation (labels already mask the prompt); with ``activity_tol``, also the
    fraction of refusal tokens whose CE exceeds it: ``(ce, fraction)``."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:]
    mask = (targets != -100).long()
    if activity_tol is None:
        return masked_ce(logits, targets, mask)
    per = masked_ce(logits, targets, mask, reduction="none")
    return reduce_masked(per, mask), active_fraction(per, mask, activity_tol)


def representation_terms(student_hidden: dict[int, torch.Tensor], teacher_hidden: dict[int, torch.Tensor],
                         pairs: list[tuple[int, int]], projections: nn.ModuleDict | None,
                         directions: dict[int, torch.Tensor], steering_coeff: float,
                         forget_mask: torch.Tensor, retain_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget, retain) RMU terms averaged over the (teacher layer, student layer) ``pairs``."""
    forget, retain = 0.0, 0.0
    for t_layer, s_layer in pairs:
        h = student_hidden[s_layer]
        forget = forget + rmu_forget_loss(h, directions[s_layer].to(h.device), steering_coeff, forget_mask)
        if teacher_hidden:
            proj = projections[str(t_layer)] if projections is not None else nn.Identity()
            retain = retain + hidden_mse(proj(h), teacher_hidden[t_layer], retain_mask)
    n = max(1, len(pairs))
    return forget / n, (retain / n if torch.is_tensor(retain) else torch.zeros(()))
