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
from .grid import ATTACKS, aggregate, run_cells, with_ratios_by_seed
from .report import markdown_table, plot_leak_sweep, write_markdown


def _finish(name: str, base, out_dir: Path, rows: list[dict], group_by: tuple[str, ...], oracle_key, meta: dict,
            t0: float, intro: str, key_title: str, plot=None) -> dict:
    per_seed = with_ratios_by_seed(rows, oracle_key)
    agg = aggregate(per_seed, group_by)
    rec = {"rows": agg, "per_seed_rows": per_seed, **meta, "wall_s": round(time.perf_counter() - t0, 1),
           "provenance": provenance(base.model_dump(mode="json"))}
    write_json(out_dir / f"{name}.json", rec)
    write_markdown(out_dir / f"{name}.md", name, intro, markdown_table(agg, group_by[0], key_title))
    if plot is not None:
        plot(agg, out_dir / f"{name}.png")
    return rec


def run_leak_sweep(base, out_dir: str | Path, rates, seeds, attack: str = "strong", variants=(),
                   leaky_oracle: bool = False, jobs: int = 1, quiet: bool = False) -> dict:
    """The leak sweep on ``base`` (a PipelineConfig; the demo's by default in the CLI). Returns leak-sweep.json."""
    from .leak import PENALTY_VARIANTS, leak_cells

    unknown = [v for v in variants if v not in PENALTY_VARIANTS]
    if unknown:
        raise ValueError(f"--variant {unknown[0]!r}: unknown; known: {', '.join(PENALTY_VARIANTS)}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    cells = leak_cells(list(rates), list(seeds), ATTACKS[attack], {v: PENALTY_VARIANTS[v] for v in variants},
                       leaky_oracle=leaky_oracle)
    rows = run_cells(base, cells, out_dir, jobs=jobs, quiet=quiet, console=Console(stderr=True, quiet=quiet))
    key = (lambda r: (r["seed"], r["leak_rate"])) if leaky_oracle else (lambda r: r["seed"])
    intro = ("Forget exact-match (after the strong relearning attack at each budget, attacker's best lr per budget), "
             "mean ± std over seeds. The oracle was trained on the perfectly filtered data"
             + (" and at every rate." if leaky_oracle else " (rate 0); every row's steps ratio is against it."))
    return _finish("leak-sweep", base, out_dir, rows, ("leak_rate",), key,
                   {"rates": list(rates), "seeds": list(seeds), "attack": {"name": attack, **ATTACKS[attack]},
                    "variants": list(variants), "leaky_oracle": leaky_oracle}, t0, intro, "leak rate",
                   plot=plot_leak_sweep)
