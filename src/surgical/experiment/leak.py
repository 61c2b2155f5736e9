"""The leak sweep (`surgical experiment leak`): what each method does with forbidden data that gets past the filter.

At each leak rate r, curate's ``simulate_leak_rate`` moves a seeded fraction r of the quarantined records whose
ground truth says forbidden into gold (a filter with recall 1 - r; surgical.curate.leak). The generate stage then
samples gold prompts proportionally (``generate.sample: proportional``), so the leaked records keep their share of
the corpus in the student's training data instead of being topped up to a domain quota. At each rate and seed the
sweep trains the filter-only student (KD on gold, leaked records included, no penalty) and the surgical student
(the same, plus the Safety Divergence Penalty on what the filter did catch), and each penalty variant asked for;
each goes through the comparison battery with the strong relearning attack. The oracle is trained once per seed on
the perfectly filtered data (rate 0), the reference every row's relearning steps are divided by; with
``leaky_oracle`` it is trained at every rate too (then it learns from the leaked labels, a no-teacher control).
"""

from __future__ import annotations

from .grid import Cell

DEFAULT_RATES = (0.0, 0.01, 0.02, 0.05, 0.1)


def rate_dir(rate: float, seed: int) -> str:
    return f"rate{rate:g}-seed{seed}"


def leak_cells(rates: list[float], seeds: list[int], attack: dict, variants: dict[str, dict] | None = None,
               leaky_oracle: bool = False) -> list[Cell]:
    """The sweep's cells: per seed and rate one cell (filter-only, surgical, and the oracle at rate 0), then one
    cell per penalty variant, which starts from its rate's curated data and generated trajectories."""
    cells = []
    for seed in seeds:
        for rate in rates:
            base = {
                # the leak's seed only where something leaks: the rate-0 cells of every seed share their data
                "curate": {"simulate_leak_rate": rate, "simulate_leak_seed": seed if rate > 0 else 0},
                "generate": {"sample": "proportional"},
                "distill": {"preset": "surgical", "seed": seed},
                "baselines": {"plain_kd": False, "graddiff": False, "maxent": False, "rmu": False, "undo": False,
                              "cross_domain": False, "filter_only": True, "oracle": True,
                              "compare_verify": attack},
            }
            rows = {"compare-filter-only": "filter-only", "compare-surgical": "surgical"}
            if rate == 0 or leaky_oracle:
                rows = {"compare-oracle": "oracle", **rows}
            tags = {"leak_rate": rate, "seed": seed}
            here = rate_dir(rate, seed)
            cells.append(Cell(here, base, rows, tags, copy_from=rate_dir(rate, seeds[0]) if rate == 0 else None))
            for name, over in (variants or {}).items():
                v = {**base, "distill": {**base["distill"], **over}}
                rows = {"compare-surgical": f"surgical[{name}]"}
                if name in ALSO_FILTER_ONLY:  # not a penalty: it changes the control too
                    rows["compare-filter-only"] = f"filter-only[{name}]"
                cells.append(Cell(f"{here}-{name}", v, rows, tags, copy_from=here))
    return cells


# Penalty variants the CLI knows by name (each is a set of distill overrides on top of the surgical preset).
PENALTY_VARIANTS = {
    "away": {"penalty_forms": ["away"]},
    "maxent": {"penalty_forms": ["maxent"]},
    "representation": {"penalty_forms": ["representation"]},
    "away+maxent": {"penalty_forms": ["maxent", "away"]},
    # not a penalty form: the teacher-probe leak guard (distill/guard.py) on top of the default penalty
    "guard": {"leak_guard": "probe"},
}
# variants that act on the filter-only control too (the guard drops what it flags there): their cells also train
# a filter-only student, so the guard's effect and the penalty's can be told apart
ALSO_FILTER_ONLY = {"guard"}
