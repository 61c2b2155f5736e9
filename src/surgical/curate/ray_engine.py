"""``engine: ray``: the curate filter as a Ray Data pipeline, with output files byte-identical to the local engine's.

What runs where:

* **Phase A (Ray tasks).** One input row per corpus file (a shard); ``flat_map`` reads it with the repo's own
  ``iter_records`` (so a bad line is a ``ReadError`` with the same ``where`` as locally) and applies the local
  engine's fail-closed check (``check_record``); the rows are re-blocked to ``ray_rows_per_task`` and stage 1
  (``_stage1``: normalise, blocklist, exact key, MinHash) runs in ``map_batches`` tasks on every CPU. With
  ``preserve_order`` the driver receives the rows in read order.
* **Driver.** Groups the rows into batches of ``batch_size`` by read order, exactly as the local engine's
  ``_batched`` does (failed rows count towards the batch), applies exact dedup with one global ``seen`` set, and
  for each batch computes what the local ``Curator.decide_batch`` would send to the classifier (same
  ``needs_classifier`` rule, same ``too_long`` rule). Batches are spilled to a temporary file in the out dir.
* **Phase B (Ray actors).** One job per batch: the texts that batch would classify. ``map_batches(batch_size=1)``
  on an actor pool; each actor builds the classifier once, as ``Curator.__init__`` does (``build_classifier``),
  with one torch thread, and scores the job with ``Curator.classify``: the same windows in the same single call
  as the local engine, so the embedder sees the same batches and returns the same floats. A batch whose classifier
  raises comes back as the exception's text and is quarantined (``classifier_error``), as locally.
* **Driver.** Decisions (``Curator.finish_batch`` -> ``decide``), near-dedup, holdout, candidates, pass 2 and the
  report: ``write_curated``, the very code the local engine runs.

Rows cross process boundaries pickled (records, stage-1 rows with their numpy signatures, blocks, results), so
every value reaches the driver exactly as the local engine would have it, parquet types included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..io import sha256_json
from ..policy import Policy
from .blocklist import Blocklist
from .config import CurateConfig
from .corpus import iter_records
from .normalize import normalize
from .run import (
    _WORKER,
    CurateResult,
    Curator,
    DecidedBatch,
    _init_worker,
    _progress,
    _stage1,
    check_record,
    error_text,
    exact_dedup,
    n_windows,
    needs_classifier,
    write_curated,
)

SPILL_NAME = ".ray-batches.pkl.tmp"


class RayEngineError(RuntimeError):
    """The Ray engine could not run (Ray missing, no cluster at the address, a task that failed); one line."""


# ---------------------------------------------------------------- phase A (Ray tasks)


def _read_shard(item: dict, text_field: str, text_unit: str) -> Iterator[dict]:
    """The rows of one shard, in file order: readable records with their scored text, or the fail-closed
    ``(record as written, block, scored text)`` of the others (computed here, on the original record)."""
    path, given = item["path"], item["given"]
    for i, (where, rec) in enumerate(iter_records(path, text_field, text_unit, fmt=item["fmt"])):
        if path != given and where.startswith(path):  # report the path as the user gave it, as the local engine
            where = given + where[len(path):]
        checked = check_record(where, rec, text_field)
        if isinstance(checked, str):
            yield {"shard": item["shard"], "row": i, "ok": True, "text": checked, "p": pickle.dumps((where, rec))}
        else:
            yield {"shard": item["shard"], "row": i, "ok": False, "text": "", "p": pickle.dumps(checked)}


def _stage1_block(tbl, policy: Policy, key: str, params: dict):
    """Stage 1 on a block of rows (a pyarrow table): each readable row gets its pickled stage-1 row and, when it
    needs the classifier, its window count (for the too_long rule); -1 otherwise. The worker's blocklist and
    MinHash parameters are built once per process and policy."""
    import pyarrow as pa

    if _WORKER.get("key") != key:  # Ray reuses worker processes across tasks (and across runs)
        _init_worker(Blocklist(policy), params["perm"], params["shingle_words"], params["dedup"])
        _WORKER["key"] = key
    ok = tbl.column("ok").to_pylist()
    texts = tbl.column("text").to_pylist()
    idx = [i for i, o in enumerate(ok) if o]
    rows, s_bl, s_mh = _stage1([texts[i] for i in idx])
    s1, nwin = [b""] * len(ok), [-1] * len(ok)
    for i, row in zip(idx, rows, strict=True):
        s1[i] = pickle.dumps(row)
        if needs_classifier(row, params["classify_all"]):
            nwin[i] = n_windows(len(normalize(texts[i])), params["max_chars"], params["window_overlap"])
    first = [1.0] + [0.0] * (len(ok) - 1) if ok else []  # a block's seconds ride on its first row
    return tbl.append_column("s1", pa.array(s1, pa.binary())).append_column("nwin", pa.array(nwin, pa.int64())) \
        .append_column("s_bl", pa.array([s_bl * f for f in first], pa.float64())) \
        .append_column("s_mh", pa.array([s_mh * f for f in first], pa.float64()))


# ---------------------------------------------------------------- phase B (Ray actors)


class _ClassifierActor:
    """Builds the classifier once (``build_classifier``, as ``Curator.__init__``) and scores one batch's texts per
    call with ``Curator.classify``: the local engine's windows and classifier call."""

    def __init__(self, policy: Policy, cfg: CurateConfig, classifier=None, threads: int = 1):
        import sys

        self.curator = Curator(policy, cfg, classifier)
        # torch only if the classifier brought it in (a stand-in classifier need not pay its import); while it was
        # built, Ray's OMP_NUM_THREADS (the actor's CPUs) held torch to as many threads
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)
            if cfg.ray_num_gpus_per_actor > 0 and torch.cuda.is_available():
                emb = getattr(self.curator.classifier, "embedder", None)
                if hasattr(emb, "to"):
                    emb.to("cuda")

    def __call__(self, tbl):
        import pyarrow as pa

        out = []
        for blob in tbl.column("texts").to_pylist():
            texts = pickle.loads(blob)
            before, before_w = self.curator.seconds["classifier"], self.curator.n_windows
            scored = self.curator.classify(texts)
            seconds = self.curator.seconds["classifier"] - before
            if isinstance(scored, Exception):  # fail closed on the driver: the batch is quarantined
                out.append(pickle.dumps(("error", error_text(scored), seconds, 0)))
            else:
                out.append(pickle.dumps(("ok", scored, seconds, self.curator.n_windows - before_w)))
        return pa.table({"j": tbl.column("j"), "res": pa.array(out, pa.binary())})


# ---------------------------------------------------------------- the session


@contextlib.contextmanager
def ray_session(cfg: CurateConfig, quiet: bool = True):
    """A Ray to run on: the one already initialised in this process, the cluster at ``cfg.ray_address``, or an
    in-process Ray with ``num_proc`` CPUs. Only a Ray started here is shut down. Ray's own logs and progress bars
    are kept off the terminal (the driver shows curate's bar); Ray Data keeps its logs under /tmp/ray."""
    for k, v in {"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}.items():  # read when Ray starts
        os.environ.setdefault(k, v)
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayEngineError(f"engine 'ray' needs Ray Data ({exc}): pip install 'surgical[scale]'") from None
    started = False
    info = {"address": cfg.ray_address or "local", "joined_existing": ray.is_initialized()}
    muted: list[tuple[logging.Handler, int]] = []
    try:
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            try:
                if cfg.ray_address:
                    ray.init(address=cfg.ray_address, **kw)
                else:
                    ray.init(num_cpus=cfg.num_proc, **kw)
            except Exception as exc:
                raise RayEngineError(f"cannot start Ray{f' at {cfg.ray_address!r}' if cfg.ray_address else ''}: "
                                     f"{_one_line(exc)}") from None
            started = True
        # Ray's terminal handlers ("Starting execution", "Progress bars disabled", a failed task's traceback, which
        # curate re-raises as one line) are muted; Ray Data's file handler still writes ray-data.log in the session
        for name in ("ray", "ray.data"):
            for h in logging.getLogger(name).handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    muted.append((h, h.level))
                    h.setLevel(logging.CRITICAL + 1)
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True  # the driver sees rows, and results, in read order
        ctx.enable_progress_bars = False
        res = ray.cluster_resources()
        info.update(workers=int(res.get("CPU", 0)), gpus=int(res.get("GPU", 0)))
        try:
            yield ray, info
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    finally:
        if started:
            ray.shutdown()
        for h, level in muted:
            h.setLevel(level)


def _one_line(exc: BaseException) -> str:
    """A Ray error as one line: the exception raised inside the task (``RayTaskError.cause``), its first line
    (Ray appends its traceback and retry advice to the message)."""
    inner, seen = exc, set()
    while isinstance(getattr(inner, "cause", None), BaseException) and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.cause
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__


# ---------------------------------------------------------------- the engine


def curate_ray(paths: list[Path], fmts: list[str], out_dir: str | Path, policy: Policy, cfg: CurateConfig,
               classifier=None, eval_records: list[dict] | None = None, total: int | None = None,
               quiet: bool = True, inputs: dict | None = None) -> CurateResult:
    """Curate ``paths`` (each file a shard, in this order) into ``out_dir`` on Ray; the same files as the local
    engine's ``run``. ``classifier`` (a Python object) is shipped to the actors by pickling; otherwise each actor
    builds its own from ``cfg``, like the driver."""
    for p in paths:  # the local engine's error, before any Ray is started
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    curator = Curator(policy, cfg, classifier)  # the driver's: evaluation, exemplar keys, config errors up front
    t_setup = time.perf_counter() - t_start
    spill = out / SPILL_NAME
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: spill.unlink(missing_ok=True))
        t0 = time.perf_counter()
        with ray_session(cfg, quiet) as (ray, info), _progress(quiet) as progress:
            seconds = {"ray_init": time.perf_counter() - t0}
            g = cfg.ray_num_gpus_per_actor
            if g > 0 and info["gpus"] < g and not cfg.ray_address:  # a fixed local Ray: actors would wait forever
                raise RayEngineError(f"curate.ray_num_gpus_per_actor={g} but this Ray has {info['gpus']} GPUs")
            try:
                t0 = time.perf_counter()
                task = progress.add_task("curate: read + stage 1 (ray)", total=total)
                jobs, n_batches = _phase_a(ray, paths, fmts, policy, cfg, curator, spill, progress, task)
                seconds["phase_a"] = time.perf_counter() - t0
                curator.seconds["stage1_wall"] += seconds["phase_a"]
                t0 = time.perf_counter()
                n_actors = _n_actors(cfg, info, sum(1 for j in jobs if j))
                results = _phase_b(ray, jobs, policy, cfg, classifier, n_actors)
                seconds["phase_b"] = time.perf_counter() - t0
            except RayEngineError:
                raise
            except Exception as exc:  # a task's error (RayTaskError(X) is also an X): one line, not Ray's trace
                if type(exc).__module__.startswith("ray") or isinstance(exc, ray.exceptions.RayError):
                    raise RayEngineError(f"ray engine: {_one_line(exc)}") from None
                raise
        # Ray is shut down (if started here) before the driver writes: its workers' CPUs and memory are free again
        engine = {"engine": "ray", "ray": {**info, "classifier_actors": n_actors,
                                           "num_gpus_per_actor": cfg.ray_num_gpus_per_actor,
                                           "rows_per_task": cfg.ray_rows_per_task, "batches": n_batches,
                                           "batches_classified": len(results),
                                           "seconds": {k: round(v, 3) for k, v in seconds.items()}}}
        progress = stack.enter_context(_progress(quiet))
        task = progress.add_task("curate: decide + write", total=total)
        return write_curated(_decided(spill, n_batches, results, curator), out, policy, cfg, curator,
                             t_start=t_start, t_setup=t_setup, progress=progress, task=task,
                             eval_records=eval_records, inputs=inputs, engine=engine)


def _n_actors(cfg: CurateConfig, info: dict, n_jobs: int) -> int:
    if n_jobs == 0:
        return 0
    n = cfg.ray_classifier_actors
    if not n:
        g = cfg.ray_num_gpus_per_actor
        n = int(info.get("gpus", 0) // g) if g > 0 else info.get("workers", 1)
    return max(1, min(n, n_jobs))


def _phase_a(ray, paths, fmts, policy, cfg, curator, spill: Path, progress, task) -> tuple[list[list[str]], int]:
    """Read and stage 1 on Ray; on the driver, batches by read order, exact dedup and the classifier plan of each
    batch, spilled to ``spill``. Returns the texts each batch sends to the classifier, and the number of batches."""
    items = [{"path": str(p.resolve()), "given": str(p), "fmt": f, "shard": i}
             for i, (p, f) in enumerate(zip(paths, fmts, strict=True))]
    params = {"perm": cfg.minhash_perm, "shingle_words": cfg.shingle_words, "dedup": cfg.dedup,
              "classify_all": cfg.classify == "all", "max_chars": cfg.max_chars, "window_overlap": cfg.window_overlap}
    key = sha256_json({"policy": policy.model_dump(), **params})
    ds = (ray.data.from_items(items, override_num_blocks=len(items))
          .flat_map(_read_shard, fn_kwargs={"text_field": cfg.text_field, "text_unit": cfg.text_unit})
          # re-block so that stage 1 of one big shard runs on every worker (a flat_map's output is one task's)
          .repartition(target_num_rows_per_block=cfg.ray_rows_per_task)
          .map_batches(_stage1_block, batch_format="pyarrow", batch_size=None,
                       fn_kwargs={"policy": policy, "key": key, "params": params}))
    seen: set[bytes] = set()
    jobs: list[list[str]] = []
    pending: list[tuple] = []
    last = (-1, -1)
    with open(spill, "wb") as fh:

        def flush() -> None:
            rejected, fresh_items, nwins = [], [], []
            for ok, p, text, s1, nwin in pending:
                if ok:
                    where, rec = pickle.loads(p)
                    fresh_items.append((where, rec, pickle.loads(s1), text))
                    nwins.append(nwin)
                else:
                    rejected.append(pickle.loads(p))
            fresh = exact_dedup([it[2] for it in fresh_items], seen)
            n_dup = len(fresh_items) - len(fresh)
            batch_items = [fresh_items[i] for i in fresh]
            nwins = [nwins[i] for i in fresh]
            # the plan of Curator.decide_batch: who needs the classifier, who is too long to score
            to_score = [i for i, it in enumerate(batch_items) if needs_classifier(it[2], cfg.classify == "all")]
            blocks = {}
            for i in to_score:
                block = curator.too_long(nwins[i], batch_items[i][2][0])
                if block is not None:
                    blocks[i] = block
            to_score = [i for i in to_score if i not in blocks]
            pickle.dump((len(pending), rejected, n_dup, batch_items, blocks, to_score), fh,
                        protocol=pickle.HIGHEST_PROTOCOL)
            jobs.append([batch_items[i][3] for i in to_score])
            pending.clear()

        for tbl in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            cols = [tbl.column(c).to_pylist() for c in ("shard", "row", "ok", "p", "text", "s1", "nwin")]
            curator.seconds["blocklist_cpu"] += sum(tbl.column("s_bl").to_pylist())
            curator.seconds["minhash_cpu"] += sum(tbl.column("s_mh").to_pylist())
            for shard, row, ok, p, text, s1, nwin in zip(*cols, strict=True):
                if (shard, row) <= last:  # preserve_order is what makes the batches the local engine's
                    raise RayEngineError(f"ray engine: rows out of read order ({last} then {(shard, row)})")
                last = (shard, row)
                pending.append((ok, p, text, s1, nwin))
                if len(pending) == cfg.batch_size:
                    flush()
            progress.update(task, advance=tbl.num_rows)
        if pending:
            flush()
    return jobs, len(jobs)


def _phase_b(ray, jobs: list[list[str]], policy, cfg, classifier, n_actors: int) -> dict[int, tuple]:
    """The classifier's result for every batch that has texts to score: ``{batch: (kind, payload, seconds,
    n_windows)}`` with kind 'ok' (probabilities per text) or 'error' (the exception's text)."""
    todo = [{"j": j, "texts": pickle.dumps(texts)} for j, texts in enumerate(jobs) if texts]
    if not todo:
        return {}
    with warnings.catch_warnings():
        # max_restarts has no named parameter yet (Ray 2.60 deprecates the **ray_remote_args it travels in)
        warnings.simplefilter("ignore")
        ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 4 * n_actors)).map_batches(
            _ClassifierActor, batch_size=1, batch_format="pyarrow", concurrency=n_actors, num_cpus=1,
            num_gpus=cfg.ray_num_gpus_per_actor or None,
            # no actor restarts: a dead actor fails the run (fail closed, nothing is written), and Ray does not
            # print its warning that restarting an actor whose constructor arguments sit in the object store may fail
            max_restarts=0,
            fn_constructor_kwargs={"policy": policy, "cfg": cfg, "classifier": classifier, "threads": 1})
    results = {}
    for tbl in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for j, res in zip(tbl.column("j").to_pylist(), tbl.column("res").to_pylist(), strict=True):
            results[j] = pickle.loads(res)
    if sorted(results) != [t["j"] for t in todo]:
        raise RayEngineError("ray engine: the classifier actors did not return every batch")
    return results


def _decided(spill: Path, n_batches: int, results: dict[int, tuple], curator: Curator) -> Iterator[DecidedBatch]:
    """The spilled batches with their classifier results, decided by the local engine's ``finish_batch``."""
    with open(spill, "rb") as fh:
        for j in range(n_batches):
            n_read, rejected, n_dup, items, blocks, to_score = pickle.load(fh)
            scored: list | str = []
            n_classified = 0
            if to_score:
                kind, payload, seconds, nw = results[j]
                curator.seconds["classifier"] += seconds
                scored = payload
                if kind == "ok":
                    curator.count_scored(len(to_score), nw)
                    n_classified = len(to_score)
            out = curator.finish_batch([it[2] for it in items], blocks, to_score, scored)
            yield DecidedBatch(n_read, rejected, n_dup, items, out, n_classified)
