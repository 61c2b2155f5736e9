"""The map's figures (matplotlib, Agg backend), each written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def unit_heatmap(score: torch.Tensor, title: str, xlabel: str, path: Path) -> Path:
    """Layers x units, each row sorted by score (highest first), diverging colour map centred on 0."""
    plt = _figure()
    data = score.sort(dim=1, descending=True).values.numpy()
    lim = float(abs(data).max()) or 1.0
    fig, ax = plt.subplots(figsize=(9, 0.5 * data.shape[0] + 1.5))
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_yticks(range(data.shape[0]))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="score")
    path = _save(fig, path)
    plt.close(fig)
    return path


def layer_effects(forget: list[float], retain: list[float], title: str, path: Path) -> Path:
    """Per-layer bar chart of the exact forget and retain metric changes when the layer is mean-ablated."""
    plt = _figure()
    layers = range(len(forget))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(forget) + 2), 3.5))
    w = 0.4
    ax.bar([x - w / 2 for x in layers], forget, w, label="forget Δ", color="#c0392b")
    ax.bar([x + w / 2 for x in layers], retain, w, label="retain Δ", color="#2c7fb8")
    ax.set_xlabel("layer")
    ax.set_ylabel("Δ per token (higher = worse)")
    ax.set_xticks(list(layers))
    ax.set_title(title)
    ax.legend()
    path = _save(fig, path)
    plt.close(fig)
    return path


def ablation_curve(sweep: list[dict], path: Path) -> Path:
    """Forget and retain exact-match drops vs k, for the map's units and the random control."""
    plt = _figure()
    ks = [r["k"] for r in sweep]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(ks, [r["forget_drop_map"] for r in sweep], "o-", color="#c0392b", label="map: forget drop")
    ax.plot(ks, [r["retain_drop_map"] for r in sweep], "o-", color="#2c7fb8", label="map: retain drop")
    ax.plot(ks, [r["forget_drop_random"] for r in sweep], "x--", color="#c0392b", alpha=0.6,
            label="random: forget drop")
    ax.plot(ks, [r["retain_drop_random"] for r in sweep], "x--", color="#2c7fb8", alpha=0.6,
            label="random: retain drop")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ablated MLP neurons (k)")
    ax.set_ylabel("exact-match drop")
    ax.legend(fontsize=7)
    path = _save(fig, path)
    plt.close(fig)
    return path
