"""The experiment grid's pure parts: cells, stage selection, ratios against each seed's oracle, means over seeds,
the generate stage's proportional sampling and the random cut."""

from __future__ import annotations

import pytest

from surgical.experiment.cut import ARCH_ORACLE, cut_cells, with_arch_oracle_ratios
from surgical.experiment.grid import STRONG_ATTACK, aggregate, merge, needed_stages, with_ratios_by_seed
from surgical.experiment.leak import PENALTY_VARIANTS, leak_cells
from surgical.pipeline.graph import build_stages, prompt_quota


def test_merge_is_nested_and_leaves_the_base_alone():
    base = {"distill": {"seed": 0, "lr": 1.0}, "run_dir": "x"}
    out = merge(base, {"distill": {"seed": 3}, "curate": {"simulate_leak_rate": 0.1}})
    assert out == {"distill": {"seed": 3, "lr": 1.0}, "run_dir": "x", "curate": {"simulate_leak_rate": 0.1}}
    assert base["distill"]["seed"] == 0


def test_leak_cells_oracle_at_rate_zero_and_variants_in_their_own_dirs():
    cells = leak_cells([0.0, 0.05], [0, 1], STRONG_ATTACK, {"away": PENALTY_VARIANTS["away"]})
    by_dir = {}
    for c in cells:
        by_dir.setdefault(c.run_dir, []).append(c)
    assert sorted(by_dir) == sorted(["rate0-seed0", "rate0-seed0-away", "rate0.05-seed0", "rate0.05-seed0-away",
                                     "rate0-seed1", "rate0-seed1-away", "rate0.05-seed1", "rate0.05-seed1-away"])
    for c in cells:
        rate = c.tags["leak_rate"]
        assert ("compare-oracle" in c.rows) == (rate == 0 and not c.run_dir.endswith("-away"))
        assert c.overrides["curate"]["simulate_leak_rate"] == rate
        # the leak's choice is seeded only where something leaks, so the rate-0 cells share their data
        assert c.overrides["curate"]["simulate_leak_seed"] == (c.tags["seed"] if rate > 0 else 0)
        assert c.overrides["distill"]["preset"] == "surgical"  # whatever the base YAML's preset
        assert c.overrides["baselines"]["compare_verify"]["relearn_max_steps"] == STRONG_ATTACK["relearn_max_steps"]
        if c.run_dir.endswith("-away"):
            assert c.rows == {"compare-surgical": "surgical[away]"}
            assert c.copy_from == c.run_dir.removesuffix("-away")
            assert c.overrides["distill"]["penalty_forms"] == ["away"]
    # the leaky oracle: at every rate
    assert all("compare-oracle" in c.rows for c in leak_cells([0.0, 0.05], [0], {}, leaky_oracle=True))


def test_cut_cells_compare_the_map_cut_with_random_cuts_of_the_same_size():
    cells = cut_cells([0, 1], [0, 1, 2, 3], 64, 0.5, 2, {})
    names = [c.run_dir for c in cells]
    assert names == ["fresh-seed0", "map-seed0", "random0-seed0", "random1-seed0",
                     "fresh-seed1", "map-seed1", "random0-seed1", "random1-seed1"]
    fresh, mapcut, r0, r1 = cells[:4]
    assert fresh.overrides["distill"]["student_init"] == "config" and "compare-oracle" in fresh.rows
    assert mapcut.rows == {"compare-surgical": "surgical", "compare-filter-only": "filter-only"}
    for c in (mapcut, r0, r1):
        d = c.overrides["distill"]
        assert (d["student_init"], d["cut_forget_neurons"], d["mlp_keep_fraction"]) == ("teacher_layers", 64, 0.5)
    assert (r0.overrides["distill"]["cut_selection"], mapcut.overrides["distill"]["cut_selection"]) == ("random", "map")
    assert r0.overrides["distill"]["cut_seed"] != r1.overrides["distill"]["cut_seed"]
    assert {c.copy_from for c in cells} == {"fresh-seed0"}
    # UNDO-style noise on the cut: every cut cell (and so its filter-only control) gets it, the rows say so
    noisy = cut_cells([0], [0, 1, 2, 3], 64, 0.5, 1, {}, noise_alpha=0.3)
    assert [c.tags["cut"] for c in noisy] == ["fresh-init", "map+noise", "random+noise"]
    assert "noise_cut" not in noisy[0].overrides["distill"]
    for c in noisy[1:]:
        assert (c.overrides["distill"]["noise_cut"], c.overrides["distill"]["noise_alpha"]) == (True, 0.3)
    assert all("noise_cut" not in c.overrides["distill"] for c in cells)
    # a short heal: the cut students (and so their filter-only control) train that many steps, the references not
    short = cut_cells([0], [0, 1, 2, 3], 64, 1.0, 1, {}, heal_steps=150)
    assert [c.tags["cut"] for c in short] == ["fresh-init", "map/heal150", "random/heal150"]
    assert "max_steps" not in short[0].overrides["distill"]
    assert [c.overrides["distill"]["max_steps"] for c in short[1:]] == [150, 150]
    assert all("max_steps" not in c.overrides["distill"] for c in cells)


def test_arch_oracle_cells_train_the_cuts_architecture_from_fresh_weights():
    """`--cells arch-oracle`: the oracle of the cut's own size, in the map cell's directory (sharing its distill
    stage) unless a heal length or noise makes the cut's config differ; neither is part of the oracle."""
    both = cut_cells([0], [0, 1, 2, 3], 64, 0.5, 1, {}, kinds=("fresh", "map", "random", "arch-oracle"))
    assert [c.run_dir for c in both] == ["fresh-seed0", "map-seed0", "random0-seed0", "map-seed0"]
    arch = both[-1]
    assert arch.rows == {"compare-oracle": ARCH_ORACLE} and arch.tags == {"cut": "map", "seed": 0}
    assert arch.overrides["distill"] == both[1].overrides["distill"]
    only = cut_cells([0, 1], [0, 1, 2, 3], 64, 0.5, 1, {}, kinds=("arch-oracle",))
    assert [c.run_dir for c in only] == ["map-seed0", "map-seed1"]
    assert {c.copy_from for c in only} == {"map-seed0"}  # the first cell that runs holds the shared stages
    healed = cut_cells([0], [0, 1, 2, 3], 64, 1.0, 1, {}, noise_alpha=0.3, heal_steps=150, kinds=("arch-oracle",))
    d = healed[0].overrides["distill"]
    assert healed[0].run_dir == "arch-oracle-seed0" and healed[0].tags["cut"] == "map+noise/heal150"
    assert "max_steps" not in d and "noise_cut" not in d and d["mlp_keep_fraction"] == 1.0
    with pytest.raises(ValueError, match="expected some of"):
        cut_cells([0], [0], 64, 0.5, 1, {}, kinds=("mapp",))


def test_cut_students_get_steps_ratios_against_the_same_size_oracle():
    def row(method, seed, cut, steps50):
        return {"method": method, "seed": seed, "cut": cut, "steps_to_50pct_teacher": steps50,
                "steps_to_25pct_teacher": steps50, "relearn_max_steps": 2000, "forget_after_relearn": {}}

    rows = [row("oracle", 0, "fresh-init", None), row(ARCH_ORACLE, 0, "map", 1000), row("surgical", 0, "map", 500),
            row("surgical", 0, "fresh-init", 1500), row("surgical", 1, "map", 500), row("filter-only", 0, "map", None)]
    out = {(r["method"], r["seed"], r["cut"]): r for r in with_arch_oracle_ratios(rows)}
    s = out[("surgical", 0, "map")]
    assert s["steps_to_50pct_ratio_vs_arch_oracle"] == 0.5 and s["steps_to_50pct_ratio_vs_arch_oracle_bound"] == "exact"
    # never got there: the budget over the oracle's steps, a lower bound
    f = out[("filter-only", 0, "map")]
    assert f["steps_to_50pct_ratio_vs_arch_oracle"] == 2.0 and f["steps_to_50pct_ratio_vs_arch_oracle_bound"] == "lower"
    # the fresh-init rows, the oracles and a seed without its same-size oracle get nothing
    for key in (("surgical", 0, "fresh-init"), ("oracle", 0, "fresh-init"), (ARCH_ORACLE, 0, "map"),
                ("surgical", 1, "map")):
        assert "steps_to_50pct_ratio_vs_arch_oracle" not in out[key]
    agg = {(r["method"], r["cut"]): r for r in aggregate(with_arch_oracle_ratios(rows), ("cut",))}
    assert agg[("surgical", "map")]["steps_to_50pct_ratio_vs_arch_oracle"] == 0.5  # seed 1 has none: not a 0
    assert "steps_to_50pct_ratio_vs_arch_oracle" not in agg[("oracle", "fresh-init")]
    from surgical.experiment.report import markdown_table

    table = markdown_table(list(agg.values()), "cut", "cut")
    assert "same-size oracle" in table.splitlines()[0]
    assert "same-size oracle" not in markdown_table([agg[("oracle", "fresh-init")]], "cut", "cut")


def test_needed_stages_is_the_closure_in_graph_order():
    from surgical.config import demo_config

    stages = build_stages(demo_config())
    names = [s.name for s in needed_stages(stages, ["compare-surgical"])]
    assert names == ["data", "teacher", "map", "curate", "generate", "distill", "compare-surgical"]
    with pytest.raises(ValueError, match="no stage"):
        needed_stages(stages, ["compare-nothing"])


def _row(method, seed, steps50, after, rate=0.0, budget=1000):
    return {"method": method, "seed": seed, "leak_rate": rate, "steps_to_25pct_teacher": steps50,
            "steps_to_50pct_teacher": steps50, "relearn_max_steps": budget, "forget_exact_match": 0.0,
            "forget_mc": 0.25, "retain_ratio": 0.9 + seed / 100, "forget_after_relearn": after,
            "relearn_best_lr_by_budget": {"1000": 1e-3}}


def test_ratios_use_the_oracle_of_the_same_seed():
    rows = [_row("oracle", 0, 200, {"1000": 0.6}), _row("oracle", 1, 400, {"1000": 0.5}),
            _row("surgical", 0, 400, {"1000": 0.3}, rate=0.05), _row("surgical", 1, None, {"1000": 0.1}, rate=0.05)]
    out = with_ratios_by_seed(rows, lambda r: r["seed"])
    s0, s1 = out[2], out[3]
    assert s0["steps_to_50pct_ratio_vs_oracle"] == 2.0 and s0["steps_to_50pct_ratio_vs_oracle_bound"] == "exact"
    # never reached 50% within 1000 steps: the budget over the oracle's 400, a lower bound
    assert s1["steps_to_50pct_ratio_vs_oracle"] == 2.5 and s1["steps_to_50pct_ratio_vs_oracle_bound"] == "lower"
    assert out[0]["steps_to_50pct_ratio_vs_oracle"] == 1.0
    assert "steps_to_50pct_ratio_vs_oracle" not in rows[2]  # the inputs are not modified


def test_aggregate_means_and_spreads_over_seeds():
    rows = with_ratios_by_seed(
        [_row("oracle", 0, 200, {"1000": 0.6}), _row("oracle", 1, 400, {"1000": 0.5}),
         _row("surgical", 0, 400, {"1000": 0.3, "500": 0.1}, rate=0.05),
         _row("surgical", 1, None, {"1000": 0.1, "500": 0.0}, rate=0.05)], lambda r: r["seed"])
    agg = {(r["method"], r["leak_rate"]): r for r in aggregate(rows, ("leak_rate",))}
    s = agg[("surgical", 0.05)]
    assert s["seeds"] == [0, 1]
    assert s["forget_after_relearn"] == {"500": 0.05, "1000": 0.2}
    assert s["forget_after_relearn_spread"]["1000"] == {"std": pytest.approx(0.1414, abs=1e-4), "min": 0.1,
                                                        "max": 0.3, "n": 2}
    assert s["steps_to_50pct_ratio_vs_oracle"] == 2.25
    assert s["steps_to_50pct_ratio_vs_oracle_bound"] == "exact,lower"  # one seed only bounds it
    assert s["retain_ratio"] == pytest.approx(0.905)
    assert s["relearn_best_lr_by_budget"] == {"1000": [1e-3, 1e-3]}
    assert agg[("oracle", 0.0)]["forget_after_relearn"] == {"1000": 0.55}


def test_prompt_quota_proportional_keeps_the_mix():
    gold = ([{"domain": "add", "prompt": "p"}] * 7000 + [{"domain": "sub", "prompt": "p"}] * 7000
            + [{"domain": "mul", "prompt": "p"}] * 350 + [{"domain": "text", "text": "t"}] * 5)
    assert prompt_quota(gold, 500) == {"add": 500, "sub": 500, "mul": 350}
    assert prompt_quota(gold, 500, "proportional") == {"add": 500, "sub": 500, "mul": 25}
    assert prompt_quota(gold[:10], 500, "proportional") == {"add": 10}  # never more than there is


def test_random_cut_matches_the_map_cut_in_size():
    from surgical.distill.config import DistillConfig
    from surgical.distill.run import _build_student
    from surgical.models import decoder_layers, make_tiny_model, mlp_width

    model = make_tiny_model("llama", 64)
    width, n_layers = mlp_width(model), len(decoder_layers(model))
    fmap = {"forget_neurons": {str(i): list(range(width))[:3] for i in range(n_layers)}}
    keep = list(range(n_layers))
    cfg = DistillConfig(student_init="teacher_layers", keep_layers=keep, cut_forget_neurons=5, cut_selection="random",
                        cut_seed=1)
    s, info = _build_student(cfg, model, None, fmap)
    # the map lists 3 per layer, so the random cut chooses 3 per layer too; both then cut the lowest-norm neurons
    # down to width - 5, so both students are the same size
    assert info.cut_selection == "random" and all(len(v) == 5 for v in info.cut_neurons.values())
    _, info2 = _build_student(cfg, model, None, fmap)
    assert info2.cut_neurons == info.cut_neurons  # seeded
    _, info3 = _build_student(cfg.model_copy(update={"cut_seed": 2}), model, None, fmap)
    assert info3.cut_neurons != info.cut_neurons
    _, map_info = _build_student(cfg.model_copy(update={"cut_selection": "map"}), model, None, fmap)
    assert all({0, 1, 2} <= set(v) and len(v) == 5 for v in map_info.cut_neurons.values())
    assert map_info.cut_neurons != info.cut_neurons
    with pytest.raises(ValueError, match="needs a map"):
        _build_student(cfg.model_copy(update={"cut_selection": "map"}), model, None, {})
    assert mlp_width(s) == width - 5


def test_noise_cut_noises_the_cut_student_but_not_the_oracle():
    import torch

    from surgical.distill.config import DistillConfig
    from surgical.distill.run import _build_student
    from surgical.models import decoder_layers, make_tiny_model, mlp_width

    model = make_tiny_model("llama", 64)
    n_layers = len(decoder_layers(model))
    fmap = {"forget_neurons": {str(i): [0, 1, 2] for i in range(n_layers)}}
    cfg = DistillConfig(student_init="teacher_layers", keep_layers=list(range(n_layers)), cut_forget_neurons=3)
    before = [p.detach().clone() for p in model.parameters()]
    plain, _ = _build_student(cfg, model, None, fmap)
    noisy_cfg = cfg.model_copy(update={"noise_cut": True, "noise_alpha": 0.5, "noise_beta": 0.0})
    noisy, info = _build_student(noisy_cfg, model, None, fmap)
    assert mlp_width(noisy) == mlp_width(plain) and (info.noise_alpha, info.noise_beta) == (0.5, 0.0)
    # beta 0: theta <- (1 - alpha) * theta exactly, on the cut student's own weights
    for (name, a), (_, b) in zip(plain.named_parameters(), noisy.named_parameters(), strict=True):
        torch.testing.assert_close(b, 0.5 * a, msg=name)
    again, _ = _build_student(noisy_cfg.model_copy(update={"noise_beta": 0.02}), model, None, fmap)
    again2, _ = _build_student(noisy_cfg.model_copy(update={"noise_beta": 0.02}), model, None, fmap)
    assert all(torch.equal(x, y) for x, y in zip(again.parameters(), again2.parameters(), strict=True))  # seeded
    oracle, oinfo = _build_student(noisy_cfg.model_copy(update={"preset": "oracle"}), model, None, fmap)
    assert oinfo.noise_alpha is None  # the oracle's weights are fresh: nothing of the teacher's to noise
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # the noise never reaches the teacher


def test_leak_plot_pairs_each_point_with_its_own_spread(tmp_path, monkeypatch):
    """A rate without the largest budget's figure is left out of the line, and the error bars stay on their points."""
    from surgical.experiment import report

    seen = {}

    def fake_errorbar(self, xs, ys, yerr=None, **kw):
        seen[kw["label"]] = (list(xs), list(ys), [list(e) for e in yerr])

    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", fake_errorbar)
    rows = [{"method": "surgical", "leak_rate": 0.0, "forget_after_relearn": {"500": 0.1},
             "forget_after_relearn_spread": {"500": {"min": 0.1, "max": 0.1}}, "retain_ratio": 1.0},
            {"method": "surgical", "leak_rate": 0.05, "forget_after_relearn": {"500": 0.4, "1000": 0.6},
             "forget_after_relearn_spread": {"1000": {"min": 0.5, "max": 0.8}}, "retain_ratio": 0.9}]
    assert report.plot_leak_sweep(rows, tmp_path / "p.png").exists()
    xs, ys, (lo, hi) = seen["surgical"]
    assert xs == [0.05] and ys == [0.6]
    assert lo == [pytest.approx(0.1)] and hi == [pytest.approx(0.2)]
    # the oracle, trained at rate 0 only, is a reference line across the rates, not a point
    lines = []
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda self, y, **kw: lines.append((y, kw["label"])))
    oracle = {"method": "oracle", "leak_rate": 0.0, "forget_after_relearn": {"1000": 0.3},
              "forget_after_relearn_spread": {"1000": {"min": 0.2, "max": 0.4}}, "retain_ratio": 0.99}
    seen.clear()
    report.plot_leak_sweep([*rows, oracle], tmp_path / "q.png")
    assert "oracle" not in seen and (0.3, "oracle (perfect filter)") in lines and (0.99, "oracle (perfect filter)") in lines


def _record(tmp_path, name, rows, attack="strong", config=None):
    from surgical.experiment.grid import ATTACKS
    from surgical.io import write_json

    path = tmp_path / name
    write_json(path, {"rows": [], "per_seed_rows": rows, "attack": {"name": attack, **ATTACKS[attack]},
                      "leaky_oracle": False,
                      "provenance": {"surgical_version": "0.1.0", "config": config or {"distill": {"lr": 1.0}}}})
    return path


def test_merge_averages_earlier_seeds_and_a_row_measured_again_replaces_the_old(tmp_path):
    from types import SimpleNamespace

    from surgical.experiment import _finish, merged_rows
    from surgical.experiment.grid import ATTACKS

    # the base config gained a field since (leak_guard): not a conflict
    base = SimpleNamespace(model_dump=lambda mode=None: {"distill": {"lr": 1.0, "leak_guard": "off"}})
    meta = {"rates": [0.05], "seeds": [1], "attack": {"name": "strong", **ATTACKS["strong"]},
            "variants": ["guard"], "leaky_oracle": False}
    old = _record(tmp_path, "old.json", [_row("oracle", 0, 200, {"1000": 0.6}),
                                         _row("surgical", 0, 400, {"1000": 0.3}, rate=0.05),
                                         _row("surgical", 1, 400, {"1000": 0.9}, rate=0.05)])
    earlier = merged_rows([old], base, meta)
    fresh = [_row("oracle", 1, 400, {"1000": 0.5}), _row("surgical", 1, 400, {"1000": 0.1}, rate=0.05),
             _row("surgical[guard]", 1, 400, {"1000": 0.0}, rate=0.05)]
    rec = _finish("leak-sweep", base, tmp_path, fresh, ("leak_rate",), lambda r: r["seed"], meta, 0.0, "x", "rate",
                  earlier=earlier)
    agg = {(r["method"], r["leak_rate"]): r for r in rec["rows"]}
    assert agg[("surgical", 0.05)]["seeds"] == [0, 1]
    assert agg[("surgical", 0.05)]["forget_after_relearn"] == {"1000": 0.2}  # seed 1's 0.9 was replaced by 0.1
    assert agg[("surgical[guard]", 0.05)]["seeds"] == [1]
    assert rec["seeds"] == [0, 1] and rec["seeds_measured_here"] == [1] and rec["rates"] == [0.0, 0.05]
    assert rec["variants"] == ["guard"]
    assert rec["provenance"]["merged_from"][0]["rows"] == 3


def test_merge_refuses_rows_of_another_teacher_and_writes_this_runs_rows_alone(tmp_path):
    """The same config can give another world teacher on another machine: rows merged for a seed this run measures
    must have run against this run's teacher of that seed (weights hash), else the steps ratios would divide rows of
    two teachers. Rows that record no hash are merged with a warning, and the record says so."""
    from types import SimpleNamespace

    from surgical.experiment import _finish, merged_rows
    from surgical.experiment.grid import ATTACKS
    from surgical.io import read_json

    base = SimpleNamespace(model_dump=lambda mode=None: {"distill": {"lr": 1.0}})
    meta = {"rates": [0.05], "seeds": [1], "attack": {"name": "strong", **ATTACKS["strong"]}, "variants": [],
            "leaky_oracle": False}

    def tagged(row, teacher):
        return {**row, "teacher_weights": teacher} if teacher else row

    fresh = [tagged(_row("oracle", 1, 400, {"1000": 0.5}), "aaaa"),
             tagged(_row("surgical", 1, 400, {"1000": 0.1}, rate=0.05), "aaaa")]
    other = _record(tmp_path, "other.json", [tagged(_row("surgical", 1, 400, {"1000": 0.9}, rate=0.02), "bbbb"),
                                             tagged(_row("surgical", 0, 400, {"1000": 0.9}, rate=0.02), "bbbb")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"seed\(s\) 1 would mix rows measured against different teachers"):
        _finish("leak-sweep", base, out, fresh, ("leak_rate",), lambda r: r["seed"], meta, 0.0, "x", "rate",
                earlier=merged_rows([other], base, meta))
    alone = read_json(out / "leak-sweep.json")  # nothing measured is lost
    assert alone["merge_refused"] is True and {r["seed"] for r in alone["per_seed_rows"]} == {1}
    assert len(alone["per_seed_rows"]) == 2

    # another seed's rows may come from another teacher (they are averaged, never divided by this run's); a row of
    # seed 1 that this run measures again replaces the old one, so it mixes nothing
    same = _record(tmp_path, "again.json", [tagged(_row("surgical", 1, 400, {"1000": 0.9}, rate=0.05), "bbbb")])
    rec = _finish("leak-sweep", base, out, fresh, ("leak_rate",), lambda r: r["seed"], meta, 0.0, "x", "rate",
                  earlier=merged_rows([same], base, meta))
    agg = {(r["method"], r["leak_rate"]): r for r in rec["rows"]}
    assert "merge_refused" not in rec and agg[("surgical", 0.05)]["forget_after_relearn"] == {"1000": 0.1}
    same = _record(tmp_path, "same.json", [tagged(_row("surgical", 1, 400, {"1000": 0.3}, rate=0.02), "aaaa"),
                                           tagged(_row("surgical", 0, 400, {"1000": 0.3}, rate=0.05), "bbbb")])
    rec = _finish("leak-sweep", base, out, fresh, ("leak_rate",), lambda r: r["seed"], meta, 0.0, "x", "rate",
                  earlier=merged_rows([same], base, meta))
    assert "teacher_unchecked_seeds" not in rec and rec["rates"] == [0.0, 0.02, 0.05]
    old = _record(tmp_path, "old.json", [_row("surgical", 1, 400, {"1000": 0.3}, rate=0.02)])
    rec = _finish("leak-sweep", base, out, fresh, ("leak_rate",), lambda r: r["seed"], meta, 0.0, "x", "rate",
                  earlier=merged_rows([old], base, meta))
    assert rec["teacher_unchecked_seeds"] == [1]


def test_teacher_fingerprint_is_the_cell_teachers_weights(tmp_path):
    from surgical.experiment.grid import teacher_fingerprint
    from surgical.io import write_json

    run = tmp_path / "run"
    assert teacher_fingerprint(run) is None  # no teacher stage
    tdir = tmp_path / "teacher-model"
    tdir.mkdir()
    (tdir / "config.json").write_text("{}")
    (tdir / "model.safetensors").write_bytes(b"weights one")
    write_json(run / "teacher" / "location.json", {"teacher_dir": str(tdir)})
    first = teacher_fingerprint(run)
    assert first and first == teacher_fingerprint(run)
    (tdir / "model.safetensors").write_bytes(b"weights two")
    assert teacher_fingerprint(run) not in (None, first)
    # a user's teacher: the content hash its teacher stage recorded (not hashed again per cell)
    write_json(run / "teacher" / "teacher.json", {"model": str(tdir), "sha256": "ab" * 32})
    assert teacher_fingerprint(run) == "ab" * 8
    write_json(run / "teacher" / "teacher.json", {"model": "org/hub-id", "sha256": None})
    write_json(run / "teacher" / "location.json", {"teacher_dir": "org/hub-id"})
    assert teacher_fingerprint(run) is None  # nothing to hash: such rows are merged unchecked


def test_merge_refuses_another_experiment_or_a_file_it_did_not_write(tmp_path):
    from types import SimpleNamespace

    from surgical.experiment import merged_rows
    from surgical.experiment.grid import ATTACKS

    base = SimpleNamespace(model_dump=lambda mode=None: {"distill": {"lr": 1.0}})
    meta = {"attack": {"name": "strong", **ATTACKS["strong"]}, "leaky_oracle": False}
    with pytest.raises(ValueError, match="attack"):
        merged_rows([_record(tmp_path, "a.json", [], attack="compare")], base, meta)
    with pytest.raises(ValueError, match="base config differs in distill.lr"):
        merged_rows([_record(tmp_path, "b.json", [], config={"distill": {"lr": 2.0}})], base, meta)
    (tmp_path / "c.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a record written by surgical"):
        merged_rows([tmp_path / "c.json"], base, meta)
    with pytest.raises(ValueError, match="cannot read"):
        merged_rows([tmp_path / "missing.json"], base, meta)


def test_merge_refuses_a_record_written_before_a_knob_this_run_sets(tmp_path):
    """A knob added since an earlier record was written: that run ran at the knob's default, so merging it is
    fine only while this run keeps the default too (a record without map.ig_steps is not an IG map's)."""
    from surgical.config import demo_config, with_overrides
    from surgical.experiment import merged_rows
    from surgical.experiment.grid import ATTACKS

    tmp = tmp_path
    base = with_overrides(demo_config(), ["map.ig_steps=0"])  # the schema's default
    old = base.model_dump(mode="json")
    del old["map"]["ig_steps"]
    meta = {"attack": {"name": "strong", **ATTACKS["strong"]}, "leaky_oracle": False}
    path = _record(tmp, "old.json", [], config=old)
    assert merged_rows([path], base, meta)[0] == []  # the default: the same experiment
    # the demo config maps with integrated gradients (steps per site): not the experiment the old record ran
    assert demo_config().map.ig_steps == {"mlp": 1, "heads": 4, "resid": 1}
    with pytest.raises(ValueError, match="base config differs in map.ig_steps"):
        merged_rows([path], demo_config(), meta)
    # a field only the old record has (removed since) is not compared
    old["map"]["a_knob_removed_since"] = 3
    assert merged_rows([_record(tmp, "older.json", [], config=old)], base, meta)[0] == []


def test_guard_variant_trains_its_own_filter_only_control():
    cells = {c.run_dir: c for c in leak_cells([0.05], [0], STRONG_ATTACK, {"guard": PENALTY_VARIANTS["guard"]})}
    g = cells["rate0.05-seed0-guard"]
    assert g.rows == {"compare-surgical": "surgical[guard]", "compare-filter-only": "filter-only[guard]"}
    assert g.overrides["distill"]["leak_guard"] == "probe" and g.copy_from == "rate0.05-seed0"
    assert "leak_guard" not in cells["rate0.05-seed0"].overrides["distill"]


def test_cut_experiment_merges_earlier_seeds_only_for_the_same_cut(tmp_path, monkeypatch):
    """`experiment cut --merge`: seeds measured in another session are averaged in; a record of another cut size
    is refused before the long run starts."""
    from types import SimpleNamespace

    import surgical.experiment.cut as cut_mod
    from surgical.experiment.grid import ATTACKS
    from surgical.io import read_json, write_json

    base = SimpleNamespace(model_dump=lambda mode=None: {"distill": {"lr": 1.0}},
                           teacher=SimpleNamespace(model=None, num_layers=2))

    def row(method, seed, cut, after):
        r = _row(method, seed, 400, {"1000": after})
        r.pop("leak_rate")
        return {**r, "cut": cut, "run_dir": str(tmp_path / "none")}

    old = tmp_path / "old.json"
    meta = {"random_cuts": 1, "cut_neurons": 64, "keep_fraction": 0.5, "keep_layers": [0, 1],
            "attack": {"name": "strong", **ATTACKS["strong"]}}
    write_json(old, {"rows": [], "per_seed_rows": [row("oracle", 0, "fresh-init", 0.6), row("surgical", 0, "map", 0.2)],
                     **meta, "provenance": {"surgical_version": "0.1.0", "config": {"distill": {"lr": 1.0}}}})
    ran = []
    monkeypatch.setattr(cut_mod, "run_cells", lambda *a, **k: ran.append(1) or
                        [row("oracle", 1, "fresh-init", 0.5), row("surgical", 1, "map", 0.4)])
    rec = cut_mod.run_cut_students(base, tmp_path / "out", [1], merge=[old], quiet=True)
    agg = {(r["method"], r["cut"]): r for r in rec["rows"]}
    assert agg[("surgical", "map")]["seeds"] == [0, 1]
    assert agg[("surgical", "map")]["forget_after_relearn"] == {"1000": pytest.approx(0.3)}
    assert rec["seeds"] == [0, 1] and rec["seeds_measured_here"] == [1] and "rates" not in rec
    assert read_json(tmp_path / "out" / "cut-students.json")["provenance"]["merged_from"][0]["rows"] == 2
    with pytest.raises(ValueError, match="cut_neurons"):
        cut_mod.run_cut_students(base, tmp_path / "out2", [1], cut_neurons=32, merge=[old], quiet=True)
    with pytest.raises(ValueError, match="noise_alpha"):  # a noised cut is another experiment
        cut_mod.run_cut_students(base, tmp_path / "out3", [1], noise_alpha=0.5, merge=[old], quiet=True)
    with pytest.raises(ValueError, match="heal_steps"):  # so is a cut healed for fewer steps
        cut_mod.run_cut_students(base, tmp_path / "out4", [1], heal_steps=150, merge=[old], quiet=True)
    assert len(ran) == 1  # the refused merges never started the run
