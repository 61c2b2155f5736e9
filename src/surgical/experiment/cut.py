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

``kinds`` picks which cells run: ``fresh`` (the oracle and the fresh-init student), ``map``, ``random``, and
``arch-oracle``: the oracle of the cut's own architecture, a model of the cut student's size trained from fresh
weights on the labels (the fresh-init oracle is the pipeline's small student, at about a fifth of the cut's size, and
a larger model relearns faster from scratch too). Its row reads ``oracle[arch]``; each cut student's
``steps_to_*_ratio_vs_arch_oracle`` divides its steps by that oracle's, on the same seed: UNDO's comparison, where
the data-filtered oracle has the student's architecture.

Every student goes through the comparison battery with the strong relearning attack; the steps ratios are against
the oracle of the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from .grid import ATTACKS, Cell, run_cells

CELL_KINDS = ("fresh", "map", "random", "arch-oracle")
DEFAULT_KINDS = ("fresh", "map", "random")
ARCH_ORACLE = "oracle[arch]"


def cut_cells(seeds: list[int], keep_layers: list[int] | None, cut_neurons: int, keep_fraction: float,
              random_cuts: int, attack: dict, noise_alpha: float | None = None,
              heal_steps: int | None = None, kinds=DEFAULT_KINDS) -> list[Cell]:
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
    unknown = sorted(set(kinds) - set(CELL_KINDS))
    if unknown or not kinds:
        raise ValueError(f"cut cells {unknown or 'none'}: expected some of {', '.join(CELL_KINDS)}")
    cells: list[Cell] = []
    for seed in seeds:
        if "fresh" in kinds:
            cells.append(Cell(f"fresh-seed{seed}",
                              {"distill": {"preset": "surgical", "student_init": "config", "seed": seed},
                               "baselines": baselines},
                              {"compare-oracle": "oracle", "compare-surgical": "surgical"},
                              {"cut": "fresh-init", "seed": seed}))
        if "map" in kinds:
            cells.append(Cell(f"map-seed{seed}", {"distill": {**cut, "seed": seed, "cut_selection": "map"},
                                                  "baselines": baselines},
                              {"compare-surgical": "surgical", "compare-filter-only": "filter-only"},
                              {"cut": "map" + tag, "seed": seed}))
        for j in range(random_cuts if "random" in kinds else 0):
            cells.append(Cell(f"random{j}-seed{seed}",
                              {"distill": {**cut, "seed": seed, "cut_selection": "random",
                                           "cut_seed": 1000 * seed + j}, "baselines": baselines},
                              {"compare-surgical": "surgical"}, {"cut": "random" + tag, "seed": seed, "cut_seed":
                                                                 1000 * seed + j}))
        if "arch-oracle" in kinds:
            # the cut's architecture with fresh weights (the oracle preset on a teacher_layers student), trained for
            # the config's steps like the fresh-init oracle: neither the heal length nor the noise is part of it
            arch = {k: v for k, v in cut.items() if k not in ("max_steps", "noise_cut", "noise_alpha")}
            # in the map cell's directory when the configs agree, so the two share the distill stage the oracle's
            # stage depends on
            where = f"map-seed{seed}" if arch == cut else f"arch-oracle-seed{seed}"
            cells.append(Cell(where, {"distill": {**arch, "seed": seed, "cut_selection": "map"},
                                      "baselines": baselines},
                              {"compare-oracle": ARCH_ORACLE}, {"cut": "map" + tag, "seed": seed}))
    for c in cells:  # the first cell that runs holds the shared data, curate and generate outputs
        c.copy_from = cells[0].run_dir
    return cells


def with_arch_oracle_ratios(rows: list[dict]) -> list[dict]:
    """Each cut student's rows with ``steps_to_{25,50}pct_ratio_vs_arch_oracle`` (and ``..._bound``): its steps to
    25% / 50% of the teacher over those of the ``oracle[arch]`` row of its seed, where there is one."""
    from ..pipeline.graph import with_oracle_ratios

    arch = {r.get("seed"): r for r in rows if r.get("method") == ARCH_ORACLE}
    out = []
    for r in rows:
        o = arch.get(r.get("seed"))
        if o is None or r.get("cut") == "fresh-init" or r.get("method") in ("oracle", ARCH_ORACLE):
            out.append(r)
            continue
        out.append(with_oracle_ratios([r], oracle=o, name="arch_oracle")[0])
    return out


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
                     quiet: bool = False, merge=(), kinds=DEFAULT_KINDS) -> dict:
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
                      heal_steps, kinds)
    rows = run_cells(base, cells, out_dir, jobs=jobs, quiet=quiet, console=Console(stderr=True, quiet=quiet))
    for r in rows:  # the student's size, as a fraction of the teacher's
        stage = r["method"].split("[")[0]  # oracle[arch] is the compare-oracle stage of its cell
        rec = Path(r["run_dir"]) / ("distill" if stage == "surgical" else f"compare-{stage}/model")
        if (rec / "distill.json").exists():
            from ..io import read_json

            r["size_ratio"] = (read_json(rec / "distill.json").get("student") or {}).get("size_ratio")
    intro = ("Students cut from the teacher (the map's cut and random cuts of the same size), their filter-only "
             "control, the fresh-init student and the oracle. Mean ± std over seeds; forget exact-match after the "
             "strong relearning attack at each budget (attacker's best lr per budget); steps ratios against the "
             "oracle of the same seed.")
    return _finish("cut-students", base, out_dir, rows, ("cut",), lambda r: r["seed"], meta, t0, intro, "cut",
                   earlier=earlier, per_seed_hook=with_arch_oracle_ratios)
