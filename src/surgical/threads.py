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

    _remember(n)
    n = capped(n)
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------- a share that changes while the stage runs

SHARE_FILE_ENV = "SURGICAL_THREAD_SHARE_FILE"
_requested: int | None = None  # what this process's stage asked for (set_threads), before the cap


def _remember(n: int) -> None:
    global _requested
    _requested = n


def follow_share() -> int | None:
    """Re-read this stage's share of the cores, which ``surgical run --jobs N`` rewrites whenever the set of
    running stages changes (a stage that was started beside another gets every core once it runs alone), and apply
    it: the new cap for ``capped`` and ``torch.set_num_threads(capped(requested))``. Call it from the main thread
    (OpenMP's thread count belongs to the calling thread), e.g. from a training loop. Returns the count set, or None
    when there is no share file (not a parallel run) or nothing changed."""
    path = os.environ.get(SHARE_FILE_ENV)
    if not path or _requested is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            share = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    if share < 1 or str(share) == os.environ.get(ENV):
        return None
    import torch

    os.environ[ENV] = str(share)
    n = capped(_requested)
    torch.set_num_threads(n)
    return n


def share_callback(every: int = 10):
    """A transformers TrainerCallback that calls ``follow_share`` every ``every`` optimizer steps."""
    from transformers import TrainerCallback

    class FollowThreadShare(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                follow_share()

    return FollowThreadShare()
