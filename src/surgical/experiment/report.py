"""An experiment's outputs: the JSON table (committed under benchmarks/results/), a Markdown table and a plot."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path, write_text


def _fmt(v, spread: dict | None = None) -> str:
    if v is None:
        return "-"
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if spread and spread.get("n", 0) > 1 and spread.get("std") is not None:
        s += f" ± {spread['std']:.3f}"
    return s


def markdown_table(rows: list[dict], key: str, key_title: str) -> str:
    """Mean ± std over seeds of each figure, one line per (key, method)."""
    budgets = sorted({b for r in rows for b in (r.get("forget_after_relearn") or {})}, key=int)
    # the cut experiment's same-size oracle (experiment.cut.ARCH_ORACLE), where it ran
    arch = any("steps_to_50pct_ratio_vs_arch_oracle" in r for r in rows)
    head = ["method", key_title, "seeds", "forget EM", "forget MC", *[f"after relearn @{b}" for b in budgets],
            "steps to 50% of teacher / oracle's", *(["steps to 50% / same-size oracle's"] if arch else []), "retain ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio_of(r: dict, name: str) -> str:
        ratio = _fmt(r.get(name), r.get(f"{name}_spread"))
        bound = r.get(f"{name}_bound")
        return ratio + f" ({bound})" if bound and bound != "exact" and ratio != "-" else ratio

    for r in sorted(rows, key=lambda r: (str(r.get(key)), r["method"])):
        ratios = [ratio_of(r, "steps_to_50pct_ratio_vs_oracle")]
        if arch:
            ratios.append(ratio_of(r, "steps_to_50pct_ratio_vs_arch_oracle"))
        after = r.get("forget_after_relearn") or {}
        spread = r.get("forget_after_relearn_spread") or {}
        cells = [r["method"], str(r.get(key)), str(len(r.get("seeds") or [])),
                 _fmt(r.get("forget_exact_match"), r.get("forget_exact_match_spread")),
                 _fmt(r.get("forget_mc"), r.get("forget_mc_spread")),
                 *[_fmt(after.get(b), spread.get(b)) for b in budgets], *ratios,
                 _fmt(r.get("retain_ratio"), r.get("retain_ratio_spread"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_leak_sweep(rows: list[dict], path: str | Path) -> Path | None:
    """Forget accuracy after the strongest relearning budget against the leak rate (one line per method, bars =
    min..max over seeds), and the retain ratio beside it. The oracle, trained once on the perfectly filtered data,
    is a dashed reference across the rates (its min..max band shaded)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rates = sorted({r["leak_rate"] for r in rows})
    for method in sorted({r["method"] for r in rows}):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["leak_rate"])
        budgets = sorted({b for r in rs for b in (r.get("forget_after_relearn") or {})}, key=int)
        if method == "oracle" and [r["leak_rate"] for r in rs] == [0.0] and len(rates) > 1 and budgets:
            # trained once, on the perfectly filtered data: the reference at every rate, drawn across them
            b = budgets[-1]
            y = rs[0]["forget_after_relearn"].get(b)
            s = (rs[0].get("forget_after_relearn_spread") or {}).get(b) or {}
            if y is not None:
                axes[0].axhline(y, color="k", linestyle="--", linewidth=1, label="oracle (perfect filter)")
                if s.get("min") is not None and s.get("max") is not None:
                    axes[0].axhspan(s["min"], s["max"], color="k", alpha=0.08)
            if rs[0].get("retain_ratio") is not None:
                axes[1].axhline(rs[0]["retain_ratio"], color="k", linestyle="--", linewidth=1,
                                label="oracle (perfect filter)")
            continue
        if budgets:
            b = budgets[-1]
            have = [r for r in rs if (r.get("forget_after_relearn") or {}).get(b) is not None]
            ys = [r["forget_after_relearn"][b] for r in have]
            spread = [(r.get("forget_after_relearn_spread") or {}).get(b) or {} for r in have]
            lo = [y - (s.get("min") if s.get("min") is not None else y) for y, s in zip(ys, spread, strict=True)]
            hi = [(s.get("max") if s.get("max") is not None else y) - y for y, s in zip(ys, spread, strict=True)]
            axes[0].errorbar([r["leak_rate"] for r in have], ys, yerr=[lo, hi], marker="o", capsize=3, label=method)
            axes[0].set_title(f"forget exact-match after {b} relearning steps (best lr)")
        xs = [r["leak_rate"] for r in rs if r.get("retain_ratio") is not None]
        axes[1].plot(xs, [r["retain_ratio"] for r in rs if r.get("retain_ratio") is not None], marker="o",
                     label=method)
    axes[0].set_xlabel("leak rate (1 - filter recall)")
    axes[0].set_ylabel("forget exact-match")
    axes[1].set_xlabel("leak rate (1 - filter recall)")
    axes[1].set_ylabel("retain ratio (student / teacher)")
    axes[1].set_title("retained skill")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write_markdown(path: str | Path, title: str, intro: str, table: str) -> Path:
    return write_text(path, f"# {title}\n\n{intro}\n\n{table}")
