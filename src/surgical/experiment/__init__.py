"""Experiments over the pipeline: grids of runs reduced to comparison tables (`surgical experiment ...`).

* ``leak``: the leak sweep. Filter-only and surgical students (and penalty variants) at each simulated leak rate,
  against the oracle, under the strong relearning attack (surgical.experiment.leak).
* ``cut``: students cut from the teacher by the map, their filter-only control, and random cuts of the same size
  (surgical.experiment.cut).

Each writes ``<name>.json`` (``{"rows": [...]}``: the mean over seeds of every figure, with its spread, plus the
per-seed rows), ``<name>.md`` and ``<name>.png`` into its directory. See docs/experiments.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..io import provenance, write_json
from .grid import ATTACKS, aggregate, run_cells, teacher_conflicts, with_ratios_by_seed
from .report import markdown_table, plot_leak_sweep, write_markdown


def _conflicts(a, b, path: str = "", defaults=None) -> list[str]:
    """Fields of config dump ``a`` (an earlier record's) and ``b`` (this run's) whose values differ. A field only
    this run has (a knob added since the record was written) conflicts unless it holds its default (``defaults``,
    the schema's default dump, when known): the earlier run ran without the knob, i.e. at its default. A field
    only the record has (one removed since) is not compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in b:
            sub = f"{path}.{k}" if path else k
            d = defaults.get(k) if isinstance(defaults, dict) else None
            if k in a:
                out += _conflicts(a[k], b[k], sub, d)
            elif isinstance(defaults, dict) and k in defaults and b[k] != d:
                out.append(sub)
        return out
    return [] if a == b else [path]


def _defaults(base):
    """The default dump of ``base``'s config schema, or None when it has none (a stand-in in tests)."""
    try:
        return type(base)().model_dump(mode="json")
    except Exception:  # noqa: BLE001 - no schema to take defaults from: fields only one side has are not compared
        return None


def merged_rows(paths, base, meta: dict) -> tuple[list[dict], list[dict]]:
    """The per-seed rows of earlier records of the same experiment (``--merge``): the same attack, oracle mode, cut
    (cut experiment) and base config (fields both configs have), written by surgical. Returns (rows, provenance entries); the
    caller drops a merged row that this run measures again."""
    from ..io import read_json, sha256_path

    rows, sources = [], []
    here = base.model_dump(mode="json")
    defaults = _defaults(base)
    for path in paths or []:
        path = Path(path)
        try:
            old = read_json(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--merge {path}: cannot read it ({exc})") from None
        prov = old.get("provenance") if isinstance(old, dict) else None
        if not (isinstance(prov, dict) and "surgical_version" in prov and isinstance(old.get("per_seed_rows"), list)):
            raise ValueError(f"--merge {path}: not a record written by surgical experiment (no per_seed_rows)")
        for field in ("attack", "leaky_oracle", "random_cuts", "cut_neurons", "keep_fraction", "keep_layers",
                      "noise_alpha", "heal_steps"):
            if field in meta and old.get(field) != meta[field]:
                raise ValueError(f"--merge {path}: its {field} {old.get(field)!r} differs from this run's "
                                 f"{meta[field]!r}; rows of different experiments are not averaged")
        bad = _conflicts(prov.get("config") or {}, here, defaults=defaults)
        if bad:
            raise ValueError(f"--merge {path}: its base config differs in {', '.join(sorted(bad)[:3])}")
        rows += [dict(r) for r in old["per_seed_rows"]]
        sources.append({"path": str(path), "sha256": sha256_path(path), "rows": len(old["per_seed_rows"])})
    return rows, sources


def _finish(name: str, base, out_dir: Path, rows: list[dict], group_by: tuple[str, ...], oracle_key, meta: dict,
            t0: float, intro: str, key_title: str, plot=None, earlier: tuple[list, list] = ([], []),
            per_seed_hook=None) -> dict:
    earlier, sources = earlier
    if earlier:
        def key(r):
            return (r.get("method"), r.get("seed"), *(r.get(k) for k in group_by))
        fresh = {key(r) for r in rows}
        merged = [r for r in earlier if key(r) not in fresh] + rows  # a row measured again here replaces the old one
        differ, unchecked = teacher_conflicts(merged)
        if differ:
            # nothing is lost: this run's rows are written alone, and its cells stay cached in out_dir
            _finish(name, base, out_dir, rows, group_by, oracle_key, {**meta, "merge_refused": True}, t0, intro,
                    key_title, plot=plot, per_seed_hook=per_seed_hook)
            raise ValueError(f"--merge: seed(s) {', '.join(map(str, differ))} would mix rows measured against "
                             f"different teachers (weights hashes); rows of different teachers are not compared. "
                             f"This run's rows alone are in {out_dir / (name + '.json')}")
        if unchecked:
            Console(stderr=True).print(f"[yellow]--merge: rows of seed(s) {', '.join(map(str, unchecked))} record no "
                                       "teacher weights hash (written before it was recorded): that they ran against "
                                       "one teacher is not checked[/yellow]")
            meta = {**meta, "teacher_unchecked_seeds": unchecked}
        rows = merged
    per_seed = with_ratios_by_seed(rows, oracle_key)
    if per_seed_hook is not None:  # more columns computed over every seed's rows (the cut's same-size oracle)
        per_seed = per_seed_hook(per_seed)
    agg = aggregate(per_seed, group_by)
    seeds = sorted({r.get("seed") for r in rows if r.get("seed") is not None})
    if earlier:  # what the table covers, not only what this run measured
        meta = {**meta, "seeds": seeds, "seeds_measured_here": meta.get("seeds")}
        if "rates" in meta:  # the leak sweep
            meta.update({"rates_measured_here": meta.get("rates"),
                         "rates": sorted({r[group_by[0]] for r in rows if r.get(group_by[0]) is not None}),
                         "variants": sorted({*meta.get("variants", []), *(m[m.index("[") + 1:-1] for m in
                                                                           {r.get("method", "") for r in rows}
                                                                           if "[" in m)})})
    rec = {"rows": agg, "per_seed_rows": per_seed, **meta,
           "wall_s": round(time.perf_counter() - t0, 1),
           "provenance": provenance(base.model_dump(mode="json"), merged_from=sources)}
    write_json(out_dir / f"{name}.json", rec)
    write_markdown(out_dir / f"{name}.md", name, intro, markdown_table(agg, group_by[0], key_title))
    if plot is not None:
        plot(agg, out_dir / f"{name}.png")
    return rec


def run_leak_sweep(base, out_dir: str | Path, rates, seeds, attack: str = "strong", variants=(),
                   leaky_oracle: bool = False, jobs: int = 1, quiet: bool = False, merge=()) -> dict:
    """The leak sweep on ``base`` (a PipelineConfig; the demo's by default in the CLI). Returns leak-sweep.json."""
    from .leak import PENALTY_VARIANTS, leak_cells

    unknown = [v for v in variants if v not in PENALTY_VARIANTS]
    if unknown:
        raise ValueError(f"--variant {unknown[0]!r}: unknown; known: {', '.join(PENALTY_VARIANTS)}")
    meta = {"rates": list(rates), "seeds": list(seeds), "attack": {"name": attack, **ATTACKS[attack]},
            "variants": list(variants), "leaky_oracle": leaky_oracle}
    earlier = merged_rows(merge, base, meta)  # before the long run: a record that cannot be merged fails now
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    cells = leak_cells(list(rates), list(seeds), ATTACKS[attack], {v: PENALTY_VARIANTS[v] for v in variants},
                       leaky_oracle=leaky_oracle)
    rows = run_cells(base, cells, out_dir, jobs=jobs, quiet=quiet, console=Console(stderr=True, quiet=quiet))
    key = (lambda r: (r["seed"], r["leak_rate"])) if leaky_oracle else (lambda r: r["seed"])
    intro = ("Forget exact-match (after the strong relearning attack at each budget, attacker's best lr per budget), "
             "mean ± std over seeds. The oracle was trained on the perfectly filtered data"
             + (" and at every rate." if leaky_oracle else " (rate 0); every row's steps ratio is against it."))
    return _finish("leak-sweep", base, out_dir, rows, ("leak_rate",), key, meta, t0, intro, "leak rate",
                   plot=plot_leak_sweep, earlier=earlier)
