"""The filter fails closed: the whole document is scored, look-alikes are normalised, invalid UTF-8 is unreadable,
and no policy regex can hang it. Forbidden content here is the arithmetic world's stand-in (multiplication and
division)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from surgical.curate.blocklist import Blocklist, BlocklistRegexError
from surgical.curate.config import CurateConfig
from surgical.curate.normalize import normalize
from surgical.curate.run import Curator, char_windows, curate, run
from surgical.io import JsonlError, iter_jsonl, read_jsonl
from surgical.policy import ForbiddenDomain, Policy

BENIGN = "12+30: 2+0+0=2; 1+3+0=4; so 42. "
PREAMBLE = BENIGN * 200  # 6,400 characters, no blocklist hit
DIV = "84/4: so 21"  # 2 blocklist hits: escalated, not decisive, so the classifier decides


def _curate(tmp_path, recs, policy, clf, **cfg):
    res = curate(((str(i), r) for i, r in enumerate(recs)), tmp_path, policy, CurateConfig(**cfg), classifier=clf)
    return res, read_jsonl(tmp_path / "gold.jsonl"), read_jsonl(tmp_path / "quarantine.jsonl")


class RecordingClassifier:
    """Flags '*' and '/' like the stub, and keeps every text it was shown."""

    training_texts: set = set()

    def __init__(self):
        self.seen: list[str] = []

    def predict_proba(self, texts):
        self.seen.extend(texts)
        return {"mul": np.array([0.9 if "*" in t else 0.05 for t in texts]),
                "div": np.array([0.9 if "/" in t else 0.05 for t in texts]),
                "mixed": np.full(len(texts), 0.05)}


# ---------------------------------------------------------------- 1. the whole document is seen


def test_char_windows_cover_the_text_and_every_short_statement():
    text = "".join(chr(97 + i % 26) for i in range(1234))
    for size, overlap in ((200, 100), (100, 0), (50, 49), (2000, 10)):
        wins = char_windows(text, size, overlap)
        assert all(len(w) <= size for w in wins)
        assert wins[0] == text[:size] and wins[-1] == text[-size:]
        assert len(wins) == (1 if len(text) <= size else 1 + -(-(len(text) - size) // (size - overlap)))
        for start in range(0, len(text) - overlap + 1, 7):  # any substring of <= overlap chars is inside a window
            piece = text[start : start + max(overlap, 1)]
            assert any(piece in w for w in wins)
    assert char_windows("short", 200, 100) == ["short"]


@pytest.mark.parametrize("field", ["text", "completion", "answer", "messages"])
def test_forbidden_statement_after_a_long_preamble_is_quarantined(tmp_path, demo_policy, stub_classifier, field):
    """The old classifier saw the first 4,000 characters only: this went to gold."""
    body = PREAMBLE + DIV
    rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": body}]} \
        if field == "messages" else {field: body, **({"prompt": "12+30:"} if field != "text" else {})}
    res, gold, q = _curate(tmp_path, [rec], demo_policy, stub_classifier)
    assert gold == []
    assert q[0]["curate"]["reason"] == "forbidden" and q[0]["curate"]["domain"] == "div"
    assert q[0]["curate"]["rule"] == "blocklist+classifier:div"
    assert q[0]["curate"]["scores"]["blocklist_hits"]["div"] == 2  # the blocklist sees the whole text too
    assert res.report["counts"]["by_stage"]["stage2_windows"] > 60


def test_blocklist_sees_the_whole_text(demo_policy):
    bl = Blocklist(demo_policy)
    assert bl.hits(PREAMBLE * 20 + DIV)["div"] == 2 and bl.escalated(bl.hits(PREAMBLE * 20 + DIV)) == ["div"]


def test_classifier_gets_normalised_windows_no_longer_than_max_chars(demo_policy):
    clf = RecordingClassifier()
    cur = Curator(demo_policy, CurateConfig(max_chars=64, window_overlap=16), classifier=clf)
    text = BENIGN.upper() * 10 + "８４／４：ｓｏ ２１"
    rows = cur.classify([text, "ok"])
    assert rows[0]["div"] == pytest.approx(0.9) and rows[1]["div"] == pytest.approx(0.05)  # max over windows
    assert all(len(w) <= 64 and w == normalize(w) for w in clf.seen)
    assert any("84/4:so 21" in w for w in clf.seen) and len(clf.seen) == len(cur.windows(text)) + 1 > 5


def test_real_classifier_flags_a_statement_past_its_token_limit(minilm, demo_policy):
    """MiniLM truncates at 256 tokens: the old Curator (4,000 characters, then truncation) never saw the statement."""
    from surgical.curate.classifier import PolicyClassifier

    clf = PolicyClassifier(demo_policy, minilm)
    prose = "The library opens at nine and closes at six on weekdays, and the garden is watered every morning. "
    statement = "84/4: 8/4=2 r0; 4/4=1 r0; so 21"
    text = prose * 12 + statement  # ~1,200 characters, ~250 tokens of preamble
    old = {d: h.predict_proba(minilm.encode([text[:4000]]))[0, 1] for d, h in clf.heads.items()}
    assert old["div"] < 0.5  # what the old code computed: the statement was cut off
    rows = Curator(demo_policy, CurateConfig(), classifier=clf).classify([text])
    assert rows[0]["div"] >= 0.5


def test_token_windows_cut_a_text_over_the_token_limit(minilm):
    from surgical.curate.classifier import token_windows

    text = " ".join(f"w{i}" for i in range(600))  # far over 256 tokens
    chunks, owner = token_windows(minilm, ["short text", text])
    assert chunks[0] == "short text" and owner[0] == 0 and len(chunks) > 2 and set(owner[1:]) == {1}
    lengths = [len(ids) for ids in minilm.tokenizer(chunks[1:], truncation=False)["input_ids"]]
    assert max(lengths) <= minilm.max_length
    assert text.startswith(chunks[1]) and text.endswith(chunks[-1])
    assert set().union(*(c.split() for c in chunks[1:])) >= {f"w{i}" for i in range(600)}


def test_a_document_too_long_to_classify_is_quarantined(tmp_path, demo_policy, stub_classifier):
    res, gold, q = _curate(tmp_path, [{"text": PREAMBLE + "three times four"}], demo_policy, stub_classifier,
                           max_windows=5)
    assert gold == [] and q[0]["curate"]["reason"] == "too_long" and "max_windows=5" in q[0]["curate"]["detail"]


def test_wrong_number_of_probabilities_is_a_classifier_error(tmp_path, demo_policy):
    class Short:
        training_texts: set = set()

        def predict_proba(self, texts):
            return {d: np.zeros(max(len(texts) - 1, 0)) for d in ("mul", "div", "mixed")}

    _, gold, q = _curate(tmp_path, [{"text": "3*3: so 9"}, {"text": "4*4: so 16"}], demo_policy, Short())
    assert gold == [] and {r["curate"]["reason"] for r in q} == {"classifier_error"}


def test_config_rejects_an_overlap_as_long_as_the_window():
    with pytest.raises(ValueError, match="window_overlap"):
        CurateConfig(max_chars=100, window_overlap=100)


# ---------------------------------------------------------------- 2. look-alikes are normalised

DISGUISED = {
    # disguised form -> the plain form it must score like
    "12×3": "12*3", "12 ✕ 3": "12 * 3", "12✖3": "12*3", "12∗3": "12*3", "12⁎3": "12*3", "12⋅3": "12*3",
    "１２＊３": "12*3", "12\u200b*3": "12*3", "1\u200d2\u2060*\ufeff3": "12*3", "12\u20623": "12*3",
    "¹²*³": "12*3", "₁₂*₃": "12*3", "١٢×٣": "12*3", "۱۲*۳": "12*3", "१२*३": "12*3", "𝟏𝟐*𝟑": "12*3",
    "12⁄4": "12/4", "12∕4": "12/4", "12÷4": "12/4", "１２／４": "12/4", "12➗4": "12/4", "12\u00ad/4": "12/4",
    "(４+5)×2": "(4+5)*2", "(4−1)✕2": "(4-1)*2", "seven tіmes three": "seven times three",
    "SEVEN TIMES THREE": "seven times three", "12*\u03013": "12*3",
}


@pytest.mark.parametrize("disguised,plain", list(DISGUISED.items()))
def test_disguised_forbidden_content_escalates_like_the_plain_form(demo_policy, disguised, plain):
    bl = Blocklist(demo_policy)
    hits, plain_hits = bl.hits(disguised), bl.hits(plain)
    assert bl.escalated(hits), disguised
    assert all(hits[d] >= plain_hits[d] for d in hits), (disguised, hits, plain_hits)


def test_normalize_maps_the_documented_look_alikes():
    assert normalize("１２＊３") == "12*3" and normalize("12\u200b×3") == "12*3" and normalize("٣÷٤") == "3/4"
    assert normalize("½") == "1/2" and normalize("ABC\x00d\x0be") == "abcd e"
    assert normalize("Straße\u2028x") == "strasse x" and normalize("tіmes") == "tіmes"  # letters: blocklist only
    assert normalize("tіmes", fold_letters=True) == "times"
    assert normalize("12 x 3") == "12 x 3"  # letters used as operators are the policy's choice


def test_disguised_records_are_quarantined_and_written_unchanged(tmp_path, demo_policy, stub_classifier):
    recs = [{"text": t, "id": i} for i, t in enumerate(["１２＊３: so 36", "12\u200b*3: so 36", "84⁄4: so 21",
                                                        "٨٤÷٤: so 21"])]
    recs.append({"text": BENIGN, "id": 99})
    _, gold, q = _curate(tmp_path, recs, demo_policy, stub_classifier, dedup=False)
    assert [r["id"] for r in gold] == [99]
    # the very strings that came in (zero-width space included), in the same field order
    assert {r["id"]: list({k: v for k, v in r.items() if k != "curate"}.items()) for r in q} == \
        {r["id"]: list(r.items()) for r in recs[:4]}
    assert all(r["curate"]["reason"] == "forbidden" for r in q)


def test_classify_all_scores_the_normalised_text(tmp_path, demo_policy, stub_classifier):
    """No blocklist hit at all ('12 x 3' is not mapped) but classify='all' with a classifier that sees '*'."""
    _, gold, q = _curate(tmp_path, [{"text": "１２ ＊ ３ = 36"}], demo_policy, stub_classifier, classify="all")
    assert gold == [] and q[0]["curate"]["domain"] == "mul"


def test_dedup_sees_a_disguised_copy_of_a_quarantined_record(tmp_path, demo_policy, stub_classifier):
    text = "the answers we wrote down today were 12 * 3 and then some more words to make shingles"
    res, gold, q = _curate(tmp_path, [{"text": text}, {"text": text.replace("*", "\u2217").upper()}], demo_policy,
                           stub_classifier)
    assert gold == [] and res.report["counts"]["by_stage"].get("dedup_exact_dropped") == 1


# ---------------------------------------------------------------- 3. invalid UTF-8 is unreadable


def _bad_file(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_bytes(b'{"text": "12+30: so 42"}\n{"text": "84/4: so 21 \xff\xfe"}\n{"text": "caf\xc3\xa9 1+1: so 2"}\n'
                  b'{"text": "half \xe2\x82"}\n{"text": "lone \\ud800 surrogate"}\n{"text": "3+4: so 7"}\n')
    return f


def test_iter_jsonl_invalid_utf8_is_an_error_naming_the_line(tmp_path):
    f = _bad_file(tmp_path)
    items = list(iter_jsonl(f, strict=False))
    assert [n for n, _ in items] == [1, 2, 3, 4, 5, 6]
    errs = {n: e for n, e in items if isinstance(e, JsonlError)}
    assert set(errs) == {2, 4, 5}
    assert str(errs[2]).startswith(f"{f}:2: invalid UTF-8") and "\\xff\\xfe" in errs[2].raw
    assert "surrogate" in errs[5].msg
    recs = [r for _, r in items if isinstance(r, dict)]
    assert [r["text"] for r in recs] == ["12+30: so 42", "café 1+1: so 2", "3+4: so 7"]
    assert not any("\ufffd" in json.dumps(r, ensure_ascii=False) for r in recs)
    with pytest.raises(JsonlError, match=r":2: invalid UTF-8"):
        list(iter_jsonl(f, strict=True))


def test_curate_quarantines_invalid_utf8_lines_as_unreadable(tmp_path, stub_classifier):
    f = _bad_file(tmp_path)
    res = run(CurateConfig(), f, tmp_path / "out", classifier=stub_classifier)
    gold = read_jsonl(tmp_path / "out" / "gold.jsonl")
    q = read_jsonl(tmp_path / "out" / "quarantine.jsonl")
    assert [r["text"] for r in gold] == ["12+30: so 42", "café 1+1: so 2", "3+4: so 7"]
    unreadable = {r["curate"]["source"].rsplit(":", 1)[1]: r for r in q if r["curate"]["reason"] == "unreadable"}
    assert set(unreadable) == {"2", "4", "5"} and res.report["counts"]["by_reason"]["unreadable"] == 3
    assert "\\xff" in unreadable["2"]["raw"] and "UTF-8" in unreadable["2"]["curate"]["detail"]
    assert "\ufffd" not in (tmp_path / "out" / "quarantine.jsonl").read_text(encoding="utf-8")


def test_text_reader_keeps_bad_bytes_visible(tmp_path):
    from surgical.curate.corpus import ReadError, iter_records

    (tmp_path / "c.txt").write_bytes(b"fine\n12 \xff 3\n")
    items = list(iter_records(tmp_path / "c.txt"))
    assert isinstance(items[1][1], ReadError) and items[1][0].endswith(":2") and "\\xff" in items[1][1].raw


# ---------------------------------------------------------------- 4. regexes cannot hang the filter


def test_catastrophic_backtracking_pattern_finishes_fast():
    """On Python's backtracking `re`, `(a+)+$` on 'aaaa...b' takes exponential time; RE2 is linear. Run in a
    subprocess so that the old engine fails this test by timeout instead of hanging the suite."""
    code = ("import time; from surgical.curate.blocklist import Blocklist; from surgical.policy import Policy, "
            "ForbiddenDomain as F\n"
            "bl = Blocklist(Policy(forbidden=[F(name='x', regexes=['(a+)+$', '(x|xx)+y'])]))\n"
            "t = time.perf_counter(); h = bl.hits('a' * 100000 + 'b' + 'x' * 5000)\n"
            "print(h['x'], time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n, seconds = out.stdout.split()
    assert n == "0" and float(seconds) < 2.0


@pytest.mark.parametrize("pattern", [r"(\d)\1", r"\d(?=\*)", r"(?<=\d)/", r"\d\Z"])
def test_a_regex_re2_cannot_run_is_an_error_naming_domain_and_regex(pattern):
    pol = Policy(forbidden=[ForbiddenDomain(name="mul", regexes=[r"\d\*\d"]),
                            ForbiddenDomain(name="div", regexes=[r"\d/\d", pattern])])
    with pytest.raises(BlocklistRegexError) as exc:
        Blocklist(pol)
    msg = str(exc.value)
    assert "'div'" in msg and repr(pattern) in msg and "regexes[1]" in msg and "RE2" in msg


def test_curate_stops_before_reading_on_an_unsupported_regex(tmp_path, stub_classifier):
    pol = Policy(forbidden=[ForbiddenDomain(name="mul", regexes=[r"(\d)\*\1"], exemplars=["1*1"])])
    consumed = []

    def stream():
        consumed.append(1)
        yield "0", {"text": "2*2"}

    with pytest.raises(BlocklistRegexError, match="mul"):
        curate(stream(), tmp_path, pol, CurateConfig(), classifier=stub_classifier)
    assert consumed == [] and not (tmp_path / "gold.jsonl").exists()


def test_re2_blocklist_counts_like_before(demo_policy):
    """Same counts as the `re` blocklist on ordinary text (case-insensitive, non-overlapping matches)."""
    bl = Blocklist(demo_policy)
    # mul: '*' x3 + 'times' + regex x2 ('3*4', '5 × 6'); div: '/' + two regexes; mixed: '(1+2)*'
    assert bl.hits("3*4 and 5 × 6, three TIMES; (1+2)*3; 7/2=3 r1") == {"mul": 6, "div": 3, "mixed": 1}
