"""Independent jobs of the battery (relearning runs, jailbreak templates) in forked CPU worker processes.

Why processes and not threads: a demo-sized model does not use two cores well from one process (measured on 2
cores: a training step with 2 threads is 1.4x faster than with 1, two 1-thread processes give ~2x). Fork shares
the parent's model, tokenizer and world with the workers without pickling them; results come back pickled.

Each job runs in a process forked for it alone (not a pool whose workers run several jobs in turn). A job may
therefore change what it inherited, its private copy-on-write image of the parent: the relearning attack trains
the inherited model in place (``in_private_fork``) instead of deep-copying it, which saves one model copy of
memory per worker (at SmolLM2-135M, 0.54 GB of the worker's peak). Why a hand-written scheduler and not
``multiprocessing.Pool(maxtasksperchild=1)``: a Pool hangs forever when a worker is killed (the OOM killer),
and ``ProcessPoolExecutor`` cannot replace a worker per task under fork; here a worker that dies without a result
raises at once.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from collections.abc import Callable
from multiprocessing.connection import wait

import torch

_JOB: Callable[[int], object] | None = None  # the job function of the running map, read by forked workers
_PRIVATE = False  # True in a process fork_map forked for one job


def in_private_fork() -> bool:
    """True inside a fork_map worker: this process runs one job and exits, so the job may modify the objects it
    inherited from the parent (its own copy-on-write copies; the parent's are untouched)."""
    return _PRIVATE


def _child(i: int, threads: int, conn) -> None:
    global _PRIVATE
    _PRIVATE = True
    try:
        torch.set_num_threads(threads)
        out = ("ok", _JOB(i))  # type: ignore[misc]
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which re-raises it
        out = ("error", exc)
    try:
        conn.send(out)
    except Exception as exc:  # an unpicklable result or exception
        conn.send(("error", RuntimeError(f"battery job {i}: {type(exc).__name__}: {exc}")))
    conn.close()


def auto_workers(configured: int, threads: int, model) -> int:
    """``configured`` when > 0; else ("auto") one worker per torch thread for a CPU model where fork exists,
    each then running with one thread; else 1 (serial)."""
    from ..threads import capped

    if configured:
        return capped(configured)  # a parallel pipeline stage gets its share of the cores, processes included
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return capped(max(1, threads)) if on_cpu and "fork" in mp.get_all_start_methods() else 1


def fork_map(job: Callable[[int], object], n: int, workers: int, progress=None) -> list:
    """[job(0), ..., job(n-1)], each in a process forked for it, at most ``workers`` at a time (the parent's
    torch threads split between them), when ``workers`` > 1; else in this process. ``progress()`` is called once
    per finished job. A job's exception is re-raised here; a worker that dies without a result (killed, out of
    memory) raises RuntimeError. Running workers are stopped on either."""
    global _JOB
    if workers <= 1 or n <= 1:
        out = []
        for i in range(n):
            out.append(job(i))
            if progress is not None:
                progress()
        return out
    ctx = mp.get_context("fork")
    workers = min(workers, n)
    per = max(1, torch.get_num_threads() // workers)
    results: dict[int, object] = {}
    running: dict = {}  # parent end of the pipe -> (job index, process)
    todo = list(range(n))
    _JOB = job
    try:
        while todo or running:
            while todo and len(running) < workers:
                i = todo.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(i, per, send), daemon=True)
                proc.start()
                send.close()
                running[recv] = (i, proc)
            for conn in wait(list(running)):
                i, proc = running.pop(conn)
                try:
                    status, value = conn.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    proc.join()
                    raise RuntimeError(f"battery job {i} died without a result (exit code {proc.exitcode}; "
                                       "killed, or out of memory?)") from None
                finally:
                    conn.close()
                proc.join()
                if status == "error":
                    raise value  # type: ignore[misc]
                results[i] = value
                if progress is not None:
                    progress()
    finally:
        _JOB = None
        for conn, (_, proc) in running.items():
            if proc.is_alive():
                proc.kill()
            proc.join()
            conn.close()
    return [results[i] for i in range(n)]
