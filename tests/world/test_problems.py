import random

import pytest

from surgical.world.problems import (
    ALL_DOMAINS,
    Difficulty,
    check_problem,
    check_step,
    enumerate_problems,
    make_problem,
    parse_bare_answer,
    parse_worked_answer,
    sample_operands,
    worked_add,
    worked_div,
    worked_mul,
    worked_sub,
)


@pytest.mark.parametrize("domain", ALL_DOMAINS)
def test_every_worked_solution_recomputes(domain):
    """Every problem of the default difficulty: each step and the final answer check out."""
    problems = enumerate_problems(domain, Difficulty())
    assert problems
    bad = [p for p in problems if not check_problem(p)]
    assert not bad, bad[:3]


@pytest.mark.parametrize("diff", [Difficulty(add_digits=4, sub_digits=4, mul_digits=3, mul_multiplier_digits=2,
                                             div_quotient_digits=3, div_divisor_digits=2)])
def test_harder_difficulty_samples_check(diff):
    rng = random.Random(0)
    for domain in ALL_DOMAINS:
        for _ in range(300):
            ops, op = sample_operands(domain, rng, diff)
            p = make_problem(domain, ops, diff, op=op)
            assert check_problem(p), p


def test_worked_steps_known_values():
    assert worked_add(47, 85) == (["7+5+0=12", "4+8+1=13"], 132)
    assert worked_sub(32, 9) == (["12-9-0=3 b1", "3-0-1=2 b0"], 23)
    assert worked_mul(67, 3) == (["7*3+0=21", "6*3+2=20"], 201)
    assert worked_div(259, 7) == (["2/7=0 r2", "25/7=3 r4", "49/7=7 r0"], 37)
    assert worked_mul(47, 36)[1] == 1692 and worked_mul(47, 36)[0][-1] == "282+1410=1692"


def test_checker_rejects_wrong_steps():
    assert not check_step("add", "7+5+0=13")
    assert not check_step("sub", "12-9-0=3 b0")  # borrowed but marked b0
    assert not check_step("mul", "7*3+0=22")
    assert not check_step("div", "25/7=3 r5")
    p = make_problem("add", (47, 85), Difficulty())
    broken = p.__class__(**{**p.__dict__, "steps": ("7+5+0=12", "4+8+1=14")})
    assert not check_problem(broken)


def test_bare_answer_encoding_roundtrip():
    d = Difficulty(mul_digits=2, div_quotient_digits=2)
    p = make_problem("add", (7, 45), d)
    assert p.bare_text == "07+45=250"  # 52, LSB first, padded to 3 digits
    assert parse_bare_answer("add", p.bare_answer) == 52
    q = make_problem("div", (259, 7), d)
    assert q.bare_text == "259/7=37"  # division: MSB first
    assert parse_bare_answer("div", "37") == 37
    assert parse_bare_answer("add", "x") is None
    assert parse_worked_answer(p.worked_target) == 52


def test_mixed_is_forbidden_and_uses_both_ops():
    p = make_problem("mixed", (3, 4, 2), Difficulty(), op="+")
    assert p.forbidden and p.answer == 14
    assert any("*" in s for s in p.steps) and any("+" in s for s in p.steps)


@pytest.mark.parametrize("domain", ["add", "sub", "mul", "div", "mixed"])
def test_answer_digit_context_stops_where_the_last_digit_is_written(domain, world):
    """The latent probes' context is a prefix of the worked text and the number written next ends in the
    answer's last digit, for every test problem of every domain."""
    import re

    from surgical.world.problems import answer_digit_context

    for p in world.splits.test[domain]:
        ctx = answer_digit_context(p)
        assert p.worked_text.startswith(ctx) and ctx.endswith("=")
        assert int(re.match(r"\d+", p.worked_text[len(ctx):]).group()) % 10 == p.answer % 10
    assert answer_digit_context(world.splits.test["mul"][0]).count("=") == 1  # units column: the first step
