"""Shared scoring: length-sorted batches give the same numbers as one-at-a-time scoring, outputs come back in
input order, and inputs longer than the model's context are cut from the left instead of crashing."""

import math

import pytest
import torch

from surgical.models import make_tiny_model
from surgical.scoring import context_length, continuation_logprobs, greedy_generate

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
