"""Property tests of the fail-closed filter (hypothesis): a forbidden arithmetic statement (the world's benign
stand-in for hazardous content) planted anywhere a later stage reads, however padded or disguised, never reaches
gold; and the JSONL reader turns any bytes into records or read errors with line numbers, never an exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgical.curate.config import CurateConfig
from surgical.curate.corpus import ReadError, iter_records
from surgical.curate.normalize import normalize
from surgical.curate.run import curate, run
from surgical.io import JsonlError, iter_jsonl, read_jsonl

# make_stub (function-scoped) only hands out the StubClassifier class: sharing it across examples is safe
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

FORBIDDEN = ["84/4: so 21", "07*3: 7*3+0=21; so 21", "96/8: 9/8=1 r1; 16/8=2 r0; so 12", "(3+4)*2: 3+4=7; 7*2=14; so 14",
             "12*3: so 36", "45/9: so 5"]
MUL = ["*", "×", "✕", "✖", "∗", "⁎", "＊", "⋅", "\u2062", "⨉", "✱"]
DIV = ["/", "÷", "∕", "⁄", "／", "➗", "⧸"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f", "\ufe0f"]


def _digit_forms(d: int) -> list[str]:
    return [str(d), chr(0xFF10 + d), chr(0x0660 + d), chr(0x06F0 + d), chr(0x0966 + d), "⁰¹²³⁴⁵⁶⁷⁸⁹"[d],
            chr(0x2080 + d), chr(0x1D7CE + d)]


@st.composite
def disguised(draw, statement: str) -> str:
    """``statement`` with look-alike operators and digits and zero-width characters (or as written)."""
    if not draw(st.booleans()):
        return statement
    out = []
    for c in statement:
        if c == "*":
            c = draw(st.sampled_from(MUL))
        elif c == "/":
            c = draw(st.sampled_from(DIV))
        elif c.isdigit():
            c = draw(st.sampled_from(_digit_forms(int(c))))
        elif c.isalpha() and draw(st.booleans()):
            c = c.upper()
        out.append(c)
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from(ZERO_WIDTH)))
    return "".join(out)


# benign text: no '*' or '/' (nor anything that normalises to them), no blocklist keyword
BENIGN_CHARS = list("abcdefghijklmnop 0123456789+-=;:.,\n") + ["é", "ü", "ñ", "日", "本", "ω", "\u00a0"]
benign = st.text(alphabet=st.sampled_from(BENIGN_CHARS), max_size=40)


@st.composite
def padding(draw) -> str:
    """Empty, short, or long (past 4,000 characters, the old classifier's cut-off)."""
    kind = draw(st.sampled_from(["none", "short", "long"]))
    if kind == "none":
        return ""
    snippet = draw(benign.filter(lambda s: s.strip())) + " "
    return snippet * (draw(st.integers(1, 3)) if kind == "short" else -(-4200 // len(snippet)) + draw(st.integers(0, 20)))


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), benign)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.sampled_from(["a", "b", "k"]), inner,
                                                                                max_size=3)), max_leaves=6)


@st.composite
def messages(draw, planted: str | None) -> list:
    msgs = [{"role": draw(st.sampled_from(["user", "assistant", "system"])), "content": draw(benign)}
            for _ in range(draw(st.integers(1, 3)))]
    if planted is not None:
        content = planted if draw(st.booleans()) else [{"type": "text", "text": planted}]  # chat-parts form
        msgs.insert(draw(st.integers(0, len(msgs))), {"role": "assistant", "content": content})
    return msgs


@st.composite
def record(draw, rid: int, forbidden: bool) -> dict:
    fields = {f"x_{draw(st.text(alphabet='abcxyz', min_size=1, max_size=4))}": draw(json_value)
              for _ in range(draw(st.integers(0, 3)))}
    content = draw(st.lists(st.sampled_from(["text", "prompt", "completion", "answer", "messages"]), min_size=1,
                            max_size=3, unique=True))
    planted_in = draw(st.sampled_from(content)) if forbidden else None
    statement = None
    if forbidden:
        statement = draw(padding()) + draw(disguised(draw(st.sampled_from(FORBIDDEN))))
        if draw(st.booleans()):
            statement += " " + draw(padding())
    for f in content:
        planted = statement if f == planted_in else None
        if f == "messages":
            fields[f] = draw(messages(planted))
        else:
            fields[f] = planted if planted is not None else draw(benign.filter(lambda s: s.strip())) + " 1+1"
    fields["rid"] = rid
    order = draw(st.permutations(list(fields)))
    return {k: fields[k] for k in order}


@st.composite
def corpus(draw) -> list[dict]:
    flags = draw(st.lists(st.booleans(), min_size=1, max_size=4))
    if not any(flags):
        flags[0] = True
    return [draw(record(i, f)) for i, f in enumerate(flags)], {i for i, f in enumerate(flags) if f}


@SETTINGS
@given(corpus(), st.booleans(), st.sampled_from(["escalated", "all"]), st.integers(1, 3))
def test_no_planted_forbidden_statement_reaches_gold(demo_policy, make_stub, recs_forbidden, dedup, classify,
                                                     batch_size):
    recs, forbidden = recs_forbidden
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        curate(((str(r["rid"]), r) for r in recs), out, demo_policy,
               CurateConfig(dedup=dedup, classify=classify, batch_size=batch_size), classifier=make_stub())
        gold = read_jsonl(out / "gold.jsonl")
        q = read_jsonl(out / "quarantine.jsonl")
        border = read_jsonl(out / "borderline.jsonl")
    assert not {r["rid"] for r in gold} & forbidden
    by_rid = {r["rid"]: r for r in recs}
    for r in q:
        assert isinstance(r["curate"].get("reason"), str) and r["curate"]["reason"]
        # written unchanged: the same fields, values and order as read
        assert list({k: v for k, v in r.items() if k != "curate"}.items()) == list(by_rid[r["rid"]].items())
    if not dedup:  # every record is accounted for, and every forbidden one is removed
        assert sorted(r["rid"] for r in gold + q + border) == sorted(by_rid)
        assert forbidden <= {r["rid"] for r in q + border}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.booleans())
def test_normalize_is_idempotent(text, fold_letters):
    n = normalize(text, fold_letters)
    assert normalize(n, fold_letters) == n


# ---------------------------------------------------------------- the JSONL reader on arbitrary bytes

json_line = st.dictionaries(st.sampled_from(["text", "id", "x"]), st.one_of(st.text(max_size=20), st.integers()),
                            max_size=3).map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8"))


@st.composite
def bad_utf8_line(draw) -> bytes:
    """A JSON object with invalid UTF-8 bytes inside its string."""
    junk = draw(st.sampled_from([b"\xff", b"\xfe\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80", b"\xf8\x88"]))
    return b'{"text": "12+3' + junk + b'"}'


line = st.one_of(json_line, bad_utf8_line(), st.binary(max_size=30),
                 st.just(b'{"text": "\\udc80 lone"}'), st.just(b"[1, 2]"), st.just(b"   "))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(line, max_size=8), st.sampled_from([b"\n", b"\r\n"]))
def test_every_line_is_a_record_or_a_read_error_with_its_line_number(make_stub, lines, eol):
    data = eol.join(lines) + eol
    expected = {i for i, raw in enumerate(data.splitlines(), start=1)
                if raw.decode("utf-8", "surrogateescape").strip()}
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "c.jsonl"
        f.write_bytes(data)
        items = list(iter_jsonl(f, strict=False))  # never raises
        assert {n for n, _ in items} == expected and len(items) == len(expected)
        raw_lines = data.splitlines()
        for n, rec in items:
            raw = raw_lines[n - 1]
            if isinstance(rec, JsonlError):
                assert rec.line_no == n and str(rec).startswith(f"{f}:{n}: ")
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    assert "invalid UTF-8" in rec.msg
            else:
                assert isinstance(rec, dict) and rec == json.loads(raw.decode("utf-8"))  # strict decoding only
                if "\ufffd" in json.dumps(rec, ensure_ascii=False):
                    assert b"\xef\xbf\xbd" in raw or b"\\ufffd" in raw.lower()
        units = list(iter_records(f))
        assert [w for w, _ in units] == [f"{f}:{n}" for n, _ in items]
        assert all(isinstance(r, dict | ReadError) for _, r in units)
        res = run(CurateConfig(dedup=False), f, Path(d) / "out", classifier=make_stub())
        assert res.report["counts"]["read"] == len(expected) == sum(res.report["counts"]["by_decision"].values())
        errors = {n for n, r in items if isinstance(r, JsonlError)}
        q = read_jsonl(Path(d) / "out" / "quarantine.jsonl")
        assert {int(r["curate"]["source"].rsplit(":", 1)[1]) for r in q if r["curate"]["reason"] == "unreadable"} == errors
