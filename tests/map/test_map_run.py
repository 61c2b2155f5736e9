"""The map end to end on tiny models: every family through the CLI, the output files reloading, bad input."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from surgical.cli import app
from surgical.io import write_jsonl
from surgical.map.config import MapConfig
from surgical.map.data import suite_examples
from surgical.map.run import MAP_FILES, run
from surgical.map.validate import SuiteEvaluator
from surgical.models import make_tiny_model

SMALL = dict(n_forget=12, n_retain=12, batch_size=12, exact_top_n=2, validation_k=4, validation_k_sweep=[2],
             validation_limit=3, sae_steps=30, sae_expansion=2, sae_k=4, sae_clamp_k=2, threads=1)


def test_run_writes_files_that_reload(world, world_suite, tmp_path):
    model = make_tiny_model("llama", len(world.tokenizer))
    forget = suite_examples(world_suite, ("mul", "div"), 12, seed=0)
    retain = suite_examples(world_suite, ("add", "sub"), 12, seed=1)
    # the suite's own metric: MC accuracy on 3 val items per domain
    evaluator = SuiteEvaluator(world_suite, world.tokenizer, ("mul", "div"), ("add", "sub"), "val", limit=3)
    result = run(MapConfig(**SMALL), model, world.tokenizer, forget, retain, tmp_path, evaluator)
    for name in MAP_FILES + ("ablation_curve.png",):
        assert (tmp_path / name).stat().st_size > 0, name

    summary = json.loads((tmp_path / "map.json").read_text())
    assert summary == json.loads(json.dumps(result.summary, default=float)) or summary["kind"] == "map"
    v = summary["validation"]
    for block in ("map_ablation", "random_ablation"):
        assert set(v[block]["delta_exact_match"]) == {"add", "sub", "mul", "div"}
    assert isinstance(v["specificity_ratio"], float)
    assert v["metric"]["metric"] == {d: "mc_acc" for d in ("add", "sub", "mul", "div")}
    assert v["metric"]["split"] == {d: "val" for d in ("add", "sub", "mul", "div")}
    assert all(0 <= x <= 1 for x in v["baseline"].values())
    assert [s["k"] for s in v["sweep"]] == [2, 4]
    assert sum(v["units_per_layer"].values()) == 4
    assert isinstance(summary["attribution_vs_exact_spearman"], float)
    assert summary["attribution"] == {"method": "attribution_patching"}  # ig_steps 0: no integrated gradients
    assert summary["spine"] == sorted(summary["spine"]) and len(summary["spine"]) == 1  # ceil(0.5 * 2 layers)
    assert len(summary["recommended_layers"]) == 2
    assert set(summary["forget_neurons"]) == {"0", "1"}
    assert summary["provenance"]["config"]["validation_k"] == 4
    sae = summary["sae"][0]
    assert sae["quality"]["l0"] <= 4 and 0 <= sae["quality"]["fvu_heldout"]
    assert {"zero", "negative"} <= set(v["sae_clamping"][0])
    assert v["sae_clamping"][0]["negative"]["scale"] == -4.0

    tensors = load_file(str(tmp_path / "map.safetensors"))
    assert tensors["mlp.score"].shape == (2, 64) and tensors["heads.score"].shape == (2, 4)
    assert tensors["resid.selectivity"].shape == (2, 32)
    assert not any(k.endswith("_atp") for k in tensors)
    layer = sae["layer"]
    assert tensors[f"sae.layer{layer}.W_dec"].shape == (64, 32)
    # map.json's ranking is the safetensors' score, re-derivable from the file
    for lyr, units in summary["forget_neurons"].items():
        row = tensors["mlp.score"][int(lyr)]
        assert units == [int(u) for u in row.argsort(descending=True)[:4] if row[u] > 0]
    assert (tmp_path / "mlp_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert "Specificity ratio" in (tmp_path / "map.md").read_text()


@pytest.fixture
def map_config_file(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump({"map": {**SMALL, "sae": False}}))
    return path


def _world_files(world_suite, tmp_path):
    def recs(domains, seed):
        return [{"prompt": e.prompt, "completion": e.completion, "domain": e.domain}
                for e in suite_examples(world_suite, domains, 16, seed)]

    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    write_jsonl(forget, recs(("mul", "div"), 0))
    write_jsonl(retain, recs(("add", "sub"), 1))
    return forget, retain


def test_cli_maps_every_family(family, tiny_model_dir, world_suite, tmp_path, map_config_file):
    torch.set_num_threads(1)
    forget, retain = _world_files(world_suite, tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["map", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain",
                                   str(retain), "--out", str(out), "--config", str(map_config_file), "--json"])
    assert res.exit_code == 0, res.output
    headline = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(headline["map_ablation"]) == {"mul", "div", "add", "sub"}
    summary = json.loads((out / "map.json").read_text())
    assert summary["sae"] == [] and "specificity_ratio" in summary["validation"]
    # bare JSONL: the held-out records are scored as QA domains by the reference's probability
    assert set(summary["validation"]["metric"]["metric"].values()) == {"qa_answer_prob"}
    assert summary["provenance"]["inputs"]["forget"]["sha256"]


def test_cli_bad_input_is_one_clear_line(world_suite, tmp_path, map_config_file):
    forget, retain = _world_files(world_suite, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1:", "completion": " 2"}\n{"prompt": 3, "completion": "x"}\n')
    runner = CliRunner()
    res = runner.invoke(app, ["map", "--model", str(tmp_path), "--forget", str(bad), "--retain", str(retain),
                              "--out", str(tmp_path / "o"), "--config", str(map_config_file)])
    assert res.exit_code == 1
    assert "bad.jsonl:2: field 'prompt'" in res.output
    res = runner.invoke(app, ["map", "--forget", str(forget), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "missing --model, --retain" in res.output
    res = runner.invoke(app, ["map", "--model", str(tmp_path / "nope"), "--forget", str(forget), "--retain",
                              str(retain), "--out", str(tmp_path / "o"), "--config", str(map_config_file)])
    assert res.exit_code == 1 and "no such file or directory" in res.output and len(res.output.splitlines()) == 1
