"""The distill stage's figure: the loss curve of every term, and the periodic val exact-match."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path


def plot_curves(record: dict, path: str | Path) -> Path | None:
    """Loss per term against step (left) and val add/sub exact-match against tokens (right). Returns the
    path, or None when nothing was logged."""
    curves = record.get("curves") or []
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = record.get("eval_history") or []
    fig, axes = plt.subplots(1, 2 if history else 1, figsize=(11 if history else 6, 4), squeeze=False)
    ax = axes[0][0]
    names = sorted({k for c in curves for k in c if k.startswith("term_") and k != "term_penalty_weight"})
    steps = [c["step"] for c in curves]
    ax.plot(steps, [c["loss"] for c in curves], label="total", color="black", linewidth=2)
    for name in names:
        ax.plot([c["step"] for c in curves if name in c], [c[name] for c in curves if name in c],
                label=name.removeprefix("term_"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(f"distill ({record.get('preset', '?')})")
    ax.legend(fontsize=8)
    if history:
        ax2 = axes[0][1]
        for d in [k for k in history[0] if k not in ("step", "tokens")]:
            ax2.plot([h["tokens"] for h in history], [h[d] for h in history], marker="o", label=d)
        ax2.set_xlabel("training tokens")
        ax2.set_ylabel("val exact-match")
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
