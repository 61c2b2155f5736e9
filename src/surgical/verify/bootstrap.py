"""Bootstrap confidence intervals and small pure metrics used by every probe."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``values`` with a percentile-bootstrap ``level`` CI (Efron & Tibshirani 1993, ch. 13).

    Resamples items with replacement ``n_boot`` times. scipy.stats.bootstrap does the same but warns and
    returns NaN on constant samples (an accuracy of exactly 0 or 1, common here), so the few lines are
    written out. Returns ``{"value", "ci_low", "ci_high", "n"}``; an empty sample gives NaNs.
    """
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return {"value": float(x.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(n)}


def steps_to_fraction(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """First step of ``curve`` [(step, accuracy), ...] at which accuracy reaches ``target``; None if never."""
    for step, acc in sorted(curve):
        if acc >= target:
            return int(step)
    return None


def recovery_auc(curve: Sequence[tuple[int, float]], max_steps: int, reference: float) -> float:
    """Area under the recovery curve, normalised to [0, 1]: trapezoid area of accuracy / ``reference`` over
    steps 0..``max_steps``, divided by ``max_steps``. A curve that stops early (early stopping once it
    reached the reference) is held at its last value. 1.0 = fully recovered from step 0; 0.0 = never moved.
    """
    if not curve or max_steps <= 0 or reference <= 0:
        return 0.0
    pts = sorted(curve)
    if pts[-1][0] < max_steps:
        pts.append((max_steps, pts[-1][1]))
    steps = np.array([min(s, max_steps) for s, _ in pts], dtype=float)
    frac = np.clip(np.array([a for _, a in pts], dtype=float) / reference, 0.0, 1.0)
    return float(np.trapezoid(frac, steps) / max_steps)


def majority_rate(labels: Sequence[int]) -> float:
    """Accuracy of always predicting the most common label (a probe's trivial baseline)."""
    if not labels:
        return float("nan")
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / len(labels))


def sweep_peak(runs: dict[str, dict]) -> dict | None:
    """The worst case of a relearning sweep: the highest forget accuracy over every learning rate and every
    evaluated step (step 0 included), ``{"value", "lr", "step"}``; on a tie, the earliest step, then the first
    learning rate of the sweep. ``runs``: {lr: {"curve": [[step, accuracy], ...]}}. None when no run has a finite
    point."""
    best = None
    for lr, run in runs.items():
        for step, acc in run.get("curve", ()):
            if not isinstance(acc, int | float) or not np.isfinite(acc):
                continue
            if best is None or (acc, -step) > (best["value"], -best["step"]):
                best = {"value": float(acc), "lr": float(lr), "step": int(step)}
    return best
