"""How many torch threads (and worker processes) this process may use.

Every stage sets its torch thread count from its config (``threads``). When the pipeline runs stages in
parallel (``surgical run --jobs N``) each stage's process gets an equal share of the cores, set here through the
``SURGICAL_MAX_THREADS`` environment variable: a stage's ``threads`` (and the battery's worker processes, and
curate's stage-1 processes) are capped at it, so N stages never oversubscribe the machine (measured: two 2-thread
torch jobs on 2 cores run 5-7x slower than one). Without the variable nothing is capped.
"""

from __future__ import annotations

import os

ENV = "SURGICAL_MAX_THREADS"


def thread_cap() -> int | None:
    """The cap from ``SURGICAL_MAX_THREADS`` (None when unset or not a positive integer)."""
    raw = os.environ.get(ENV, "").strip()
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if n >= 1 else None


def capped(n: int) -> int:
    """``n`` threads or processes, capped at this process's share of the cores (at least 1)."""
    cap = thread_cap()
    return max(1, min(n, cap) if cap else n)


def set_threads(n: int) -> int:
    """``torch.set_num_threads(capped(n))``; returns the count set."""
    import torch

    n = capped(n)
    torch.set_num_threads(n)
    return n
