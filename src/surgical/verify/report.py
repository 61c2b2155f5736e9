"""report.html (one self-contained page, PNG plots inlined as base64) and report.md (same content, PNGs
next to it) from a verify.json record. Generations from forbidden prompts appear only as hashes,
lengths and a verdict unless the run was made with --show-generations."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..io import write_bytes, write_text


def _fmt(x, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return f"{100 * x:.1f}%" if pct else f"{x:.3g}"
    return str(x)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_attacks(record: dict) -> bytes:
    """Forget exact match and forget MC per attack, with 95% CIs; chance and the limits as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    attacks = record["attacks"]
    names = list(attacks)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 3.6))
    for off, key, label in ((-0.2, "forget", "forget exact match"), (0.2, "forget_mc", "forget MC")):
        vals = np.array([attacks[n].get(key, np.nan) for n in names], dtype=float)
        lo = np.array([attacks[n].get(f"{key}_ci_low", np.nan) for n in names], dtype=float)
        hi = np.array([attacks[n].get(f"{key}_ci_high", np.nan) for n in names], dtype=float)
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]).clip(min=0))
        ax.bar(x + off, np.nan_to_num(vals), 0.4, yerr=err, capsize=2, label=label)
    th = record["thresholds"]
    ax.axhline(th["chance_mc"], color="grey", ls=":", lw=1, label="MC chance")
    ax.axhline(th["chance_mc"] + th["forget_mc_max_above_chance"], color="red", ls="--", lw=1, label="MC limit")
    ax.axhline(th["forget_exact_match_max"], color="purple", ls="--", lw=1, label="exact-match limit")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("forget accuracy under each attack (95% bootstrap CI)")
    return _png(fig)


def plot_relearning(record: dict) -> bytes | None:
    if not record.get("relearning"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = {name: res for name, res in record["relearning"].items() if res.get("runs")}  # not those that could not run
    if not rel:
        return None
    fig, axes = plt.subplots(1, len(rel), figsize=(4.2 * len(rel), 3.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], rel.items(), strict=True):
        for lr, run in res["runs"].items():
            s, a = zip(*run["curve"], strict=True)
            ax.plot(s, a, marker=".", lw=2.2 if float(lr) == res["best_lr"] else 1, label=f"lr {lr}")
        if res.get("peak"):
            ax.plot([res["peak"]["step"]], [res["peak"]["value"]], "r*", ms=10, label="peak (the verdict's)")
        if "benign" in res:
            s, a = zip(*res["benign"]["curve"], strict=True)
            ax.plot(s, a, "k--", marker="x", label="benign (allowed data)")
        ax.axhline(res["teacher_forget"], color="grey", ls=":", lw=1, label="teacher")
        ax.axhline(0.5 * res["teacher_forget"], color="red", ls=":", lw=1, label="50% of teacher")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("forget exact match")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("relearning attack: forget accuracy while fine-tuning on forbidden examples", fontsize=10)
    return _png(fig)


def plot_probes(record: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = record["probes"]["latent"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, layers in lat["by_layer"].items():
        a1.plot(range(1, len(layers) + 1), [c["value"] for c in layers], marker="o", label=name)
    a1.axhline(lat["majority_baseline"], color="grey", ls=":", label="majority class")
    a1.set_xlabel("layer")
    a1.set_ylabel("held-out probe accuracy")
    a1.set_title("linear probe: forbidden answer's last digit", fontsize=9)
    a1.legend(fontsize=7)
    if "logit_lens" not in lat:
        a2.text(0.5, 0.5, "not run (verify.profile compare)", ha="center", va="center", fontsize=8)
    for side, accs in lat.get("logit_lens", {}).items():
        a2.plot(range(1, len(accs) + 1), accs, marker="o", label=side)
    a2.set_xlabel("layer")
    a2.set_ylabel("top-1 on answer tokens")
    a2.set_title("logit lens", fontsize=9)
    if "logit_lens" in lat:
        a2.legend(fontsize=7)
    for ax in (a1, a2):
        ax.set_ylim(0, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


# ---------------------------------------------------------------- tables (shared by HTML and Markdown)


def tables(record: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table in the report."""
    out = []
    out.append(("Verdict checks", ["check", "worst attack", "value", "limit", "passed", "note"],
                [[c["name"], _where(c), _fmt(c["value"]), _fmt(c["limit"]), _state(c), c.get("note", "")]
                 for c in record["checks"]]))
    out.append(("Attacks (domain-averaged)", ["attack", "forget exact match", "forget MC", "MC lower 95%", "retain"],
                [[n, _fmt(a.get("forget")), _fmt(a.get("forget_mc")), _fmt(a.get("forget_mc_ci_low")),
                  _fmt(a.get("retain"))] for n, a in record["attacks"].items()]))
    cal = record.get("mc_calibration")
    if cal:
        twin = cal.get("random_init_twin") or {}
        m = cal.get("model") or {}
        out.append(("Forget MC against chance (clean, domain-averaged)", ["level", "forget MC", "metric"],
                    [["nominal chance (policy chance_mc)", _fmt(cal.get("nominal_chance")), ""],
                     ["random-init twin, same items" + ("" if twin else " (not scored)"),
                      _fmt(twin.get("forget_mc")), twin.get("metric", "")],
                     ["model", f"{_fmt(m.get('forget_mc'))} [{_fmt(m.get('forget_mc_ci_low'))}, "
                               f"{_fmt(m.get('forget_mc_ci_high'))}]", m.get("forget_mc_metric") or ""]]))
    rows = []
    for name, s in record["summary_by_model"].items():
        rel = (record.get("relearning") or {}).get(name) or {}
        ic = record["in_context"].get(name) or {}
        ic_with = [v["with_facts"]["value"] for v in ic.values() if "with_facts" in v]
        rows.append([name, _fmt(s["forget"]), _fmt(s["forget_mc"]), _fmt(s["retain"]),
                     _fmt(sum(ic_with) / len(ic_with) if ic_with else None),
                     str(rel.get("min_steps_to_half_teacher", "n/a")), _fmt(rel.get("best", {}).get("auc"), pct=False)])
    out.append(("Model against references", ["model", "forget exact match", "forget MC", "retain",
                                             "in-context use (facts given)", "relearn steps to 50% of teacher",
                                             "relearn AUC"], rows))
    kn = record["knowledge"]["model"]
    out.append(("Knowledge probes (model)", ["domain", "exact match [95% CI]", "MC", "MC (norm)", "perplexity"],
                [[d, _ci(m.get("exact_match")), _ci(m.get("mc")), _ci(m.get("mc_norm")),
                  _ci(m.get("perplexity"), pct=False)] for d, m in kn.items()]))
    jb = record["jailbreaks"]
    out.append(("Jailbreak families (worst template)", ["family", "worst template", "forget exact match",
                                                         "forget MC", "retain"],
                [[f, r["worst_template"], _fmt(r["forget"]), _fmt(r["forget_mc"]), _fmt(r["retain"])]
                 for f, r in jb.items()]))
    q = record["quantization"]
    out.append((f"Quantization attack ({q['backend']})", ["scheme", "forget", "forget gap", "forget MC",
                                                         "MC gap", "retain gap"],
                [[s, *(["error: " + r["error"], "", "", "", ""] if "error" in r else
                       [_fmt(r["forget"]), _fmt(r["forget_gap"]), _fmt(r["forget_mc"]), _fmt(r["forget_mc_gap"]),
                        _fmt(r["retain_gap"])])] for s, r in q["schemes"].items()]))
    ab = record["probes"]["direction_ablation"]
    out.append(("Direction ablation", ["contrast", "forget", "forget MC", "retain"],
                [[ab["skipped"], "", "", ""]] if "skipped" in ab else
                [[ab["contrast"], _fmt(ab["forget"]), _fmt(ab["forget_mc"]), _fmt(ab["retain"])]]))
    ex = []
    for f, r in jb.items():
        for tid, t in r["templates"].items():
            for e in t["examples"]:
                ex.append([f"{f}/{tid}", e["prompt_sha256"], str(e["prompt_chars"]), e["generation_sha256"],
                           str(e["generation_chars"]), e["verdict"],
                           "[redacted]" if e["redacted"] else repr(e["prompt"] + " -> " + e["generation"])])
    out.append(("Generations from forbidden prompts" + (" (redacted)" if record["generations_redacted"] else ""),
                ["template", "prompt sha256", "prompt chars", "generation sha256", "chars", "verdict", "text"], ex))
    return out


def _state(check: dict) -> str:
    """passed / FAILED / not evaluated, and whether the check gates the verdict."""
    state = {True: "yes", False: "FAILED"}.get(check["passed"], "not evaluated")
    return state + ("" if check.get("gating", True) else " (informational)")


def _where(check: dict) -> str:
    """Where the check's worst case is: the attack, or the relearning run (lr, step)."""
    if check.get("attack"):
        return check["attack"]
    if check.get("lr") is not None:
        return f"relearning lr {check['lr']:g}, step {check.get('step')}"
    return ""


def _ci(m, pct: bool = True) -> str:
    if not m:
        return "n/a"
    return f"{_fmt(m['value'], pct)} [{_fmt(m['ci_low'], pct)}, {_fmt(m['ci_high'], pct)}]"


VERDICT_COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "incomplete": "#9a6700"}


def _headline(record: dict) -> str:
    gating = [c for c in record["checks"] if c.get("gating", True)]
    failed = [c["name"] for c in gating if c["passed"] is False]
    missing = [c["name"] for c in gating if c["passed"] is None]
    notes = ([f"failed: {', '.join(failed)}"] if failed else []) + \
        ([f"not evaluated: {', '.join(missing)}"] if missing else [])
    if record.get("verdict_reason"):
        notes.append(record["verdict_reason"])
    return (f"VERDICT: {record['verdict'].upper()}" + (f" ({'; '.join(notes)})" if notes else "") +
            f" | model {record['model']} | policy {record['policy']}")


def render_html(record: dict, plots: dict[str, bytes]) -> str:
    color = VERDICT_COLORS.get(record["verdict"], "#cf222e")  # anything but pass reads as not passed
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>surgical verify report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;"
             "font-size:13px}th{background:#f3f3f3}#verdict{color:white;padding:0.6em 1em;font-size:1.4em;"
             f"background:{color}}}img{{max-width:100%}}</style></head><body>",
             f"<div id='verdict' data-verdict='{record['verdict']}'>{html.escape(_headline(record))}</div>"]
    for key, title in (("attacks", "Forget accuracy per attack"), ("relearning", "Relearning curves"),
                       ("probes", "Probe accuracy by layer and logit lens")):
        if plots.get(key):
            b64 = base64.b64encode(plots[key]).decode()
            parts.append(f"<h2>{title}</h2><img id='plot-{key}' alt='{title}' src='data:image/png;base64,{b64}'>")
    for title, header, rows in tables(record):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>"
                                                                           for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append(f"<p>timings (s): {html.escape(str(record['timings_s']))}</p></body></html>")
    return "\n".join(parts)


def render_markdown(record: dict, plot_files: dict[str, str]) -> str:
    lines = ["# surgical verify report", "", f"**{_headline(record)}**", ""]
    for key, fname in plot_files.items():
        lines += [f"![{key}]({fname})", ""]
    for title, header, rows in tables(record):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    lines.append(f"timings (s): {record['timings_s']}")
    return "\n".join(lines) + "\n"


def write_reports(record: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.md and plots/*.png under ``out_dir``."""
    out_dir = Path(out_dir)
    plots = {"attacks": plot_attacks(record), "relearning": plot_relearning(record), "probes": plot_probes(record)}
    files = {}
    for key, data in plots.items():
        if data:
            write_bytes(out_dir / "plots" / f"{key}.png", data)
            files[key] = f"plots/{key}.png"
    return {"html": write_text(out_dir / "report.html", render_html(record, plots)),
            "md": write_text(out_dir / "report.md", render_markdown(record, files))}
