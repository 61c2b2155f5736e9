"""Shared scoring: length-sorted batches give the same numbers as one-at-a-time scoring, outputs come back in
input order, and inputs longer than the model's context are cut from the left instead of crashing."""

import math

import pytest
import torch

from surgical.models import make_tiny_model
from surgical.scoring import context_length, continuation_logprobs, greedy_generate, mc_predictions

PROMPTS = ["12+7:", "905*3:", "1+1:", "4410/7:", "99-98:", "3*3:"]


def test_generation_batched_equals_one_at_a_time(tiny_model, world_tokenizer):
    batched = greedy_generate(tiny_model, world_tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    single = [greedy_generate(tiny_model, world_tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert batched == single


def test_logprobs_batched_equals_one_at_a_time(tiny_model, world_tokenizer):
    pairs = [(p, "12=3 so 5") for p in PROMPTS] + [("7:", "1"), ("123456789+1:", "x so 1")]
    batched = continuation_logprobs(tiny_model, world_tokenizer, pairs, batch_size=3)
    single = [continuation_logprobs(tiny_model, world_tokenizer, [pr], batch_size=1)[0] for pr in pairs]
    for (b, nb), (s, ns) in zip(batched, single, strict=True):
        assert nb == ns and b == pytest.approx(s, abs=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_inputs_longer_than_the_context_are_cut_from_the_left(family, world_tokenizer):
    model = make_tiny_model(family, len(world_tokenizer), max_positions=16)
    assert context_length(model) == 16
    long_prompt = "1+2=3\n" * 6 + "45+5:"  # 35 characters, more than the 16 positions of the model
    ids = world_tokenizer(long_prompt, add_special_tokens=True)["input_ids"]
    assert len(ids) > 16
    gen = greedy_generate(model, world_tokenizer, [long_prompt, "1+1:"], max_new_tokens=6)
    assert len(gen) == 2
    # the same as generating from the last 10 prompt tokens (16 positions - 6 new tokens)
    tail = world_tokenizer.decode(ids[-10:])
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([ids[-10:]]), max_new_tokens=6, do_sample=False,
                             pad_token_id=world_tokenizer.pad_token_id, eos_token_id=world_tokenizer.eos_token_id)
    assert gen[0] == world_tokenizer.decode(ref[0, 10:], skip_special_tokens=True), tail
    (lp, n), = continuation_logprobs(model, world_tokenizer, [(long_prompt, "50")])
    assert n == 2 and math.isfinite(lp) and lp < 0


def test_first_line_stops_at_the_newline(world_tokenizer):
    """first_line=True: the same greedy text up to the first newline, and nothing after it (a worked answer is one
    line; what follows, such as another invented problem, is not the answer)."""
    model = make_tiny_model("llama", len(world_tokenizer), seed=0)
    (nl,) = world_tokenizer("\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # make a newline likely, so the random model writes one early
        model.model.embed_tokens.weight[nl] *= 8
    full = greedy_generate(model, world_tokenizer, PROMPTS, max_new_tokens=20)
    cut = greedy_generate(model, world_tokenizer, PROMPTS, max_new_tokens=20, first_line=True)
    assert sum("\n" in f for f in full) >= 3  # the case this test is about does occur
    assert cut == [f.split("\n", 1)[0] for f in full]


MC_RECORDS = [
    {"question": "12+7:", "choices": ["19", "18", "1 so 9", "190"], "gold": 0},
    {"question": "905*3:", "choices": ["2715", "5"], "gold": 0},
    {"question": "1+1:", "choices": ["2", "11", "3=3 so 3", "0", "22"], "gold": 0},
    {"question": "4410/7:", "choices": ["630", "63"], "gold": 1},
]


def _pairwise_equals_shared(model, tok, records=MC_RECORDS, batch_size=3):
    shared = mc_predictions(model, tok, records, batch_size=batch_size, target_delimiter=" ")
    pairwise = mc_predictions(model, tok, records, batch_size=batch_size, target_delimiter=" ", shared_context=False)
    for s, p in zip(shared, pairwise, strict=True):
        assert s["logprobs"] == pytest.approx(p["logprobs"], abs=1e-4)
        assert (s["pred"], s["pred_norm"]) == (p["pred"], p["pred_norm"])


def test_shared_context_mc_equals_pairwise_scoring(tiny_model, world_tokenizer):
    """One context pass with the KV cache repeated per choice gives the pairwise log-likelihoods (every family:
    left padding with explicit position ids, absolute positions for GPT-2, partial rotary for NeoX)."""
    _pairwise_equals_shared(tiny_model, world_tokenizer)
    _pairwise_equals_shared(tiny_model, world_tokenizer, batch_size=1)


def test_shared_context_mc_on_gemma3_sliding_window(world_tokenizer):
    """Gemma-3's hybrid (sliding-window + global) cache is repeated per choice like any other."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(world_tokenizer), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                           max_position_embeddings=256, sliding_window=4, layer_types=["sliding_attention",
                                                                                       "full_attention"])
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _pairwise_equals_shared(model, world_tokenizer)


def test_shared_context_falls_back_where_the_window_is_too_short(world_tokenizer):
    """A question + choice longer than the model's window is cut per pair, exactly as the pairwise path does."""
    model = make_tiny_model("llama", len(world_tokenizer), max_positions=16)
    recs = [{"question": "1+2=3\n" * 6 + "45+5:", "choices": ["50", "5 so 0"], "gold": 0}] + MC_RECORDS[:2]
    _pairwise_equals_shared(model, world_tokenizer, recs)


def test_shared_context_mc_memory_is_per_scored_token(world_tokenizer, monkeypatch):
    """The context pass asks the model for the last position's logits only (logits_to_keep=1)."""
    model = make_tiny_model("llama", len(world_tokenizer))
    seen = []
    real = model.forward

    def spy(*a, **kw):
        res = real(*a, **kw)
        seen.append(tuple(res.logits.shape))
        return res

    monkeypatch.setattr(model, "forward", spy)
    recs = [{"question": "123456789+123456789:", "choices": ["246913578", "1"], "gold": 0}]
    mc_predictions(model, world_tokenizer, recs)
    assert seen[0][1] == 1  # the context pass: one position, not the context's length
    assert seen[1][1] == max(len(world_tokenizer(c, add_special_tokens=False)["input_ids"])
                             for c in recs[0]["choices"]) - 1


def test_qa_across_domains_in_one_call_equals_per_domain(tiny_model, world_tokenizer, world_suite, monkeypatch):
    """qa_hits_many: the same generations and hits as one qa_hits call per domain, in one greedy_generate call
    for domains with the same generation settings."""
    import surgical.scoring as scoring

    jobs = [(world_suite[d], world_suite[d].split_of("qa", "test")[:7], None) for d in ("mul", "add", "sub")]
    ctx = [f"Solve: {r['prompt']}" for r in jobs[1][1]]
    jobs[1] = (jobs[1][0], jobs[1][1], ctx)  # a job with contexts (a jailbreak template around the prompt)
    one_by_one = [scoring.qa_hits(tiny_model, world_tokenizer, d, recs, c, batch_size=4) for d, recs, c in jobs]
    calls = []
    real = scoring.greedy_generate
    monkeypatch.setattr(scoring, "greedy_generate", lambda m, t, p, **k: (calls.append(len(p)), real(m, t, p, **k))[1])
    together = scoring.qa_hits_many(tiny_model, world_tokenizer, jobs, batch_size=4)
    assert together == one_by_one
    assert calls == [21]  # the world's domains share their generation settings: one call for all three


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_per_prompt_budgets_equal_one_call_per_budget_at_the_context_edge(family, world_tokenizer, monkeypatch):
    """Budgets per prompt (domains mixed in one call) give each prompt what a call with its own budget gives, also
    for prompts cut to fill the context (a batch never mixes a prompt at the edge with a larger budget)."""
    import surgical.scoring as scoring

    model = make_tiny_model(family, len(world_tokenizer), max_positions=16)
    prompts = ["1+2=3\n" * 6 + "45+5:", "1+1:", "12+7:", "3+3=6\n" * 2 + "9+9:"]
    budgets = [3, 8, 5, 8]
    alone = [greedy_generate(model, world_tokenizer, [p], max_new_tokens=b)[0] for p, b in zip(prompts, budgets, strict=True)]
    sizes = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **k: (sizes.append((k["input_ids"].shape[1], k["max_new_tokens"])),
                                                         real(**k))[1])
    assert greedy_generate(model, world_tokenizer, prompts, max_new_tokens=budgets, batch_size=8) == alone
    assert all(w + n <= 16 for w, n in sizes) and len(sizes) >= 2  # the edge prompt got a batch of its own
    with pytest.raises(ValueError, match="budgets"):
        scoring.greedy_generate(model, world_tokenizer, prompts, max_new_tokens=[3])
