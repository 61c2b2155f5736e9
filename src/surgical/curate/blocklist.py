"""Stage 1 of the filter: a case-insensitive keyword and regex blocklist per forbidden domain.

The two-stage pattern (cheap blocklist escalates, a classifier decides) is EleutherAI's "Deep Ignorance"
pretraining filter (O'Brien et al., 2025, section 2). Keywords are matched as substrings, counted once
per occurrence; regexes count every non-overlapping match.

Fail closed:

* the rules see the **whole** text (no truncation) and its normalised form (``normalize.py``: NFKC, casefold,
  look-alike operators and digits, invisible characters removed, Cyrillic/Greek look-alike letters): a domain's
  hits are the larger of its hits on the text as written and on the normalised text, so ``12×3``, ``１２＊３`` and
  ``12\\u200b*3`` escalate like ``12*3``, and a rule written for a raw form still fires;
* regexes run on **RE2** (``google-re2``), a linear-time engine: no pattern can make a document hang the filter
  (``(a+)+$`` on ``aaaa...b`` is instant). A policy regex RE2 cannot run (backreferences, look-around, possessive
  quantifiers, ``\\Z``: write ``\\z``) is a ``BlocklistRegexError`` naming the domain and the regex when the
  blocklist is built, before any record is read. RE2's ``\\d``, ``\\s``, ``\\w`` and ``\\b`` are ASCII; digits and
  spaces are ASCII after normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..policy import Policy
from .normalize import normalize


class BlocklistRegexError(ValueError):
    """A policy regex the linear-time engine cannot compile; names the domain and the regex."""


def _re2():
    try:
        import re2
    except ImportError as exc:  # never fall back to the backtracking engine
        raise ImportError("the curate blocklist needs google-re2 (pip install google-re2, or "
                          "pip install 'surgical[curate]')") from exc
    return re2


def compile_regex(pattern: str, domain: str, index: int = 0):
    """``pattern`` compiled case-insensitively with RE2; BlocklistRegexError if RE2 does not support it."""
    re2 = _re2()
    opts = re2.Options()
    opts.case_sensitive = False
    opts.log_errors = False
    try:
        return re2.compile(pattern, opts)
    except re2.error as exc:
        why = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise BlocklistRegexError(
            f"forbidden domain {domain!r}: regexes[{index}] {pattern!r} is not supported by RE2, the linear-time "
            f"regex engine the blocklist uses so that no document can hang the filter ({why}); rewrite it without "
            "backreferences, look-around or possessive quantifiers (and \\Z as \\z)") from None


@dataclass(frozen=True)
class DomainRules:
    name: str
    keywords: tuple[str, ...]  # lower-cased, as written
    norm_keywords: tuple[str, ...]  # normalised (letters folded), deduplicated
    regexes: tuple  # RE2 patterns, case-insensitive
    escalate_at: int
    decisive_at: int | None

    def count(self, low: str, text: str, keywords: tuple[str, ...]) -> int:
        return sum(low.count(k) for k in keywords) + sum(sum(1 for _ in p.finditer(text)) for p in self.regexes)


class Blocklist:
    """Compiled stage-1 rules of a policy; picklable, so worker processes can use it."""

    def __init__(self, policy: Policy):
        self.rules = []
        for d in policy.forbidden:
            norm = tuple(dict.fromkeys(k2 for k in d.keywords if (k2 := normalize(k, fold_letters=True))))
            self.rules.append(DomainRules(
                name=d.name,
                keywords=tuple(k.lower() for k in d.keywords if k),
                norm_keywords=norm,
                regexes=tuple(compile_regex(p, d.name, i) for i, p in enumerate(d.regexes)),
                escalate_at=d.escalate_at,
                decisive_at=d.decisive_at,
            ))

    def hits(self, text: str, normalised: str | None = None) -> dict[str, int]:
        """Blocklist hits per forbidden domain (keyword occurrences plus regex matches) on the whole text: the
        larger count of the text as written and of its normalised form (``normalised``, computed if not given)."""
        norm = normalize(text, fold_letters=True) if normalised is None else normalised
        low = text.lower()
        out = {}
        for r in self.rules:
            n = r.count(norm, norm, r.norm_keywords)
            if norm != low:
                n = max(n, r.count(low, text, r.keywords))
            out[r.name] = n
        return out

    def escalated(self, hits: dict[str, int]) -> list[str]:
        """Domains whose hits reach their ``escalate_at``."""
        return [r.name for r in self.rules if hits.get(r.name, 0) >= r.escalate_at]

    def decisive(self, hits: dict[str, int]) -> list[str]:
        """Domains whose hits reach their ``decisive_at`` (quarantined without the classifier)."""
        return [r.name for r in self.rules if r.decisive_at is not None and hits.get(r.name, 0) >= r.decisive_at]
