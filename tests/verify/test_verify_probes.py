"""Every probe on tiny random-init models of the four families."""

import numpy as np
import pytest
import torch

from surgical.models import decoder_layers, layer_output
from surgical.verify.config import VerifyConfig
from surgical.verify.incontext import in_context_use, with_facts
from surgical.verify.jailbreaks import load_families, run_battery
from surgical.verify.latent import (
    ablated,
    direction_ablation_attack,
    last_token_states,
    latent_report,
    logit_lens,
    probe_accuracy,
)
from surgical.verify.probes import knowledge_probes
from surgical.verify.quant_attack import QuantizationUnavailable, quantization_attack, quantize_copy
from surgical.verify.relearn import finetune_curve, relearning_attack
from surgical.world.suite import facts_for, qa_record

TINY = VerifyConfig(n_items=6, bootstrap_samples=50, jailbreak_items=3, in_context_items=3, relearn_examples=8,
                    relearn_max_steps=4, relearn_lrs=[1e-3, 1e-2], relearn_eval_steps=[2], relearn_eval_items=3,
                    probe_train_items=30, probe_test_items=12, ablation_items=6, threads=1)


def test_knowledge_probes(tiny_model, world_tokenizer, world, world_suite):
    res = knowledge_probes(tiny_model, world_tokenizer, world_suite, ["mul", "add"], "test", 6, 50, 0)
    for d in ("mul", "add"):
        for metric in ("exact_match", "mc", "mc_norm", "perplexity"):
            c = res[d][metric]
            assert c["ci_low"] <= c["value"] <= c["ci_high"] and c["n"] == 6
        assert res[d]["perplexity"]["value"] > 1.0
    assert res["mul"]["exact_match"]["value"] == 0.0  # a random model does not multiply


def test_jailbreak_battery_runs_every_template(tiny_model, world_tokenizer, world, world_suite):
    fams = [f for f in load_families() if f.family in ("many_shot", "prefix_injection")]
    res = run_battery(tiny_model, world_tokenizer, world_suite, fams, ["mul"], ["add"], "test", 2, 32, 20, 0)
    assert set(res) == {"many_shot", "prefix_injection"}
    assert res["many_shot"]["templates"]["many_shot"]["shots_used_mean"] >= 1  # 256 positions fit a few shots
    for fam in res.values():
        assert {"forget", "forget_mc", "retain", "worst_template"} <= set(fam)
        for t in fam["templates"].values():
            assert t["examples"] and all(e["redacted"] and "generation" not in e for e in t["examples"])


def test_in_context_facts(world, world_suite):
    from surgical.world import Difficulty, make_problem

    mul = make_problem("mul", (41, 4), Difficulty(mul_digits=2, mul_multiplier_digits=1))  # 2-digit operands, whatever the demo world uses
    assert facts_for(mul) == ["1*4=4", "4*4=16"]  # the products, not the carries nor the answer 164
    assert with_facts(qa_record(mul)) == "Facts: 1*4=4; 4*4=16\n" + mul.worked_prompt
    div = make_problem("div", (258, 6), Difficulty(div_quotient_digits=2, div_divisor_digits=1))
    assert facts_for(div) == ["2/6=0 r2", "25/6=4 r1", "18/6=3 r0"]


def test_in_context_use_runs(tiny_model, world_tokenizer, world, world_suite):
    res = in_context_use(tiny_model, world_tokenizer, world_suite, ["mul", "div"], "test", 3, 20, 0)
    assert set(res["div"]) == {"without_facts", "with_facts"}


def test_linear_probe_separable_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = np.eye(3)[y] * 5 + rng.normal(0, 0.1, (90, 3))
    assert all(probe_accuracy(x[:60], y[:60].tolist(), x[60:], y[60:].tolist()))


def test_latent_report_and_logit_lens(tiny_model, world_tokenizer, world, world_suite):
    n_layers = len(decoder_layers(tiny_model))
    h = last_token_states(tiny_model, world_tokenizer, ["41*4:", "3+4:"])
    assert h.shape == (n_layers, 2, tiny_model.config.hidden_size if hasattr(tiny_model.config, "hidden_size")
                       else tiny_model.config.n_embd)
    # padding must not change a prompt's last-token state
    alone = last_token_states(tiny_model, world_tokenizer, ["3+4:"])
    assert np.allclose(h[:, 1], alone[:, 0], atol=1e-4)
    rep = latent_report(tiny_model, world_tokenizer, world_suite, ["mul", "div"], ["add"], TINY, {"ref": tiny_model})
    assert set(rep["by_layer"]) == {"model", "random_init", "ref"}
    assert all(len(v) == n_layers for v in rep["by_layer"].values())
    lens = logit_lens(tiny_model, world_tokenizer, world_suite["add"].perplexity["test"][:3])
    assert len(lens) == n_layers and all(0.0 <= a <= 1.0 for a in lens)


def test_ablation_hooks_remove_the_direction(tiny_model, world_tokenizer, world, world_suite):
    hidden = tiny_model.get_input_embeddings().weight.shape[1]
    n_layers = len(decoder_layers(tiny_model))
    dirs = np.zeros((n_layers, hidden))
    dirs[:, 0] = 1.0
    seen = []
    ids = world_tokenizer("41*4:", return_tensors="pt")["input_ids"]
    with ablated(tiny_model, dirs), torch.no_grad():
        # registered after the ablation hook, so it sees the ablated output of the last layer
        handle = decoder_layers(tiny_model)[-1].register_forward_hook(lambda m, i, o: seen.append(layer_output(o)))
        tiny_model(input_ids=ids)
    handle.remove()
    with torch.no_grad():
        clean = tiny_model(input_ids=ids, output_hidden_states=True)  # the ablation hooks are gone afterwards
    assert len(seen) == 1
    assert not torch.allclose(clean.hidden_states[1][..., 0], torch.zeros_like(clean.hidden_states[1][..., 0]))
    assert torch.allclose(seen[0][..., 0], torch.zeros_like(seen[0][..., 0]), atol=1e-6)
    res = direction_ablation_attack(tiny_model, world_tokenizer, world_suite, ["mul"], ["add"], TINY, None)
    assert "forget" in res and "forget_mc" in res and res["by_domain"]["forget"]["mul"]["exact_match"]["n"] == 6


def test_quantization_attack(world_tokenizer, world, world_suite):
    from surgical.models import make_tiny_model

    model = make_tiny_model("llama", len(world_tokenizer))
    q8, n8 = quantize_copy(model, "int8", "quanto")
    q4, _ = quantize_copy(model, "int4", "quanto")
    ids = world_tokenizer("41*4:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref, l8, l4 = (m(input_ids=ids).logits for m in (model, q8, q4))
    assert n8 > 0
    e8, e4 = (ref - l8).abs().max().item(), (ref - l4).abs().max().item()
    assert 0 < e8 < e4  # int8 perturbs the weights less than int4, and both perturb them
    with pytest.raises(QuantizationUnavailable):
        quantize_copy(model, "int4", "torchao")
    base = knowledge_probes(model, world_tokenizer, world_suite, ["mul", "add"], "test", 6, 50, 0)
    res = quantization_attack(model, world_tokenizer, world_suite, ["mul"], ["add"], TINY, base)
    assert set(res["schemes"]) == {"int8", "int4"} and "forget_gap" in res["schemes"]["int4"]


def test_relearning_learns_and_early_stops(world_tokenizer, world, world_suite):
    from surgical.models import make_tiny_model
    from surgical.scoring import continuation_logprobs

    model = make_tiny_model("llama", len(world_tokenizer))
    examples = [(p.worked_prompt, p.worked_target) for p in world.splits.train["mul"][:8]]

    def loglik(m):
        return sum(lp for lp, _ in continuation_logprobs(m, world_tokenizer, examples)) / 1000

    before = [p.detach().clone() for p in model.parameters()]
    curve = finetune_curve(model, world_tokenizer, examples, loglik, 3e-3, 12, 4, [4, 8], seed=0)
    assert [s for s, _ in curve] == [0, 4, 8, 12]
    assert curve[-1][1] > curve[0][1]  # fitting the forbidden examples raises their likelihood
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # the original is untouched
    stopped = finetune_curve(model, world_tokenizer, examples, loglik, 3e-3, 12, 4, [4, 8], seed=0,
                             stop_at=curve[1][1])
    assert stopped[-1][0] == 4
    res = relearning_attack(model, world_tokenizer, world_suite, ["mul"], ["add"], TINY, 1.0, "test")
    assert set(res["runs"]) == {"0.001", "0.01"} and res["benign"]["lr"] == 1e-2
    assert res["best_lr"] in (1e-3, 1e-2) and 0.0 <= res["best"]["auc"] <= 1.0


def test_relearning_sweep_in_worker_processes_matches_serial(world_tokenizer, world, world_suite):
    """Forked workers (the CPU default) run the same seeded runs as the serial loop: identical curves."""
    import multiprocessing as mp

    from surgical.models import make_tiny_model
    from surgical.verify.relearn import _run_jobs, sweep_workers

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform: the sweep runs serially")
    model = make_tiny_model("llama", len(world_tokenizer))
    examples = [(p.worked_prompt, p.worked_target) for p in world.splits.train["mul"][:8]]
    probe = [(p.worked_prompt, p.worked_target) for p in world.splits.train["mul"][8:12]]

    def loglik(m):
        from surgical.scoring import continuation_logprobs

        return sum(lp for lp, _ in continuation_logprobs(m, world_tokenizer, probe))

    jobs = [(model, world_tokenizer, examples, loglik, lr, 6, 4, [3], 0, None) for lr in (1e-3, 1e-2, 3e-2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    serial = _run_jobs(jobs, 1)
    done = []
    parallel = _run_jobs(jobs, 2, progress=lambda: done.append(1))
    assert parallel == serial and len(done) == 3
    # each worker trains its inherited copy in place (one job per forked process); the parent's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len({c[-1][1] for c in serial}) == 3  # the learning rates really give different runs
    assert sweep_workers(TINY.model_copy(update={"threads": 2}), model) == 2
    assert sweep_workers(TINY.model_copy(update={"threads": 2, "workers": 1}), model) == 1


def test_jailbreak_templates_in_worker_processes_match_serial(world_tokenizer, world, world_suite):
    import multiprocessing as mp

    from surgical.models import make_tiny_model

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    model = make_tiny_model("gpt2", len(world_tokenizer))
    fams = [f for f in load_families() if f.family in ("few_shot", "encoding")]
    serial = run_battery(model, world_tokenizer, world_suite, fams, ["mul"], ["add"], "test", 3, 8, 20, 0)
    parallel = run_battery(model, world_tokenizer, world_suite, fams, ["mul"], ["add"], "test", 3, 8, 20, 0, workers=2)
    assert parallel == serial and set(serial) == {"few_shot", "encoding"}
    assert len(serial["encoding"]["templates"]) == 3


def test_quantization_attack_runs_on_a_float_model_flagged_is_quantized(world_tokenizer, world_suite):
    """A GGUF model dequantized by transformers carries is_quantized=True; its weights are float, so the attack
    must still run (it was silently skipped on SmolLM2)."""
    from surgical.models import make_tiny_model

    model = make_tiny_model("llama", len(world_tokenizer))
    model.is_quantized = True
    base = knowledge_probes(model, world_tokenizer, world_suite, ["mul", "add"], "test", 4, 20, 0)
    res = quantization_attack(model, world_tokenizer, world_suite, ["mul"], ["add"],
                              TINY.model_copy(update={"quant_schemes": ["int8"], "n_items": 4}), base)
    assert "skipped" not in res and res["schemes"]["int8"]["quantized_modules"] > 0


def test_relearning_records_the_mc_curve_and_the_best_lr_per_step(world_tokenizer, world, world_suite):
    from surgical.models import make_tiny_model
    from surgical.verify.relearn import mc_by_step

    model = make_tiny_model("llama", len(world_tokenizer))
    cfg = TINY.model_copy(update={"relearn_mc": True, "benign_relearn": False})
    res = relearning_attack(model, world_tokenizer, world_suite, ["mul"], ["add"], cfg, 1.0, "test")
    for run in res["runs"].values():
        assert [s for s, _ in run["mc_curve"]] == [s for s, _ in run["curve"]]
        assert all(0.0 <= m <= 1.0 for _, m in run["mc_curve"])
    assert set(res["mc_by_step"]) == {str(s) for s, _ in next(iter(res["runs"].values()))["mc_curve"]}
    # the attacker's best lr at each step, not one lr for the whole curve; a stopped run holds its last value
    runs = {"0.1": {"mc_curve": [[0, 0.2], [50, 0.5], [200, 0.3]]}, "1": {"mc_curve": [[0, 0.2], [50, 0.4]]}}
    assert mc_by_step(runs) == {"0": 0.2, "50": 0.5, "200": 0.4}


def test_relearning_sweep_measures_step_zero_once(world_tokenizer, world_suite, monkeypatch):
    """Step 0 is the same model for every learning rate and for the benign run: measured once per sweep, and
    every curve starts from that point."""
    from surgical.models import make_tiny_model
    from surgical.verify import relearn

    calls = []
    real = relearn.forget_eval_fn

    def counting(*args, **kwargs):
        evaluate = real(*args, **kwargs)

        def wrapped(m):
            calls.append(1)
            return evaluate(m)
        return wrapped

    monkeypatch.setattr(relearn, "forget_eval_fn", counting)
    model = make_tiny_model("llama", len(world_tokenizer))
    cfg = TINY.model_copy(update={"workers": 1, "benign_relearn": True})
    res = relearning_attack(model, world_tokenizer, world_suite, ["mul"], ["add"], cfg, 1.0, "test")
    runs = [*res["runs"].values(), res["benign"]]
    checkpoints = len({s for s in cfg.relearn_eval_steps if 0 < s <= cfg.relearn_max_steps} | {cfg.relearn_max_steps})
    assert len(calls) == 1 + len(runs) * checkpoints  # not (1 + checkpoints) per run
    assert len({tuple(r["curve"][0]) for r in runs}) == 1 and all(r["curve"][0][0] == 0 for r in runs)


def test_fork_map_runs_each_job_in_its_own_process_and_fails_loudly():
    """One forked process per job (a job may change what it inherited: the next job still sees the parent's
    state); a job's exception is re-raised; a worker that dies without a result raises instead of hanging."""
    import multiprocessing as mp
    import os

    from surgical.verify.parallel import fork_map, in_private_fork

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    state = [0]

    def bump(i):
        state[0] += 1  # in a private fork this changes only the worker's copy
        return (i, state[0], os.getpid(), in_private_fork())

    out = fork_map(bump, 4, 2)
    assert [o[0] for o in out] == [0, 1, 2, 3] and all(o[1] == 1 for o in out) and all(o[3] for o in out)
    assert len({o[2] for o in out}) == 4 and os.getpid() not in {o[2] for o in out}
    assert state == [0] and not in_private_fork()
    assert [o[1] for o in fork_map(bump, 2, 1)] == [1, 2]  # serial: in this process, state carries over

    def boom(i):
        if i == 1:
            raise ValueError("job 1 failed")
        return i

    with pytest.raises(ValueError, match="job 1 failed"):
        fork_map(boom, 3, 2)

    def die(i):
        if i == 0:
            os._exit(9)
        return i

    with pytest.raises(RuntimeError, match="died without a result"):
        fork_map(die, 2, 2)
