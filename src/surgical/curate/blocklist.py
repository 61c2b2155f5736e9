"""Stage 1 of the filter: a case-insensitive keyword and regex blocklist per forbidden domain.

The two-stage pattern (cheap blocklist escalates, a classifier decides) is EleutherAI's "Deep Ignorance"
pretraining filter (O'Brien et al., 2025, section 2). Keywords are matched as substrings, counted once
per occurrence; regexes count every non-overlapping match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..policy import Policy


@dataclass(frozen=True)
class DomainRules:
    name: str
    keywords: tuple[str, ...]  # lower-cased
    regexes: tuple[re.Pattern, ...]
    escalate_at: int
    decisive_at: int | None


class Blocklist:
    """Compiled stage-1 rules of a policy; picklable, so worker processes can use it."""

    def __init__(self, policy: Policy):
        self.rules = [
            DomainRules(
                name=d.name,
                keywords=tuple(k.lower() for k in d.keywords if k),
                regexes=tuple(re.compile(p, re.IGNORECASE) for p in d.regexes),
                escalate_at=d.escalate_at,
                decisive_at=d.decisive_at,
            )
            for d in policy.forbidden
        ]

    def hits(self, text: str) -> dict[str, int]:
        """Blocklist hits per forbidden domain (keyword occurrences plus regex matches)."""
        low = text.lower()
        return {
            r.name: sum(low.count(k) for k in r.keywords) + sum(len(p.findall(text)) for p in r.regexes)
            for r in self.rules
        }

    def escalated(self, hits: dict[str, int]) -> list[str]:
        """Domains whose hits reach their ``escalate_at``."""
        return [r.name for r in self.rules if hits.get(r.name, 0) >= r.escalate_at]

    def decisive(self, hits: dict[str, int]) -> list[str]:
        """Domains whose hits reach their ``decisive_at`` (quarantined without the classifier)."""
        return [r.name for r in self.rules if r.decisive_at is not None and hits.get(r.name, 0) >= r.decisive_at]
