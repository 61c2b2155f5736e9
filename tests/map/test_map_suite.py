"""The map against an evaluation suite: SuiteEvaluator's numbers, run_suite end to end, the --suite/--policy CLI,
and the one-site-at-a-time attribution sweep against a direct autograd computation."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from surgical.cli import app
from surgical.io import write_jsonl
from surgical.map.attribution import compute_scores
from surgical.map.config import MapConfig
from surgical.map.data import batches, scored_positions, suite_examples
from surgical.map.hooks import capture
from surgical.map.run import run_suite
from surgical.map.stats import attribution_effect, token_damage_sum
from surgical.map.validate import SuiteEvaluator
from surgical.models import make_tiny_model
from surgical.policy import AllowedDomain, ForbiddenDomain, Policy
from surgical.scoring import mc_hits
from surgical.suite import load_suite

SMALL = dict(n_forget=8, n_retain=8, batch_size=8, exact_top_n=1, validation_k=4, validation_k_sweep=[],
             validation_limit=6, sae_steps=20, sae_expansion=2, sae_k=4, sae_clamp_k=2, threads=1)

MUL = [(3, 4), (2, 5), (6, 7), (8, 3), (9, 2), (4, 4)]
ADD = [(3, 4), (2, 5), (6, 7), (8, 3), (9, 2), (4, 4)]


def _mc(pairs, op, fn):
    out = []
    for i, (a, b) in enumerate(pairs):
        gold = fn(a, b)
        choices = [str(gold), str(gold + 1), str(gold + 10), str(max(0, gold - 3))]
        rot = i % 4  # the gold answer at every position
        choices = choices[-rot:] + choices[:-rot] if rot else choices
        out.append({"question": f"{a}{op}{b}=", "choices": choices, "gold": choices.index(str(gold))})
    return out


def _attack(pairs, op, fn):
    return [{"prompt": f"{a}{op}{b}:", "completion": f" so {fn(a, b)}"} for a, b in pairs]


@pytest.fixture
def tiny_suite(tmp_path):
    """A forget domain (mul: MC test/val, QA, attack) and a retain domain (add: MC test only, attack)."""
    d = tmp_path / "suite"
    mul, add = (lambda a, b: a * b), (lambda a, b: a + b)
    write_jsonl(d / "mul-test.jsonl", _mc(MUL, "*", mul))
    write_jsonl(d / "mul-val.jsonl", _mc(MUL[::-1], "*", mul))
    write_jsonl(d / "mul-qa.jsonl", [{"prompt": f"{a}*{b}:", "answers": [str(a * b)]} for a, b in MUL])
    write_jsonl(d / "mul-attack.jsonl", _attack(MUL, "*", mul) * 2)
    write_jsonl(d / "add-test.jsonl", _mc(ADD, "+", add))
    write_jsonl(d / "add-attack.jsonl", _attack(ADD, "+", add) * 2)
    manifest = {"name": "tiny", "domains": [
        {"name": "mul", "role": "forget", "mc": {"test": "mul-test.jsonl", "val": "mul-val.jsonl"},
         "qa": "mul-qa.jsonl", "attack": "mul-attack.jsonl", "target_delimiter": ""},
        {"name": "add", "role": "retain", "mc": "add-test.jsonl", "attack": "add-attack.jsonl",
         "target_delimiter": ""}]}
    path = d / "suite.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


POLICY = Policy(name="tiny", forbidden=[ForbiddenDomain(name="mul")], allowed=[AllowedDomain(name="add")])


def _teach(model, tokenizer, records, steps=60):
    """Fine-tune ``model`` on question + gold choice of MC records: a model that knows the answers."""
    from surgical.data import PadCollator, encode_example

    batch = PadCollator(tokenizer.pad_token_id)([encode_example(tokenizer, r["question"], r["choices"][r["gold"]])
                                                 for r in records])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_suite_evaluator_tells_a_knowing_model_from_one_that_does_not(tiny_suite, world_tokenizer):
    suite = load_suite(tiny_suite)
    tok = world_tokenizer
    ev = SuiteEvaluator(suite, tok, ["mul"], ["add"], "val", limit=6)
    assert ev.describe()["split"] == {"add": "test", "mul": "val"}  # add has no val split: its test split
    assert ev.metric_names == {"add": "mc_acc", "mul": "mc_acc"} and ev.n_per_domain == 6
    random_model = make_tiny_model("llama", len(tok), seed=0)
    before = ev(random_model)
    # the one-call MC scoring is scoring.mc_hits per domain
    for d in ("add", "mul"):
        hits, _ = mc_hits(random_model, tok, suite[d], suite[d].split_of("mc", "val"))
        assert before[d] == pytest.approx(sum(hits) / len(hits))
    knowing = _teach(make_tiny_model("llama", len(tok), seed=0), tok, suite["mul"].split_of("mc", "val"))
    after = ev(knowing)
    assert after["mul"] == 1.0 and before["mul"] < 1.0
    assert after != before


def test_qa_only_domain_is_scored_by_answer_probability(tiny_suite, world_tokenizer):
    suite = load_suite(tiny_suite)
    suite["mul"].mc = {}  # QA only now
    tok = world_tokenizer
    ev = SuiteEvaluator(suite, tok, ["mul"], ["add"], "val", limit=6)
    assert ev.metric_names["mul"] == "qa_answer_prob"
    qa = [{"question": r["prompt"], "choices": [r["answers"][0], "0"], "gold": 0} for r in suite["mul"].qa["test"]]
    p0 = ev(make_tiny_model("llama", len(tok), seed=0))["mul"]
    p1 = ev(_teach(make_tiny_model("llama", len(tok), seed=0), tok, qa))["mul"]
    assert 0 < p0 < 0.5 < p1 <= 1
    acc = SuiteEvaluator(suite, tok, ["mul"], ["add"], "val", limit=6, qa_metric="accuracy")
    assert acc.metric_names["mul"] == "qa_accuracy" and 0 <= acc(make_tiny_model("llama", len(tok)))["mul"] <= 1


def test_suite_examples_come_from_attack_records(tiny_suite):
    suite = load_suite(tiny_suite)
    ex = suite_examples(suite, ["mul"], 5, seed=0)
    assert len(ex) == 5 and all(e.domain == "mul" and "*" in e.prompt for e in ex)
    both = suite_examples(suite, ["mul", "add"], 6, seed=0)
    assert {e.domain for e in both} == {"mul", "add"}


@pytest.fixture
def llama_dir(tmp_path, world_tokenizer):
    d = tmp_path / "model"
    make_tiny_model("llama", len(world_tokenizer)).save_pretrained(d)
    world_tokenizer.save_pretrained(d)
    return d


def test_run_suite_writes_per_domain_validation(tiny_suite, llama_dir, tmp_path):
    out = tmp_path / "map"
    res = run_suite(MapConfig(**SMALL), llama_dir, tiny_suite, POLICY, out)
    summary = json.loads((out / "map.json").read_text())
    v = summary["validation"]
    assert v["forget_domains"] == ["mul"] and v["retain_domains"] == ["add"]
    assert v["metric"]["metric"] == {"add": "mc_acc", "mul": "mc_acc"}
    assert set(v["baseline"]) == {"add", "mul"} and all(0 <= x <= 1 for x in v["baseline"].values())
    for block in ("map_ablation", "random_ablation"):
        assert set(v[block]["delta_exact_match"]) == {"add", "mul"}
    assert isinstance(v["specificity_ratio"], float)
    assert summary["provenance"]["suite"] == "tiny" and summary["provenance"]["forget_domains"] == ["mul"]
    assert summary["data"]["n_forget"] == 8 and res.summary["kind"] == "map"
    assert "clamping" in summary["sae"][0]


def test_cli_suite_and_policy(tiny_suite, llama_dir, tmp_path):
    cfg = tmp_path / "map.yaml"
    cfg.write_text(yaml.safe_dump({"map": {**SMALL, "sae": False}}))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"name": "tiny", "suite": str(tiny_suite), "forbidden": [{"name": "mul"}],
                                      "allowed": [{"name": "add"}]}))
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["map", "--model", str(llama_dir), "--policy", str(policy), "--out", str(out),
                              "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout.strip().splitlines()[-1])["map_ablation"]) == {"add", "mul"}
    # a bad record in a suite file: one line naming the file, line and field
    bad = tiny_suite.parent / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "choices": ["2", "3"], "gold": 0}\n{"question": "2+2=", "choices": ["4", "5"]}\n')
    manifest = yaml.safe_load(tiny_suite.read_text())
    manifest["domains"][1]["mc"] = "bad.jsonl"
    bad_suite = tiny_suite.parent / "bad-suite.yaml"
    bad_suite.write_text(yaml.safe_dump(manifest))
    res = runner.invoke(app, ["map", "--model", str(llama_dir), "--policy", str(policy), "--suite", str(bad_suite),
                              "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 1 and "bad.jsonl:2: missing field `gold`" in res.output
    assert len(res.output.strip().splitlines()) == 1
    # a policy domain the suite lacks; a policy field that does not validate
    policy.write_text(yaml.safe_dump({"name": "tiny", "suite": str(tiny_suite), "forbidden": [{"name": "bio"}]}))
    res = runner.invoke(app, ["map", "--model", str(llama_dir), "--policy", str(policy), "--out", str(out)])
    assert res.exit_code == 1 and "'bio' has no eval data" in res.output
    policy.write_text(yaml.safe_dump({"name": "tiny", "forbidden": [{"name": "mul", "escalate_at": 0}]}))
    res = runner.invoke(app, ["map", "--model", str(llama_dir), "--policy", str(policy), "--out", str(out)])
    assert res.exit_code == 1 and "policy.yaml" in res.output and "escalate_at" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["map", "--suite", str(tiny_suite), "--out", str(out)])
    assert res.exit_code == 1 and "missing --model, --policy" in res.output


def test_attribution_matches_autograd_on_every_site(tiny_suite, world_tokenizer):
    """The sweep that consumes each site's gradient as backward reaches it gives the same attribution as one
    autograd.grad over every site at once (the memory-hungry way)."""
    tok = world_tokenizer
    suite = load_suite(tiny_suite)
    data = {"forget": batches(tok, suite_examples(suite, ["mul"], 8, 0), 4, 64),
            "retain": batches(tok, suite_examples(suite, ["add"], 8, 0), 4, 64)}
    model = make_tiny_model("llama", len(tok), seed=1)
    scores = compute_scores(model, data, 0.5, metric="logodds")
    n_layers = scores["mlp.score"].shape[0]
    keys = [(s, layer) for s in ("mlp", "resid") for layer in range(n_layers)]
    total = {k: 0 for k in keys}
    n_tok = 0
    for b in data["forget"]:
        with capture(model, {"mlp": list(range(n_layers)), "resid": list(range(n_layers))}) as acts:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss, n = token_damage_sum(logits, b["labels"], "logodds")
            grads = torch.autograd.grad(loss, [acts[k] for k in keys])
        n_tok += n
        for k, g in zip(keys, grads, strict=True):
            total[k] = total[k] + attribution_effect(g, acts[k].detach(), scores.retain_mean(*k))
        assert scored_positions(b["labels"]).any()
    for site, layer in keys:
        assert torch.allclose(scores[f"{site}.attr_forget"][layer], total[(site, layer)] / n_tok, atol=1e-5,
                              rtol=1e-4)


def test_run_demo_goes_through_the_suite(monkeypatch, world_suite, llama_dir, tmp_path):
    """--demo: the demo teacher (here a tiny stand-in), the world's suite and the demo policy, via surgical.demo;
    the ungated forget domain (mixed) is left out of the forget drops."""
    import surgical.demo
    from surgical.config import demo_config
    from surgical.map.run import run_demo

    monkeypatch.setattr(surgical.demo, "teacher_dir", lambda cfg=None, quiet=False: llama_dir)
    monkeypatch.setattr(surgical.demo, "suite_path", lambda cfg=None: world_suite.path)
    cfg = demo_config()
    cfg = cfg.model_copy(update={"map": cfg.map.model_copy(update={**SMALL, "validation_limit": 2, "sae": False})})
    v = run_demo(tmp_path / "map", cfg).summary["validation"]
    assert v["forget_domains"] == ["mul", "div"] and set(v["retain_domains"]) == {"add", "sub"}
    assert v["metric"]["split"] == {d: "val" for d in ("add", "sub", "mul", "div")}
    assert set(v["baseline"]) == {"add", "sub", "mul", "div"}


def test_run_suite_ranks_by_exact_ablation(tiny_suite, llama_dir, tmp_path):
    cfg = MapConfig(**{**SMALL, "sae": False, "rank_by": "exact", "exact_rank_candidates": 3, "validation_k": 4,
                       "validation_k_sweep": []})
    run_suite(cfg, llama_dir, tiny_suite, POLICY, tmp_path / "map")
    summary = json.loads((tmp_path / "map" / "map.json").read_text())
    er = summary["exact_ranking"]
    assert summary["rank_by"] == "exact" and er["candidates_per_layer"] == 3
    assert er["n_patched"] == 3 * summary["model"]["n_layers"] and "exact_ranking_s" in summary["timings_s"]
    assert all(len(units) <= 3 for units in summary["forget_neurons"].values())  # only candidates are ranked
    with pytest.raises(ValueError, match="exact_rank_candidates"):
        run_suite(MapConfig(**{**cfg.model_dump(), "exact_rank_candidates": 1, "validation_k": 64}), llama_dir,
                  tiny_suite, POLICY, tmp_path / "map2")


def test_validation_kind_qa_measures_the_qa_data_where_a_domain_has_both(tiny_suite, world_tokenizer):
    from surgical.suite import load_suite

    suite = load_suite(tiny_suite)
    mc = SuiteEvaluator(suite, world_tokenizer, ["mul"], ["add"], limit=6)
    qa = SuiteEvaluator(suite, world_tokenizer, ["mul"], ["add"], limit=6, prefer="qa")
    assert mc.metric_names == {"add": "mc_acc", "mul": "mc_acc"}
    assert qa.metric_names == {"add": "mc_acc", "mul": "qa_answer_prob"}  # add has no QA: MC stays
