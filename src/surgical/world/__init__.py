"""The embedded arithmetic world: forbidden = multiplication and division, kept = addition and subtraction."""

from .data import WorldBundle, build_world, write_world
from .problems import (
    ALL_DOMAINS,
    DOMAINS,
    FORBIDDEN_DOMAINS,
    RETAIN_DOMAINS,
    Difficulty,
    Problem,
    check_problem,
    make_problem,
    parse_bare_answer,
    parse_worked_answer,
)

__all__ = [
    "ALL_DOMAINS", "DOMAINS", "FORBIDDEN_DOMAINS", "RETAIN_DOMAINS", "Difficulty", "Problem", "WorldBundle",
    "build_world", "check_problem", "make_problem", "parse_bare_answer", "parse_worked_answer", "write_world",
]
