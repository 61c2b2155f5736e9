"""Constitutional rewriting: derivations by hand, spans, and the per-token KD mask."""

from __future__ import annotations

import pytest

from surgical.curate.constitution import (
    Constitution,
    Rule,
    apply_constitution,
    demo_constitution_path,
    load_constitution,
    repeated_addition,
    repeated_subtraction,
    token_kd_mask,
)
from surgical.world.teacher import encode_example


@pytest.fixture(scope="module")
def demo_constitution():
    return load_constitution(demo_constitution_path())


def test_repeated_addition_by_hand():
    assert repeated_addition("7*3+0=21", 9) == "7+7+7+0=21"
    assert repeated_addition("0*3+2=2", 9) == "0+0+0+2=2"
    assert repeated_addition("13*2=26", 9) == "13+13=26"
    assert repeated_addition("2*13=26", 9) == "13+13=26"  # the short side is repeated
    assert repeated_addition("5*0+4=4", 9) == "0+4=4"
    assert repeated_addition("7*3+0=22", 9) == "7+7+7+0=21"  # the true value, not the teacher's slip
    assert repeated_addition("12*13=156", 9) is None
    assert repeated_addition("7+3=10", 9) is None


def test_repeated_subtraction_by_hand():
    assert repeated_subtraction("25/7=3 r4", 9) == "25-7-7-7=4 q3"
    assert repeated_subtraction("3/8=0 r3", 9) == "3=3 q0"
    assert repeated_subtraction("99/3=33 r0", 9) is None
    assert repeated_subtraction("4/0=0 r0", 9) is None


def test_mul_completion_is_rewritten_step_by_step(demo_constitution):
    teacher = " 7*3+0=21; 0*3+2=2; so 21"
    new, spans, fired = apply_constitution(teacher, demo_constitution)
    assert new == " [refuse] 7+7+7+0=21; [refuse] 0+0+0+2=2; so 21"
    assert fired == ["no-multiplication", "no-multiplication"]
    assert [new[s:e] for s, e, _ in spans] == ["[refuse] 7+7+7+0=21", "[refuse] 0+0+0+2=2"]


def test_allowed_completion_is_untouched(demo_constitution):
    teacher = " 7+5+0=12; 0+4+1=5; so 52"
    assert apply_constitution(teacher, demo_constitution) == (teacher, [], [])


def test_div_and_mixed(demo_constitution):
    new, spans, _ = apply_constitution(" 4/6=0 r4; 40/6=6 r4; 48/6=8 r0; so 68", demo_constitution)
    assert new == " [refuse] 4=4 q0; [refuse] 40-6-6-6-6-6-6=4 q6; [refuse] 48-6-6-6-6-6-6-6-6=0 q8; so 68"
    assert [r for *_, r in spans] == ["no-division"] * 3
    new, spans, _ = apply_constitution(" 9-2=7; 7*3=21; so 21", demo_constitution)
    assert new == " 9-2=7; [refuse] 7+7+7=21; so 21"


def test_plain_refusal_ends_the_trajectory():
    c = Constitution(rules=[Rule(name="no-big", kind="keyword", keywords=["secret"], rewrite="refuse")])
    new, spans, fired = apply_constitution(" a=1; the SECRET step; b=2; so 3", c)
    assert new == " a=1; [refuse]"
    assert spans == [[6, 14, "no-big"]] and fired == ["no-big"]


def test_classifier_rule_uses_the_classifier(stub_classifier):
    c = Constitution(rules=[Rule(name="clf", kind="classifier", domain="mul", threshold=0.5,
                                 rewrite="repeated_addition")])
    assert apply_constitution(" 7*2=14; so 14", c, stub_classifier)[0] == " [refuse] 7+7=14; so 14"
    with pytest.raises(ValueError, match="classifier"):
        apply_constitution(" 7*2=14", c)


@pytest.mark.parametrize("teacher", [" 7*3+0=21; 0*3+2=2; so 21", " 9-2=7; 7*3=21; so 21",
                                     " 7+5+0=12; 0+4+1=5; so 52", " 4/6=0 r4; 40/6=6 r4; 48/6=8 r0; so 68"])
def test_kd_mask_lines_up_with_encode_example(world_tokenizer, demo_constitution, teacher):
    prompt = "07*3:"
    completion, spans, _ = apply_constitution(teacher, demo_constitution)
    enc = encode_example(world_tokenizer, prompt, completion)
    mask = token_kd_mask(world_tokenizer, prompt, completion, spans)
    assert len(mask) == len(enc["input_ids"])
    n_prompt = sum(1 for x in enc["labels"] if x == -100)
    assert all(mask[:n_prompt])  # prompt positions are never "replaced"
    # the zeroed completion tokens decode to exactly the replaced text
    zero_ids = [t for t, m, lab in zip(enc["input_ids"], mask, enc["labels"], strict=True) if m == 0 and lab != -100
                and t != world_tokenizer.eos_token_id]
    assert world_tokenizer.decode(zero_ids) == "".join(completion[s:e] for s, e, _ in spans)
    assert mask[-1] == 1  # these completions end with the (kept) final answer


def test_kd_mask_zeroes_eos_after_a_final_refusal(world_tokenizer):
    c = Constitution(rules=[Rule(name="r", kind="regex", pattern=r"\*", rewrite="refuse")])
    completion, spans, _ = apply_constitution(" 1+1=2; 12*13=156; so 156", c)
    mask = token_kd_mask(world_tokenizer, "x:", completion, spans)
    assert completion.endswith("[refuse]") and mask[-1] == 0
