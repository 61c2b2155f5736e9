"""The map's math as pure functions on tensors (tested against hand computations in tests/map/test_stats.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Moments:
    """Streaming per-unit count, sum and sum of squares of activations (float64, so long streams stay exact)."""

    def __init__(self, width: int):
        self.n = 0
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.sumsq = torch.zeros(width, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Add rows of ``x`` (N, width)."""
        x = x.detach().to(torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)

    @property
    def var(self) -> torch.Tensor:
        """Population variance."""
        return (self.sumsq / max(self.n, 1) - self.mean ** 2).clamp_min(0)

    @property
    def rms(self) -> torch.Tensor:
        return (self.sumsq / max(self.n, 1)).sqrt()


def standardized_difference(mean_f: torch.Tensor, var_f: torch.Tensor, mean_r: torch.Tensor, var_r: torch.Tensor,
                            eps: float = 1e-8) -> torch.Tensor:
    """Cohen's d with the pooled (average) variance: (mean_f - mean_r) / sqrt((var_f + var_r) / 2)."""
    return (mean_f - mean_r) / torch.sqrt((var_f + var_r) / 2 + eps)


def fire_rate(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Per-unit count of rows of ``x`` (N, width) whose |activation| exceeds ``threshold`` (per unit)."""
    return (x.detach().abs() > threshold).sum(0).to(torch.float64)


def attribution_effect(grad: torch.Tensor, act: torch.Tensor, patch: torch.Tensor | float) -> torch.Tensor:
    """First-order estimate of the change in the loss when each unit is set to ``patch`` at every position.

    Attribution patching (Nanda 2023; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated
    Circuit Discovery"): dL ~= sum over positions of dL/da * (a_patched - a). ``grad`` and ``act`` are
    (..., width); the result is (width,), summed over every leading dimension. Positions that no scored token
    depends on have zero gradient, so padding needs no mask.
    """
    delta = (patch - act) if isinstance(patch, float) else (patch.to(act.dtype) - act)
    return (grad * delta).reshape(-1, act.shape[-1]).sum(0)


def group_sum(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum the last dimension in ``groups`` equal contiguous blocks (head_dim columns -> one head)."""
    return x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups).sum(-1)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over scored tokens (labels != -100), and their count."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, int((shift_labels != -100).sum())


def token_damage_sum(logits: torch.Tensor, labels: torch.Tensor, metric: str = "loss") -> tuple[torch.Tensor, int]:
    """Summed per-token "damage" over scored tokens (higher = worse) and their count.

    ``loss``: next-token cross-entropy. ``logodds``: minus the log-odds of the correct token,
    -(z_y - logsumexp_{j != y} z_j). Cross-entropy saturates on a confident model (its gradient, 1 - p, vanishes as
    p -> 1, so a first-order estimate sees almost nothing); the log-odds does not (its gradient wrt z_y is 1),
    which is why attribution patching is usually run on logit differences (Nanda 2023).
    """
    if metric == "loss":
        return token_loss_sum(logits, labels)
    if metric != "logodds":
        raise ValueError(f"unknown metric {metric!r}; expected 'loss' or 'logodds'")
    z = logits[:, :-1].float()
    y = labels[:, 1:]
    mask = y != -100
    z, y = z[mask], y[mask]
    z_y = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf")).logsumexp(1)
    return (others - z_y).sum(), int(mask.sum())


def unit_score(attr_forget: torch.Tensor, attr_retain: torch.Tensor) -> torch.Tensor:
    """Forget-specificity of a unit: the estimated rise of the forget loss minus that of the retain loss when the
    unit is mean-ablated (nats per token). High = removing it hurts forget, not retain."""
    return attr_forget - attr_retain


def separability(mean_f: torch.Tensor, var_f: torch.Tensor, mean_r: torch.Tensor, var_r: torch.Tensor,
                 eps: float = 1e-8) -> float:
    """How far apart forget and retain representations lie: the distance between the class means over the
    root mean pooled per-dimension variance (a d' that ignores correlations)."""
    pooled = ((var_f + var_r) / 2).mean()
    return float(torch.linalg.vector_norm(mean_f - mean_r) / torch.sqrt(pooled + eps))


def spearman(x, y) -> float:
    """Spearman rank correlation (nan when fewer than 3 points or a constant input)."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    rho = spearmanr(list(map(float, x)), list(map(float, y))).statistic
    return float(rho)


def drop(base: float, after: float) -> float:
    """Accuracy drop in points of accuracy (fractions): positive when ``after`` is worse."""
    return base - after


def specificity_ratio(forget_drop_map: float, retain_drop_map: float, forget_drop_rand: float,
                      retain_drop_rand: float, floor: float) -> float:
    """(forget drop / retain drop) of the map's ablation over the same ratio for the random control.

    Each drop is floored at ``floor`` (one evaluation problem's worth of accuracy) so that a zero drop gives a
    finite, conservative ratio instead of a division by zero.
    """
    def ratio(f: float, r: float) -> float:
        return max(f, floor) / max(r, floor)

    value = ratio(forget_drop_map, retain_drop_map) / ratio(forget_drop_rand, retain_drop_rand)
    return value if math.isfinite(value) else float("nan")
