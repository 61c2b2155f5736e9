"""Independent jobs of the battery (relearning runs, jailbreak templates) in forked CPU worker processes.

Why processes and not threads: a demo-sized model does not use two cores well from one process (measured on 2
cores: a training step with 2 threads is 1.4x faster than with 1, two 1-thread processes give ~2x). Fork shares
the parent's model, tokenizer and world with the workers without pickling them; results come back pickled.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

import torch

_JOB: Callable[[int], object] | None = None  # the job function of the running map, read by forked workers


def _call(i: int, threads: int):
    torch.set_num_threads(threads)
    return _JOB(i)  # type: ignore[misc]


def auto_workers(configured: int, threads: int, model) -> int:
    """``configured`` when > 0; else ("auto") one worker per torch thread for a CPU model where fork exists,
    each then running with one thread; else 1 (serial)."""
    from ..threads import capped

    if configured:
        return capped(configured)  # a parallel pipeline stage gets its share of the cores, processes included
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return capped(max(1, threads)) if on_cpu and "fork" in mp.get_all_start_methods() else 1


def fork_map(job: Callable[[int], object], n: int, workers: int, progress=None) -> list:
    """[job(0), ..., job(n-1)], in ``workers`` forked processes (the parent's torch threads split between
    them) when ``workers`` > 1, else in this process. ``progress()`` is called once per finished job."""
    global _JOB
    if workers <= 1 or n <= 1:
        out = []
        for i in range(n):
            out.append(job(i))
            if progress is not None:
                progress()
        return out
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers, n)
    per = max(1, torch.get_num_threads() // workers)
    _JOB = job
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            futures = [pool.submit(_call, i, per) for i in range(n)]
            out = []
            for f in futures:
                out.append(f.result())
                if progress is not None:
                    progress()
    finally:
        _JOB = None
    return out
