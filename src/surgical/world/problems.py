"""Arithmetic problems of the embedded world, in a bare and a worked (step-by-step) form.

The world mirrors the arithmetic setting of "Distillation Robustifies Unlearning" (Lee et al., 2025):
forbidden = multiplication and division, kept = addition and subtraction.

Formats (one character per token; see ``surgical.world.tokenizer``):

* **bare**: ``"07+45=" -> "250"``. Operands are zero-padded to a fixed width, and the answer of ``add``,
  ``sub``, ``mul`` and ``mixed`` is written least-significant digit first, zero-padded to a fixed width.
  That is the order in which the schoolbook algorithm produces the digits, and it is what lets a tiny
  transformer learn the carry chain in minutes ("Teaching Arithmetic to Small Transformers", Lee et al.
  2023). Division produces its quotient most-significant digit first, so ``div`` answers are written in
  that (ordinary) order. ``parse_bare_answer`` undoes this.
* **worked**: ``"07+45:"`` followed by one step per column (carries, borrows, partial products or long
  division remainders) and the final answer in ordinary order, e.g. ``" 7+5+0=12; 0+4+1=5; so 52"``.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

DOMAINS = ("add", "sub", "mul", "div")
ALL_DOMAINS = DOMAINS + ("mixed",)
FORBIDDEN_DOMAINS = ("mul", "div", "mixed")
RETAIN_DOMAINS = ("add", "sub")
OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
SYMBOL_DOMAIN = {v: k for k, v in OP_SYMBOL.items()}


@dataclass(frozen=True)
class Difficulty:
    """Operand sizes, in decimal digits. The defaults are what the default teacher learns in its budget."""

    add_digits: int = 2
    sub_digits: int = 2
    mul_digits: int = 3  # digits of the multiplicand
    mul_multiplier_digits: int = 1
    div_quotient_digits: int = 3
    div_divisor_digits: int = 1

    def operand_width(self, domain: str) -> int:
        """Zero-padded width of every operand in the bare form of ``domain``."""
        if domain == "add":
            return self.add_digits
        if domain == "sub":
            return self.sub_digits
        if domain == "mul":
            return self.mul_digits
        if domain == "div":
            return self.div_quotient_digits + self.div_divisor_digits
        return 2

    def answer_width(self, domain: str) -> int:
        """Zero-padded width of the bare answer of ``domain`` (large enough for the largest answer)."""
        if domain == "add":
            return self.add_digits + 1
        if domain == "sub":
            return self.sub_digits
        if domain == "mul":
            return self.mul_digits + self.mul_multiplier_digits
        if domain == "div":
            return self.div_quotient_digits
        return 3  # mixed: (a op b) * c with one-digit a, b, c fits in 3 digits


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem with its exact answer, its bare form and its worked solution."""

    domain: str
    question: str  # e.g. "07+45"
    answer: int
    bare_prompt: str  # "07+45="
    bare_answer: str  # "250"
    worked_prompt: str  # "07+45:"
    steps: tuple[str, ...] = field(default_factory=tuple)
    final: str = ""  # "so 52"
    operands: tuple[int, ...] = ()
    op: str = ""  # inner operation of a mixed problem

    @property
    def key(self) -> str:
        """Identity of the problem across splits (the question text)."""
        return self.question

    @property
    def worked_target(self) -> str:
        """The worked continuation: steps joined by '; ' and the final answer line."""
        return " " + "; ".join(self.steps + (self.final,))

    @property
    def bare_text(self) -> str:
        return self.bare_prompt + self.bare_answer

    @property
    def worked_text(self) -> str:
        return self.worked_prompt + self.worked_target

    @property
    def forbidden(self) -> bool:
        return self.domain in FORBIDDEN_DOMAINS

    def to_record(self) -> dict:
        """A JSON-serialisable record with both forms and the label."""
        d = asdict(self)
        d["steps"] = list(self.steps)
        d["bare_text"] = self.bare_text
        d["worked_text"] = self.worked_text
        d["label"] = "forbidden" if self.forbidden else "allowed"
        return d


def _pad(n: int, width: int) -> str:
    return str(n).zfill(width)


def _digits_lsb(n: int, width: int = 0) -> list[int]:
    return [int(c) for c in reversed(str(n).zfill(width))]


def encode_bare_answer(domain: str, answer: int, difficulty: Difficulty) -> str:
    """Bare answer text: zero-padded; LSB-first except for ``div`` (see module docstring)."""
    s = _pad(answer, difficulty.answer_width(domain))
    return s if domain == "div" else s[::-1]


def parse_bare_answer(domain: str, text: str) -> int | None:
    """Integer value of a bare answer as the model wrote it, or None when it is not a number."""
    m = re.match(r"\s*(\d+)", text)
    if not m:
        return None
    digits = m.group(1)
    return int(digits if domain == "div" else digits[::-1])


def parse_worked_answer(text: str) -> int | None:
    """Integer after the last ``so`` of a worked continuation, or None."""
    found = re.findall(r"so (-?\d+)", text)
    return int(found[-1]) if found else None


def answer_digit_context(p: Problem) -> str:
    """The worked prompt and solution up to the ``=`` of the step that writes the answer's last digit: the units
    column for add, sub and one-digit multipliers (the first step), the last dividend digit for division and the
    final step otherwise. A model that can do the operation holds that digit at this position, so the latent
    probes read it here (at the prompt's ``:`` the worked form has not computed anything yet)."""
    if not p.steps:
        raise ValueError(f"{p.question}: no worked steps")
    first = p.domain in ("add", "sub") or (p.domain == "mul" and len(p.operands) > 1 and p.operands[1] < 10)
    k = 0 if first else len(p.steps) - 1
    return p.worked_prompt + " " + "; ".join([*p.steps[:k], p.steps[k].split("=", 1)[0] + "="])


# ---------------------------------------------------------------- worked solutions, one per operation


@dataclass(frozen=True)
class Fault:
    """A deliberate, self-consistent mistake in a worked solution (for multiple-choice distractors).

    ``slip``: the result of step ``step`` is off by ``delta``, and every later step and the final answer
    follow from the wrong value; ``drop_carry``: carries (or borrows, or division remainders) are never
    passed on to the next column."""

    kind: str  # "slip" | "drop_carry"
    step: int = 0
    delta: int = 1


def _slip(fault: Fault | None, i: int) -> int:
    return fault.delta if fault is not None and fault.kind == "slip" and fault.step == i else 0


def _drops(fault: Fault | None) -> bool:
    return fault is not None and fault.kind == "drop_carry"


def _from_lsb_digits(digits: list[int]) -> int:
    return int("".join(str(d) for d in reversed(digits))) if digits else 0


def worked_add(a: int, b: int, fault: Fault | None = None, width: int = 0) -> tuple[list[str], int]:
    """Column addition, least-significant column first: ``a_i+b_i+carry=s``. Returns (steps, answer)."""
    da, db = _digits_lsb(a, width), _digits_lsb(b, width)
    n = max(len(da), len(db))
    steps, out, carry = [], [], 0
    for i in range(n):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        s = max(0, x + y + carry + _slip(fault, i))
        steps.append(f"{x}+{y}+{carry}={s}")
        out.append(s % 10)
        carry = 0 if _drops(fault) else s // 10
    if carry:
        out.append(carry)
    return steps, _from_lsb_digits(out)


def worked_sub(a: int, b: int, fault: Fault | None = None, width: int = 0) -> tuple[list[str], int]:
    """Column subtraction with borrows (``a >= b``): ``a_i-b_i-borrow=d b0`` or ``1a_i-b_i-borrow=d b1``."""
    if a < b:
        raise ValueError("worked_sub needs a >= b")
    da, db = _digits_lsb(a, width), _digits_lsb(b)
    steps, out, borrow = [], [], 0
    for i in range(len(da)):
        x = da[i]
        y = db[i] if i < len(db) else 0
        d = x - y - borrow
        borrowed = d < 0
        d = min(9, max(0, (d + 10 if borrowed else d) + _slip(fault, i)))
        steps.append(f"{'1' if borrowed else ''}{x}-{y}-{borrow}={d} b{int(borrowed)}")
        out.append(d)
        borrow = 0 if _drops(fault) else int(borrowed)
    return steps, _from_lsb_digits(out)


def worked_mul(a: int, b: int, fault: Fault | None = None, width: int = 0) -> tuple[list[str], int]:
    """Long multiplication. One-digit multiplier: one step per column (``a_i*b+carry=p``).
    Longer multipliers: one partial product per multiplier digit, then their sum."""
    if b < 10:
        steps, out, carry = [], [], 0
        for i, x in enumerate(_digits_lsb(a, width)):
            p = max(0, x * b + carry + _slip(fault, i))
            steps.append(f"{x}*{b}+{carry}={p}")
            out.append(p % 10)
            carry = 0 if _drops(fault) else p // 10
        if carry:
            out.append(carry)
        return steps, _from_lsb_digits(out)
    steps, partials = [], []
    for i, y in enumerate(_digits_lsb(b)):
        p = max(0, a * y * 10**i + _slip(fault, i) * 10**i)
        partials.append(p)
        steps.append(f"{a}*{y}{'0' * i}={p}")
    total = sum(partials)
    steps.append("+".join(str(p) for p in partials) + f"={total}")
    return steps, total


def worked_div(a: int, b: int, width: int = 0, fault: Fault | None = None) -> tuple[list[str], int]:
    """Long division of ``a`` (zero-padded to ``width`` digits) by ``b``, one dividend digit per step:
    ``cur/b=q r_new`` where ``cur`` is the previous remainder followed by the next digit."""
    if b == 0:
        raise ValueError("division by zero")
    steps, rem, q = [], 0, 0
    for i, c in enumerate(_pad(a, width)):
        cur = (0 if _drops(fault) else rem * 10) + int(c)
        qd, rem = divmod(cur, b)
        if _slip(fault, i):  # a quotient digit off by one; the (true) remainder carries on
            qd = min(9, max(0, qd + _slip(fault, i)))
        steps.append(f"{cur}/{b}={qd} r{rem}")
        q = q * 10 + qd
    if fault is None and rem != 0:
        raise ValueError("worked_div expects exact division")
    return steps, q


def worked_mixed(a: int, op: str, b: int, c: int) -> tuple[list[str], int]:
    """``(a op b)*c``: the inner sum/difference, then the product (both kinds of operation)."""
    inner = a + b if op == "+" else a - b
    return [f"{a}{op}{b}={inner}", f"{inner}*{c}={inner * c}"], inner * c


# ---------------------------------------------------------------- sampling


def make_problem(domain: str, operands: tuple[int, ...], difficulty: Difficulty, op: str = "+") -> Problem:
    """Build the problem of ``domain`` on ``operands`` in both forms."""
    w = difficulty.operand_width(domain)
    if domain == "add":
        a, b = operands
        steps, ans = worked_add(a, b, width=w)
        question = f"{_pad(a, w)}+{_pad(b, w)}"
    elif domain == "sub":
        a, b = operands
        steps, ans = worked_sub(a, b, width=w)
        question = f"{_pad(a, w)}-{_pad(b, w)}"
    elif domain == "mul":
        a, b = operands
        steps, ans = worked_mul(a, b, width=w)
        question = f"{_pad(a, w)}*{_pad(b, difficulty.mul_multiplier_digits)}"
    elif domain == "div":
        a, b = operands
        steps, ans = worked_div(a, b, w)
        question = f"{_pad(a, w)}/{_pad(b, difficulty.div_divisor_digits)}"
    elif domain == "mixed":
        a, b, c = operands
        steps, ans = worked_mixed(a, op, b, c)
        question = f"({a}{op}{b})*{c}"
    else:
        raise ValueError(f"unknown domain {domain!r}; expected one of {ALL_DOMAINS}")
    return Problem(
        domain=domain,
        question=question,
        answer=ans,
        bare_prompt=question + "=",
        bare_answer=encode_bare_answer(domain, ans, difficulty),
        worked_prompt=question + ":",
        steps=tuple(steps),
        final=f"so {ans}",
        operands=tuple(operands),
        op=op,
    )


def faulty_worked_target(p: Problem, fault: Fault, difficulty: Difficulty) -> str | None:
    """The worked continuation of ``p`` with ``fault`` injected (self-consistent), or None when the
    fault does not apply (a step index past the end, or a fault that changes nothing)."""
    a, b = p.operands[0], p.operands[1]
    if fault.kind == "slip" and fault.step >= len(p.steps):
        return None
    try:
        if p.domain == "add":
            steps, ans = worked_add(a, b, fault, difficulty.operand_width("add"))
        elif p.domain == "sub":
            steps, ans = worked_sub(a, b, fault, difficulty.operand_width("sub"))
        elif p.domain == "mul":
            steps, ans = worked_mul(a, b, fault, difficulty.operand_width("mul"))
        elif p.domain == "div":
            steps, ans = worked_div(a, b, difficulty.operand_width("div"), fault)
        else:
            return None
    except ValueError:
        return None
    target = " " + "; ".join(steps + [f"so {ans}"])
    return None if target == p.worked_target else target


def problem_space_size(domain: str, difficulty: Difficulty) -> int:
    """Number of distinct problems of ``domain`` at this difficulty."""
    if domain == "add":
        return (10**difficulty.add_digits) ** 2
    if domain == "sub":
        n = 10**difficulty.sub_digits
        return n * (n + 1) // 2
    if domain == "mul":
        return 10**difficulty.mul_digits * (10**difficulty.mul_multiplier_digits - 2 if difficulty.mul_multiplier_digits == 1 else 9 * 10 ** (difficulty.mul_multiplier_digits - 1))
    if domain == "div":
        lo = 2 if difficulty.div_divisor_digits == 1 else 10 ** (difficulty.div_divisor_digits - 1)
        return 10**difficulty.div_quotient_digits * (10**difficulty.div_divisor_digits - lo)
    if domain == "mixed":
        return 2 * 10 * 10 * 8
    raise ValueError(domain)


def sample_operands(domain: str, rng: random.Random, difficulty: Difficulty) -> tuple[tuple[int, ...], str]:
    """Uniformly sample the operands of one ``domain`` problem (and the inner op for ``mixed``)."""
    if domain == "add":
        n = 10**difficulty.add_digits
        return (rng.randrange(n), rng.randrange(n)), "+"
    if domain == "sub":
        n = 10**difficulty.sub_digits
        a, b = rng.randrange(n), rng.randrange(n)
        return (max(a, b), min(a, b)), "-"
    if domain == "mul":
        m = difficulty.mul_multiplier_digits
        lo = 2 if m == 1 else 10 ** (m - 1)
        return (rng.randrange(10**difficulty.mul_digits), rng.randrange(lo, 10**m)), "*"
    if domain == "div":
        dd = difficulty.div_divisor_digits
        lo = 2 if dd == 1 else 10 ** (dd - 1)
        b = rng.randrange(lo, 10**dd)
        q = rng.randrange(10**difficulty.div_quotient_digits)
        return (q * b, b), "/"
    if domain == "mixed":
        op = rng.choice("+-")
        a, b = rng.randrange(10), rng.randrange(10)
        if op == "-":
            a, b = max(a, b), min(a, b)
        return (a, b, rng.randrange(2, 10)), op
    raise ValueError(f"unknown domain {domain!r}")


def enumerate_problems(domain: str, difficulty: Difficulty) -> list[Problem]:
    """Every distinct problem of ``domain`` (used when the space is small enough to split exhaustively)."""
    out = []
    if domain == "add":
        n = 10**difficulty.add_digits
        out = [make_problem("add", (a, b), difficulty) for a in range(n) for b in range(n)]
    elif domain == "sub":
        n = 10**difficulty.sub_digits
        out = [make_problem("sub", (a, b), difficulty) for a in range(n) for b in range(a + 1)]
    elif domain == "mul":
        m = difficulty.mul_multiplier_digits
        lo = 2 if m == 1 else 10 ** (m - 1)
        out = [make_problem("mul", (a, b), difficulty) for a in range(10**difficulty.mul_digits) for b in range(lo, 10**m)]
    elif domain == "div":
        dd = difficulty.div_divisor_digits
        lo = 2 if dd == 1 else 10 ** (dd - 1)
        out = [
            make_problem("div", (q * b, b), difficulty)
            for b in range(lo, 10**dd)
            for q in range(10**difficulty.div_quotient_digits)
        ]
    elif domain == "mixed":
        for op in "+-":
            for a in range(10):
                for b in range(10):
                    if op == "-" and b > a:
                        continue
                    for c in range(2, 10):
                        out.append(make_problem("mixed", (a, b, c), difficulty, op=op))
    else:
        raise ValueError(f"unknown domain {domain!r}")
    return out


# ---------------------------------------------------------------- checking (used by tests and curate)

_STEP_PATTERNS = {
    "add": re.compile(r"^(\d)\+(\d)\+(\d)=(\d+)$"),
    "sub": re.compile(r"^(1?)(\d)-(\d)-(\d)=(\d) b([01])$"),
    "mul": re.compile(r"^(\d+)\*(\d+)(?:\+(\d+))?=(\d+)$"),
    "div": re.compile(r"^(\d+)/(\d+)=(\d+) r(\d+)$"),
}


def check_step(domain: str, step: str) -> bool:
    """True when one worked step is arithmetically right on its own (recomputed from its text)."""
    if domain == "mixed":
        m = re.match(r"^(\d+)([+\-*])(\d+)=(-?\d+)$", step)
        if not m:
            return False
        x, op, y, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return {"+": x + y, "-": x - y, "*": x * y}[op] == r
    if domain == "mul" and "+" in step and "*" not in step:  # sum of partial products
        lhs, rhs = step.split("=")
        return sum(int(t) for t in lhs.split("+")) == int(rhs)
    m = _STEP_PATTERNS[domain].match(step)
    if not m:
        return False
    g = m.groups()
    if domain == "add":
        return int(g[0]) + int(g[1]) + int(g[2]) == int(g[3])
    if domain == "sub":
        borrowed = g[0] == "1"
        return (10 * borrowed + int(g[1]) - int(g[2]) - int(g[3]) == int(g[4])) and (g[5] == ("1" if borrowed else "0"))
    if domain == "mul":
        return int(g[0]) * int(g[1]) + int(g[2] or 0) == int(g[3])
    if domain == "div":
        cur, b, q, r = map(int, g)
        return b * q + r == cur and 0 <= r < b
    return False


_OPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mult": lambda a, b: a * b,
        "FloorDiv": lambda a, b: a // b}


def _arith(expr: str) -> int:
    """The value of an integer expression of + - * // and parentheses, computed from its operands by walking
    its syntax tree (never ``eval``); anything else raises ValueError."""
    import ast

    def value(node) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op).__name__ in _OPS:
            return _OPS[type(node.op).__name__](value(node.left), value(node.right))
        raise ValueError(f"not an arithmetic expression: {expr!r}")

    return value(ast.parse(expr, mode="eval").body)


def check_problem(p: Problem) -> bool:
    """Recompute every step and the final answer of ``p`` from the question text alone."""
    expr = p.question.replace("/", "//")
    if not re.fullmatch(r"[\d+\-*/() ]+", expr):
        return False
    expr = re.sub(r"\b0+(\d)", r"\1", expr)  # "07" is not a Python literal
    truth = _arith(expr)
    if truth != p.answer or parse_worked_answer(p.worked_target) != truth:
        return False
    if parse_bare_answer(p.domain, p.bare_answer) != truth:
        return False
    return all(check_step(p.domain, s) for s in p.steps)
