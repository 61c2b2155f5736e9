"""The text the filter scores: look-alike characters mapped to the plain forms the policy's rules are written in.

``normalize(text)`` is applied before the blocklist and before the classifier (never to what is written: gold and
quarantine records keep their bytes). It maps, in this order:

1. **NFKC** (Unicode compatibility composition), then **casefold**, then NFKC again (Unicode's canonical caseless
   form). NFKC alone maps fullwidth digits and operators (``１２＊３`` -> ``12*3``, ``／`` -> ``/``, ``＋``, ``－``,
   ``＝``, ``（）``), superscript and subscript digits, signs and parentheses (``²``, ``₃``, ``⁺``, ``⁽``), circled
   and mathematical digits (``①``, ``𝟏``), small-form operators (``﹡``, ``﹢``), ligatures, and compatibility
   spaces (no-break, thin, ideographic ...) to a plain space; vulgar fractions become digit, fraction slash, digit
   (``½`` -> ``1⁄2``, then ``1/2`` by step 3).
2. **Digits**: every remaining decimal digit of any script (Arabic-Indic ``٣``, extended Arabic-Indic ``۳``,
   Devanagari ``३``, ...; NFKC leaves them alone) and every digit-valued symbol (dingbat circled ``❶``) -> ASCII.
3. **Operators** (``OPERATORS``): multiplication look-alikes ``× ✕ ✖ ⨉ ⨯ ∗ ⁎ ✱ ✲ ✳ ✻ ⋆ ⋅ ⊗ ٭`` and the
   invisible times U+2062 -> ``*``; division look-alikes ``÷ ∕ ⁄ ⧸ ⟋ ➗ ⊘`` -> ``/``; minus look-alikes
   ``− ➖ ‐ ‑ ‒ – —`` -> ``-``; ``➕`` and the invisible plus U+2064 -> ``+``; ornamental parentheses
   ``❨❩❪❫⟮⟯`` -> ``()``; ratio ``∶`` -> ``:``.
4. **Invisible characters removed**: format characters (Unicode category Cf: zero-width space/joiners U+200B-U+200D,
   word joiner U+2060, BOM U+FEFF, soft hyphen U+00AD, bidi controls, tag characters ...), combining marks left
   after NFKC (Mn, Me: a mark on a digit or operator, variation selectors, the grapheme joiner U+034F) and control
   characters (Cc) other than tab, newline, carriage return and form feed.
5. **Whitespace**: any other whitespace (vertical tab, U+0085, line/paragraph separators U+2028/U+2029, file/group
   separators) and blank-rendering letters (Hangul fillers, braille blank) -> a plain space.

``fold_letters`` (used by the blocklist only, whose keywords are Latin) also maps Cyrillic and Greek letters that
look like Latin ones (``tіmes`` with a Cyrillic ``і``) to those Latin letters (``LETTERS``). The classifier does not
get it: it would turn real Greek or Russian text into mixed-script noise.

Letters used as operators (``12 x 3``) are *not* mapped: that is a word-level choice a policy makes with a regex.
``normalize`` is idempotent: ``normalize(normalize(t)) == normalize(t)``.
"""

from __future__ import annotations

import re
import unicodedata

OPERATORS: dict[str, str] = {
    # multiplication
    "\u00d7": "*", "\u2715": "*", "\u2716": "*", "\u2a09": "*", "\u2a2f": "*", "\u2217": "*", "\u204e": "*",
    "\u2731": "*", "\u2732": "*", "\u2733": "*", "\u273b": "*", "\u22c6": "*", "\u22c5": "*", "\u2297": "*",
    "\u066d": "*", "\u2062": "*",
    # division
    "\u00f7": "/", "\u2215": "/", "\u2044": "/", "\u29f8": "/", "\u27cb": "/", "\u2797": "/", "\u2298": "/",
    # minus and plus
    "\u2212": "-", "\u2796": "-", "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
    "\u2795": "+", "\u2064": "+",
    # parentheses, ratio
    "\u2768": "(", "\u2769": ")", "\u276a": "(", "\u276b": ")", "\u27ee": "(", "\u27ef": ")", "\u2236": ":",
}

# Cyrillic and Greek letters that render like Latin ones (lower case: the text is casefolded first).
LETTERS: dict[str, str] = {
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y", "\u0445": "x",
    "\u0456": "i", "\u0458": "j", "\u0455": "s", "\u0501": "d", "\u04bb": "h", "\u043c": "m", "\u0442": "t",
    "\u043d": "h", "\u0432": "b", "\u043a": "k", "\u0451": "e", "\u0457": "i", "\u04cf": "l",
    "\u03b1": "a", "\u03bf": "o", "\u03c1": "p", "\u03b9": "i", "\u03ba": "k", "\u03bd": "v", "\u03c4": "t",
    "\u03c5": "u", "\u03c7": "x", "\u03b5": "e", "\u03b7": "n", "\u03bc": "u",
}

_BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}
_KEEP_CONTROLS = {"\t", "\n", "\r", "\f"}
_ASCII_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_ASCII_SPACE_CONTROLS = str.maketrans({"\x0b": " ", "\x1c": " ", "\x1d": " ", "\x1e": " ", "\x1f": " "})


def _map_char(c: str) -> str:
    """What one character (already NFKC-casefolded) becomes (steps 2-5)."""
    if c in OPERATORS:
        return OPERATORS[c]
    if c in _KEEP_CONTROLS or c == " ":
        return c
    if c.isspace() or c in _BLANK_LETTERS:
        return " "
    cat = unicodedata.category(c)
    if cat == "Nd":
        return str(unicodedata.decimal(c))
    if cat == "No":
        d = unicodedata.digit(c, None)
        return str(d) if d is not None else c
    if cat in ("Cf", "Mn", "Me", "Cc"):
        return ""
    return c


class _Table(dict):
    """A ``str.translate`` table filled on first sight of each code point."""

    def __init__(self, letters: bool):
        super().__init__()
        self.letters = letters

    def __missing__(self, cp: int) -> str:
        c = chr(cp)
        out = _map_char(c)
        if self.letters:
            out = "".join(LETTERS.get(x, x) for x in out)
        self[cp] = out
        return out


_TABLES = {False: _Table(False), True: _Table(True)}


def normalize(text: str, fold_letters: bool = False) -> str:
    """``text`` as the filter scores it (see the module docstring for every mapping)."""
    if text.isascii():  # the common case: nothing to map but case and control characters
        low = text.lower()
        if _ASCII_CONTROLS.search(low):
            low = _ASCII_CONTROLS.sub("", low.translate(_ASCII_SPACE_CONTROLS))
        return low
    t = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    t = t.translate(_TABLES[fold_letters])
    # a removed invisible character can leave a composable pair behind (Hangul jamo): compose once more
    return t if t.isascii() else unicodedata.normalize("NFKC", t)
