"""Students cut from the teacher (`surgical experiment cut`): what the map and the penalty buy when the student starts
out knowing everything.

Per seed, the cells train:

* the oracle and the fresh-init surgical student (the pipeline's default student), the references;
* the map's cut: the teacher's layers (all, the map's spine, or a list), the map's most forget-selective MLP neurons
  of each layer cut first, then the lowest-norm ones down to ``keep_fraction`` of the width; the surgical student
  (KD on gold + the Safety Divergence Penalty) and the filter-only student (the same cut, KD on gold only: the
  control that shows whether the penalty is needed);
* ``random_cuts`` random cuts of the same size per layer (``distill.cut_selection: random``), surgical: the map's
  cut must beat them for the map to matter.

``noise_alpha`` (optional) adds UNDO's noise to every cut student (``distill.noise_cut``) before healing; the
rows' ``cut`` then reads ``map+noise`` / ``random+noise``. ``heal_steps`` (optional) sets the cut students'
``distill.max_steps`` (surgical and filter-only alike; the oracle and the fresh-init student keep the config's): a
short heal leaves the cut student most of what it copied, as a broad corpus would, where 1,000 KD steps on the
world's narrow add/sub data overwrite mul/div at the surface whatever the penalty does; the rows' ``cut`` then
reads ``map/heal<N>``.

Every student goes through the comparison battery with the strong relearning attack; the steps ratios are against
the oracle of the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from .grid import ATTACKS, Cell, run_cells


def cut_cells(seeds: list[int], keep_layers: list[int] | None, cut_neurons: int, keep_fraction: float,
              random_cuts: int, attack: dict, noise_alpha: float | None = None,
              heal_steps: int | None = None) -> list[Cell]:
    baselines = {"plain_kd": False, "graddiff": False, "maxent": False, "rmu": False, "undo": False,
                 "cross_domain": False, "filter_only": True, "oracle": True, "compare_verify": attack}
    cut = {"preset": "surgical", "student_init": "teacher_layers", "keep_layers": keep_layers, "cut_forget_neurons": cut_neurons,
           "mlp_keep_fraction": keep_fraction}
    tag = ""
    if noise_alpha is not None:
        cut |= {"noise_cut": True, "noise_alpha": noise_alpha}
        tag = "+noise"
    if heal_steps is not None:
        cut |= {"max_steps": heal_steps}
        tag += f"/heal{heal_steps}"
    cells: list[Cell] = []
    first = f"fresh-seed{seeds[0]}"
    for seed in seeds:
        cells.append(Cell(f"fresh-seed{seed}", {"distill": {"preset": "surgical", "student_init": "config", "seed": seed},
                                                 "baselines": baselines},
                          {"compare-oracle": "oracle", "compare-surgical": "surgical"},
                          {"cut": "fresh-init", "seed": seed}, copy_from=first))
        cells.append(Cell(f"map-seed{seed}", {"distill": {**cut, "seed": seed, "cut_selection": "map"},
                                              "baselines": baselines},
                          {"compare-surgical": "surgical", "compare-filter-only": "filter-only"},
                          {"cut": "map" + tag, "seed": seed}, copy_from=first))
        for j in range(random_cuts):
            cells.append(Cell(f"random{j}-seed{seed}",
                              {"distill": {**cut, "seed": seed, "cut_selection": "random",
                                           "cut_seed": 1000 * seed + j}, "baselines": baselines},
                              {"compare-surgical": "surgical"}, {"cut": "random" + tag, "seed": seed, "cut_seed":
                                                                 1000 * seed + j}, copy_from=first))
    return cells


def _keep_layers(base, keep_layers) -> list[int] | None:
    if keep_layers == "spine":
        return None  # distill then keeps the map's spine
    if keep_layers == "all":
        if base.teacher.model:
            raise ValueError("--keep-layers all: the layer count of a user's teacher is not known here; give the "
                             "indices (--keep-layers 0,1,2,...) or 'spine'")
        return list(range(base.teacher.num_layers))
    return [int(i) for i in keep_layers]


def run_cut_students(base, out_dir: str | Path, seeds, random_cuts: int = 1, cut_neurons: int = 64,
                     keep_fraction: float = 0.5, keep_layers="all", noise_alpha: float | None = None,
                     heal_steps: int | None = None, attack: str = "strong", jobs: int = 1,
                     quiet: bool = False, merge=()) -> dict:
    """The cut-student comparison on ``base``; returns cut-students.json. ``merge``: earlier cut-students.json
    records (same attack, cut and base config) whose per-seed rows are averaged in."""
    from . import _finish, merged_rows

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    layers = _keep_layers(base, keep_layers)
    meta = {"seeds": list(seeds), "random_cuts": random_cuts, "cut_neurons": cut_neurons,
            "keep_fraction": keep_fraction, "keep_layers": layers if layers is not None else "spine",
            "noise_alpha": noise_alpha, "heal_steps": heal_steps,
            "attack": {"name": attack, **ATTACKS[attack]}}
    earlier = merged_rows(merge, base, meta)  # before the long run: a record that cannot be merged fails now
    cells = cut_cells(list(seeds), layers, cut_neurons, keep_fraction, random_cuts, ATTACKS[attack], noise_alpha,
                      heal_steps)
    rows = run_cells(base, cells, out_dir, jobs=jobs, quiet=quiet, console=Console(stderr=True, quiet=quiet))
    for r in rows:  # the student's size, as a fraction of the teacher's
        rec = Path(r["run_dir"]) / ("distill" if r["method"] == "surgical" else f"compare-{r['method']}/model")
        if (rec / "distill.json").exists():
            from ..io import read_json

            r["size_ratio"] = (read_json(rec / "distill.json").get("student") or {}).get("size_ratio")
    intro = ("Students cut from the teacher (the map's cut and random cuts of the same size), their filter-only "
             "control, the fresh-init student and the oracle. Mean ± std over seeds; forget exact-match after the "
             "strong relearning attack at each budget (attacker's best lr per budget); steps ratios against the "
             "oracle of the same seed.")
    return _finish("cut-students", base, out_dir, rows, ("cut",), lambda r: r["seed"], meta, t0, intro, "cut",
                   earlier=earlier)
