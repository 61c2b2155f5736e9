"""The curate recipe: stream a corpus through the two-stage filter and dedup, write gold / quarantine /
borderline (and held-out) JSONL, and report counts, detection quality and throughput.

Pass 1 streams batches: read -> stage 1 (blocklist + MinHash, optionally in worker processes) -> exact
dedup -> stage 2 (classifier on escalated records) -> decision. Quarantined records are written at once
and their signatures indexed; the others go to a candidates file on disk. Pass 2 streams the candidates
and quarantines any that is a near-copy of a quarantined record, so forget items cannot leak into gold
as near-duplicates, whatever their order. Memory is one batch plus the dedup index (see dedup.py).

Two engines produce the batches: the local one here (``curate``: this process, stage 1 in worker processes) and
the Ray one (``ray_engine.curate_ray``: Ray Data tasks and classifier actors). Both decide with
``Curator.finish_batch`` and hand their batches to ``write_curated``, which does everything after the decisions,
so their output files are the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from ..io import atomic_path, provenance, write_json, write_jsonl, write_text
from ..policy import Policy, load_policy
from .blocklist import Blocklist
from .config import CurateConfig
from .corpus import ReadError, iter_records
from .dedup import LSHIndex, exact_key, minhash, minhash_params, normalise
from .filter import BORDERLINE, GOLD, QUARANTINE, Confusion, decide, failed
from .normalize import normalize

HELDOUT = "heldout"
OUTPUT_FILES = {GOLD: "gold.jsonl", QUARANTINE: "quarantine.jsonl", BORDERLINE: "borderline.jsonl",
                HELDOUT: "heldout.jsonl"}


@dataclass
class CurateResult:
    out_dir: Path
    report: dict
    files: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- stage 1 (picklable, for worker processes)

_WORKER: dict = {}


def _init_worker(blocklist: Blocklist, num_perm: int, shingle_words: int, dedup: bool) -> None:
    _WORKER.update(blocklist=blocklist, params=minhash_params(num_perm), n=shingle_words, dedup=dedup)


def _stage1(texts: list[str]) -> tuple[list[tuple], float, float]:
    """Blocklist hits, escalated domains, exact key and MinHash signature of each text, and the seconds
    spent on the blocklist and on hashing. The blocklist sees the whole text, as written and normalised; dedup
    hashes the normalised text, so a disguised copy of a quarantined document is a near-copy of it."""
    bl, params, n, dedup = _WORKER["blocklist"], _WORKER["params"], _WORKER["n"], _WORKER["dedup"]
    t0 = time.perf_counter()
    norms = [normalize(t, fold_letters=True) for t in texts]
    hits = [bl.hits(t, nt) for t, nt in zip(texts, norms, strict=True)]
    t1 = time.perf_counter()
    keys = [exact_key(t) if dedup else None for t in norms]
    sigs = [minhash(t, params, n) if dedup else None for t in norms]
    t2 = time.perf_counter()
    rows = [(h, bl.escalated(h), k, s, bl.decisive(h)) for h, k, s in zip(hits, keys, sigs, strict=True)]
    return rows, t1 - t0, t2 - t1


def _batched(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


# ---------------------------------------------------------------- the curator


def char_windows(text: str, size: int, overlap: int) -> list[str]:
    """Overlapping windows of ``size`` characters covering all of ``text`` (one when it is short enough): starts
    every ``size - overlap`` characters, the last one ends at the end. Any substring of at most ``overlap``
    characters lies whole inside one window; a text of L > size characters has 1 + ceil((L - size) / (size -
    overlap)) windows."""
    if len(text) <= size:
        return [text]
    step, last = size - overlap, len(text) - size
    return [text[s : s + size] for s in (min(i * step, last) for i in range(n_windows(len(text), size, overlap)))]


def n_windows(length: int, size: int, overlap: int) -> int:
    """How many ``char_windows`` a text of ``length`` characters has."""
    return 1 if length <= size else 1 + -(-(length - size) // (size - overlap))


# Every field a later stage can read as content: distill trains on prompt + completion (or text), generate prompts
# the teacher with prompt, the oracle learns completions, verify and the constitution read answers and messages.
CONTENT_FIELDS = ("prompt", "completion", "text", "answer", "answers", "messages", "chosen", "rejected", "response")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [x for v in value for x in _strings(v)]
    if isinstance(value, dict):  # chat messages: {"role", "content"}; score the content
        return _strings(value.get("content")) if "content" in value else [x for v in value.values() for x in _strings(v)]
    return []


def scored_text(rec: dict, text_field: str = "text") -> str | None:
    """The text the filter scores for ``rec``: ``text_field`` and every content field a later stage can read
    (``CONTENT_FIELDS``), so forbidden content in any of them is caught (a benign ``text`` cannot carry a forbidden
    ``completion`` into gold). A field already contained in another (the world's prompt inside its text) is not
    repeated, so blocklist hit counts are not inflated. None when the record has no content at all."""
    parts: list[str] = []
    for f in (text_field, *[c for c in CONTENT_FIELDS if c != text_field]):
        for piece in _strings(rec.get(f)):
            if piece.strip() and piece not in parts:
                parts.append(piece)
    parts = [p for p in parts if not any(p != q and p in q for q in parts)]
    return "\n".join(parts) if parts else None


def build_classifier(policy: Policy, cfg: CurateConfig):
    """The stage-2 classifier a config names: ``cfg.classifier_factory`` (``module:function``, called with
    ``(policy, cfg)``) when set, else the embedding (``make_embedder``) under a logistic head per forbidden domain.
    Both engines build it here: the Ray engine's classifier actors call this too, so they score with the same
    classifier as the in-process engine."""
    if cfg.classifier_factory:
        return load_factory(cfg.classifier_factory)(policy, cfg)
    from .classifier import PolicyClassifier, make_embedder

    embedder = make_embedder(cfg.classifier, cfg.classifier_model, cfg.classifier_layer,
                             batch_size=min(cfg.batch_size, 128))
    return PolicyClassifier(policy, embedder, c=cfg.classifier_c)


def load_factory(spec: str):
    """The callable ``module:function`` (or ``module.function``) names; a ValueError naming it otherwise."""
    import importlib

    mod, sep, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not mod or not name or not sep:
        raise ValueError(f"curate.classifier_factory {spec!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"curate.classifier_factory {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"curate.classifier_factory {spec!r} is not callable")
    return fn


def needs_classifier(row: tuple, classify_all: bool) -> bool:
    """Whether a record with this stage-1 row goes to the classifier: escalated (or every record with
    ``classify='all'``) and not already decided by stage 1."""
    _, esc, _, _, dec = row
    return bool(esc or classify_all) and not dec


def error_text(exc: BaseException) -> str:
    """How a classifier failure is written into ``curate.detail``."""
    return f"{type(exc).__name__}: {exc}"


class Curator:
    """A policy's filter: scores batches of texts (stage 1 and 2) and keeps the run's counters."""

    def __init__(self, policy: Policy, cfg: CurateConfig, classifier=None):
        self.policy, self.cfg = policy, cfg
        self.blocklist = Blocklist(policy)
        self.thresholds = {d.name: d.classifier_threshold for d in policy.forbidden}
        self.classifier = build_classifier(policy, cfg) if classifier is None else classifier
        self.training_keys = {normalise(t) for t in getattr(self.classifier, "training_texts", ())}
        self.seconds = Counter()
        self.n_classified = 0
        self.n_windows = 0

    def windows(self, text: str) -> list[str]:
        """The normalised windows of ``text`` the classifier scores (all of it, however long)."""
        return char_windows(normalize(text), self.cfg.max_chars, self.cfg.window_overlap)

    def classify(self, texts: list[str]) -> list[dict] | Exception:
        """Per-text probabilities per forbidden domain (the maximum over the text's windows), or the exception
        the classifier raised."""
        return self.classify_windows([self.windows(t) for t in texts])

    def classify_windows(self, windows: list[list[str]]) -> list[dict] | Exception:
        """``classify`` of texts already cut into windows: one classifier call for all the windows of the batch."""
        if not windows:
            return []
        t0 = time.perf_counter()
        flat = [w for ws in windows for w in ws]
        owner = np.repeat(np.arange(len(windows)), [len(ws) for ws in windows])
        try:
            probs = self.classifier.predict_proba(flat)
            best = {}
            for d in self.thresholds:
                p = np.asarray(probs[d], dtype=np.float64).reshape(-1)
                if p.shape != (len(flat),):
                    raise ValueError(f"classifier returned {p.shape[0]} probabilities for {len(flat)} windows")
                best[d] = np.full(len(windows), -np.inf)
                with np.errstate(invalid="ignore"):
                    np.maximum.at(best[d], owner, p)  # NaN propagates, and is caught below
            rows = [{d: float(best[d][i]) for d in self.thresholds} for i in range(len(windows))]
            if any(not np.isfinite(v) for r in rows for v in r.values()):
                raise ValueError("classifier returned a non-finite probability")
        except Exception as exc:  # fail closed: the whole batch is quarantined with the reason
            return exc
        finally:
            self.seconds["classifier"] += time.perf_counter() - t0
        self.count_scored(len(windows), len(flat))
        return rows

    def count_scored(self, n_texts: int, n_windows: int) -> None:
        """Count a batch the classifier scored (here, or in a Ray actor)."""
        self.n_classified += n_texts
        self.n_windows += n_windows

    def decide_batch(self, stage1: list[tuple], texts: list[str], classify_all: bool) -> list[dict]:
        """The curate block of each text given its stage-1 results."""
        to_score = [i for i, row in enumerate(stage1) if needs_classifier(row, classify_all)]
        size, overlap = self.cfg.max_chars, self.cfg.window_overlap
        norms = {i: normalize(texts[i]) for i in to_score}
        blocks = {}
        for i in to_score:  # counted before any window is cut: a huge document costs no memory
            block = self.too_long(n_windows(len(norms[i]), size, overlap), stage1[i][0])
            if block is not None:
                blocks[i] = block
        to_score = [i for i in to_score if i not in blocks]
        scored = self.classify_windows([char_windows(norms[i], size, overlap) for i in to_score])
        return self.finish_batch(stage1, blocks, to_score, scored)

    def too_long(self, n: int, hits: dict) -> dict | None:
        """The fail-closed block of a document whose classifier would need ``n`` windows, if over ``max_windows``."""
        cap, size = self.cfg.max_windows, self.cfg.max_chars
        if cap and n > cap:
            return failed("too_long", f"the classifier would need {n} windows of {size} characters "
                          f"(max_windows={cap}); not scored in part", {"blocklist_hits": hits})
        return None

    def finish_batch(self, stage1: list[tuple], blocks: dict[int, dict], to_score: list[int],
                     scored: list[dict] | Exception | str) -> list[dict]:
        """The curate block of each record of a batch: ``blocks`` (too long), or the decision from its stage-1 row and
        ``scored`` (the classifier's result for the records ``to_score``: probabilities, or the exception it raised,
        or that exception's text as a Ray actor reports it): a failed batch is quarantined (fail closed)."""
        blocks = dict(blocks)
        probs: dict[int, dict] = {}
        if isinstance(scored, (Exception, str)):
            err = scored if isinstance(scored, str) else error_text(scored)
            blocks.update({i: failed("classifier_error", err, {"blocklist_hits": stage1[i][0]}) for i in to_score})
        else:
            probs = dict(zip(to_score, scored, strict=True))
        out = []
        for i, (hits, esc, _, _, dec) in enumerate(stage1):
            if i in blocks:
                out.append(blocks[i])
            else:
                out.append(decide(hits, esc, probs.get(i), self.thresholds, self.cfg.borderline_band, dec))
        return out

    def evaluate(self, records: list[dict], text_field: str = "text") -> dict:
        """Detection quality on labelled records the classifier never trained on: each stage alone
        (blocklist escalation; classifier on every record) and the configured two-stage filter."""
        _init_worker(self.blocklist, self.cfg.minhash_perm, self.cfg.shingle_words, dedup=False)
        conf = {"blocklist_only": Confusion(), "classifier_only": Confusion(), "two_stage": Confusion()}
        n_excluded = 0
        for batch in _batched(records, self.cfg.batch_size):
            pairs = [(r, scored_text(r, text_field)) for r in batch]
            pairs = [(r, t) for r, t in pairs if t is not None]
            keep = [(r, t) for r, t in pairs if normalise(t) not in self.training_keys]
            n_excluded += len(pairs) - len(keep)
            texts = [t for _, t in keep]
            keep = [r for r, _ in keep]
            stage1, _, _ = _stage1(texts)
            scored = self.classify(texts)
            if isinstance(scored, Exception):
                raise RuntimeError(f"classifier failed on the evaluation set: {scored}") from scored
            for r, (hits, esc, _, _, dec), p in zip(keep, stage1, scored, strict=True):
                forbidden = r.get(self.cfg.label_field) == "forbidden"
                dom = r.get("domain")
                two = decide(hits, esc, p if (esc or self.cfg.classify == "all") else None, self.thresholds,
                             self.cfg.borderline_band, dec)
                conf["blocklist_only"].add(forbidden, bool(esc), dom)
                conf["classifier_only"].add(forbidden, any(p[d] >= t for d, t in self.thresholds.items()), dom)
                conf["two_stage"].add(forbidden, two["decision"] != GOLD, dom)
        out = {k: c.metrics() for k, c in conf.items()}
        out["n_excluded_as_training_exemplars"] = n_excluded
        return out


class _RateColumn:
    """A rich progress column showing docs/s."""

    def __new__(cls):
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed or 0:,.0f} docs/s", style="progress.data.speed")

        return Rate()


def _progress(quiet: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    _RateColumn(), TimeElapsedColumn(), console=Console(stderr=True), disable=quiet)


# ---------------------------------------------------------------- the recipe: what both engines share


def check_record(where: str, rec: dict | ReadError, text_field: str) -> str | tuple[dict, dict, str | None]:
    """The text the filter scores for a readable record, or, for one that fails closed (unreadable, a text field
    that is not a string, no text at all), ``(what quarantine.jsonl gets, its curate block, its scored_text)``."""
    tf = text_field
    if isinstance(rec, ReadError):
        return {"raw": rec.raw}, {**failed("unreadable", rec.msg), "source": where}, None
    if tf in rec and not isinstance(rec[tf], str):
        return rec, {**failed("missing_text_field", f"field {tf!r} is not a string"), "source": where}, \
            scored_text(rec, tf)
    text = scored_text(rec, tf)
    if text is None:
        why = (f"field {tf!r} is empty and no other content field has text" if tf in rec else
               f"field {tf!r} is missing (and no {'/'.join(CONTENT_FIELDS)} field has text)")
        return rec, {**failed("empty_text" if tf in rec else "missing_text_field", why), "source": where}, None
    return text


def exact_dedup(stage1: list[tuple], seen: set[bytes]) -> list[int]:
    """Indices of the rows whose exact key was not seen before (in order), adding their keys to ``seen``: exact
    dedup runs before the classifier, so duplicates are dropped, never scored twice."""
    fresh = []
    for i, (_, _, key, _, _) in enumerate(stage1):
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        fresh.append(i)
    return fresh


@dataclass
class DecidedBatch:
    """One batch of ``batch_size`` records read, after stage 1, exact dedup and stage 2: what an engine hands to
    ``write_curated``. ``rejected`` failed closed before stage 1 (record as written, block, scored text);
    ``items`` are the records left after exact dedup (where, record, stage-1 row, scored text) with ``blocks``,
    their curate blocks; ``n_classified`` of them were scored by the classifier."""

    n_read: int
    rejected: list[tuple[dict, dict, str | None]]
    n_dup: int
    items: list[tuple[str, dict, tuple, str]]
    blocks: list[dict]
    n_classified: int


def write_curated(batches: Iterable[DecidedBatch], out: Path, policy: Policy, cfg: CurateConfig, curator: Curator,
                  *, t_start: float, t_setup: float, progress, task, eval_records: list[dict] | None = None,
                  inputs: dict | None = None, engine: dict | None = None) -> CurateResult:
    """Everything after the decisions, for both engines: quarantine and near-dedup of each batch in read order, the
    holdout split and the candidates file (pass 1), pass 2 (kept near-copies of quarantined records are
    quarantined), the held-out evaluation, curate.json and curate.md. ``batches`` may be lazy (the local engine
    computes each batch when asked); ``progress`` advances ``task`` by each batch's records."""
    tf = cfg.text_field
    counts = {"read": 0, "by_decision": Counter(), "by_reason": Counter(), "by_domain": {},
              "by_stage": Counter()}
    corpus_conf = Confusion()
    q_index = LSHIndex(cfg.minhash_perm, cfg.minhash_bands, cfg.near_dup_jaccard)
    kept_index = LSHIndex(cfg.minhash_perm, cfg.minhash_bands, cfg.near_dup_jaccard)
    holdout = set(cfg.holdout_domains)

    def tally(rec: dict, block: dict, text: str | None) -> None:
        dec = block["decision"]
        counts["by_decision"][dec] += 1
        counts["by_reason"][block["reason"]] += 1
        dom = str(rec.get("domain") or block.get("domain") or "unlabelled")
        counts["by_domain"].setdefault(dom, Counter())[dec] += 1
        label = rec.get(cfg.label_field)
        if label in ("forbidden", "allowed") and isinstance(text, str) and normalise(text) not in curator.training_keys:
            corpus_conf.add(label == "forbidden", dec != GOLD and dec != HELDOUT, dom)

    cand_path = out / ".candidates.jsonl.tmp"
    with contextlib.ExitStack() as stack:
        q_tmp = stack.enter_context(atomic_path(out / OUTPUT_FILES[QUARANTINE]))
        q_fh = stack.enter_context(open(q_tmp, "w", encoding="utf-8"))
        cand_fh = stack.enter_context(open(cand_path, "w", encoding="utf-8"))
        stack.callback(lambda: cand_path.unlink(missing_ok=True))

        def quarantine(rec: dict, block: dict, text: str | None, sig=None) -> None:
            tally(rec, block, text)
            q_fh.write(json.dumps({**rec, "curate": block}, ensure_ascii=False, default=str) + "\n")
            if sig is not None:
                q_index.add(sig)

        for batch in batches:
            counts["read"] += batch.n_read
            for rec, block, text in batch.rejected:  # failed closed before stage 1
                quarantine(rec, block, text)
            if batch.n_dup:
                counts["by_stage"]["dedup_exact_dropped"] += batch.n_dup
            stage1 = [row for _, _, row, _ in batch.items]
            counts["by_stage"]["stage1_escalated"] += sum(bool(s[1]) for s in stage1)
            counts["by_stage"]["stage1_decisive"] += sum(bool(s[4]) for s in stage1)
            counts["by_stage"]["stage2_classified"] += batch.n_classified
            counts["by_stage"]["stage2_windows"] = curator.n_windows
            t0 = time.perf_counter()
            for (where, rec, (_, _, _, sig, _), text), block in zip(batch.items, batch.blocks, strict=True):
                block["source"] = where
                if block["decision"] == QUARANTINE:
                    quarantine(rec, block, text, sig)
                    continue
                if sig is not None and kept_index.query(sig):
                    counts["by_stage"]["dedup_near_dropped"] += 1
                    continue
                if sig is not None:
                    kept_index.add(sig)
                if block["decision"] == GOLD and rec.get("domain") in holdout:
                    block = {**block, "decision": HELDOUT, "reason": "holdout_domain"}
                cand_fh.write(json.dumps({"r": {**rec, "curate": block},
                                          "sig": sig.tobytes().hex() if sig is not None else None},
                                         ensure_ascii=False, default=str) + "\n")
            curator.seconds["dedup"] += time.perf_counter() - t0
            progress.update(task, advance=batch.n_read)
        cand_fh.close()

        # pass 2: a kept record that is a near-copy of a quarantined one is quarantined too
        t0 = time.perf_counter()
        handles = {}
        for dec in (GOLD, BORDERLINE, HELDOUT):
            tmp = stack.enter_context(atomic_path(out / OUTPUT_FILES[dec]))
            handles[dec] = stack.enter_context(open(tmp, "w", encoding="utf-8"))
        with open(cand_path, encoding="utf-8") as fh:
            for line in fh:
                item = json.loads(line)
                rec = item["r"]
                block = rec.pop("curate")
                if item["sig"] is not None and len(q_index):
                    near = q_index.query(np.frombuffer(bytes.fromhex(item["sig"]), dtype=np.uint32))
                    if near:
                        counts["by_stage"]["dedup_near_quarantined"] += 1
                        quarantine(rec, {**block, "decision": QUARANTINE, "rule": "dedup:near_copy_of_quarantined",
                                         "reason": "near_duplicate_of_quarantined",
                                         "scores": {**block["scores"], "near_dup_jaccard": round(near[0][1], 4)}},
                                   scored_text(rec, tf))
                        continue
                tally(rec, block, scored_text(rec, tf))
                handles[block["decision"]].write(json.dumps({**rec, "curate": block}, ensure_ascii=False,
                                                            default=str) + "\n")
        curator.seconds["dedup"] += time.perf_counter() - t0
        for h in handles.values():
            h.close()
        q_fh.close()
    wall = time.perf_counter() - t_start - t_setup

    heldout_eval = curator.evaluate(eval_records, tf) if eval_records else None
    report = _report(cfg, policy, counts, corpus_conf.metrics(), heldout_eval, curator, wall, t_setup, inputs,
                     engine or {"engine": "local", "num_proc": cfg.num_proc})
    files = {dec: str(out / name) for dec, name in OUTPUT_FILES.items()}
    write_json(out / "curate.json", report)
    write_text(out / "curate.md", render_markdown(report))
    files.update(report="curate.json", markdown=str(out / "curate.md"))
    return CurateResult(out, report, files)


# ---------------------------------------------------------------- the local (in-process) engine


def curate(
    records: Iterable[tuple[str, dict | ReadError]],
    out_dir: str | Path,
    policy: Policy,
    cfg: CurateConfig | None = None,
    classifier=None,
    eval_records: list[dict] | None = None,
    total: int | None = None,
    quiet: bool = True,
    inputs: dict | None = None,
) -> CurateResult:
    """Curate a stream of ``(where, record)`` into ``out_dir`` in this process (stage 1 in ``num_proc`` worker
    processes); returns the report (also curate.json). The Ray engine reads files: ``run`` with ``engine='ray'``."""
    cfg = cfg or CurateConfig()
    if cfg.engine != "local":
        raise ValueError(f"curate() is the local engine; engine={cfg.engine!r} reads corpus files: call "
                         "surgical.curate.run.run(cfg, paths, out)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    curator = Curator(policy, cfg, classifier)
    t_setup = time.perf_counter() - t_start
    pool = None
    from ..threads import capped

    num_proc = capped(cfg.num_proc)  # a parallel pipeline stage keeps to its share of the cores
    if num_proc > 1:
        pool = mp.get_context("spawn").Pool(num_proc, initializer=_init_worker,
                                            initargs=(curator.blocklist, cfg.minhash_perm, cfg.shingle_words, cfg.dedup))
    else:
        _init_worker(curator.blocklist, cfg.minhash_perm, cfg.shingle_words, cfg.dedup)
    with contextlib.ExitStack() as stack:
        if pool is not None:
            stack.callback(pool.terminate)
        progress = stack.enter_context(_progress(quiet))
        task = progress.add_task("curate", total=total)
        result = write_curated(_local_batches(records, cfg, curator, pool), out, policy, cfg, curator,
                               t_start=t_start, t_setup=t_setup, progress=progress, task=task,
                               eval_records=eval_records, inputs=inputs)
        if pool is not None:
            pool.close()
    return result


def _local_batches(records: Iterable[tuple[str, dict | ReadError]], cfg: CurateConfig, curator: Curator,
                   pool) -> Iterator[DecidedBatch]:
    """Pass 1 of the local engine, one batch at a time: read, fail closed on what cannot be scored, stage 1 (in the
    pool's worker processes when there is one), exact dedup, stage 2."""
    seen: set[bytes] = set()
    for batch in _batched(records, cfg.batch_size):
        rejected, ok = [], []
        for where, rec in batch:  # fail closed on anything unreadable
            checked = check_record(where, rec, cfg.text_field)
            if isinstance(checked, str):
                ok.append((where, rec, checked))
            else:
                rejected.append(checked)
        texts = [t for _, _, t in ok]
        t0 = time.perf_counter()
        if pool is not None and texts:
            from ..threads import capped

            step = -(-len(texts) // capped(cfg.num_proc))  # one part per pool process
            parts = pool.map(_stage1, [texts[i : i + step] for i in range(0, len(texts), step)])
            stage1 = [x for p in parts for x in p[0]]
            curator.seconds["blocklist_cpu"] += sum(p[1] for p in parts)
            curator.seconds["minhash_cpu"] += sum(p[2] for p in parts)
        else:
            stage1, s_bl, s_mh = _stage1(texts)
            curator.seconds["blocklist_cpu"] += s_bl
            curator.seconds["minhash_cpu"] += s_mh
        curator.seconds["stage1_wall"] += time.perf_counter() - t0
        fresh = exact_dedup(stage1, seen)
        items = [(ok[i][0], ok[i][1], stage1[i], ok[i][2]) for i in fresh]
        n_before = curator.n_classified
        blocks = curator.decide_batch([it[2] for it in items], [it[3] for it in items], cfg.classify == "all")
        yield DecidedBatch(len(batch), rejected, len(stage1) - len(fresh), items, blocks,
                           curator.n_classified - n_before)


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 1) if seconds > 0 else None


def _report(cfg, policy, counts, corpus_metrics, heldout_eval, curator, wall, t_setup, inputs, engine) -> dict:
    n_read = counts["read"]
    headline = heldout_eval["two_stage"] if heldout_eval else corpus_metrics
    s = curator.seconds
    return {
        "forbidden_recall": headline["forbidden_recall"],
        "overfilter_rate": headline["overfilter_rate"],
        "precision": headline["precision"],
        "f1": headline["f1"],
        "measured_on": "held-out labelled set (eval)" if heldout_eval else "labelled input records minus exemplars",
        **engine,
        "counts": {
            "read": n_read,
            "by_decision": dict(counts["by_decision"]),
            "by_reason": dict(counts["by_reason"]),
            "by_stage": dict(counts["by_stage"]),
            "by_domain": {d: dict(c) for d, c in sorted(counts["by_domain"].items())},
        },
        "throughput_docs_per_s": _rate(n_read, wall),
        "throughput_docs_per_s_by_stage": {
            "blocklist": _rate(n_read, s["blocklist_cpu"]),
            "minhash": _rate(n_read, s["minhash_cpu"]),
            "classifier": _rate(curator.n_classified, s["classifier"]),
            "overall": _rate(n_read, wall),
        },
        "seconds": {"setup_classifier": round(t_setup, 3), "wall": round(wall, 3),
                    **{k: round(v, 3) for k, v in s.items()}},
        "eval": heldout_eval,
        "corpus_labelled": corpus_metrics,
        "classifier": {"kind": cfg.classifier, "embedding": getattr(getattr(curator.classifier, "embedder", None),
                                                                     "name", type(curator.classifier).__name__),
                       "n_training_texts": len(curator.training_keys)},
        "policy": {"name": policy.name, "forbidden": [d.name for d in policy.forbidden],
                   "allowed": [a.name for a in policy.allowed]},
        "holdout_domains": list(cfg.holdout_domains),
        "provenance": provenance(cfg, inputs or {}, policy_hash=_policy_hash(policy)),
    }


def _policy_hash(policy: Policy) -> str:
    from ..io import sha256_json

    return sha256_json(policy.model_dump())


def _fmt_ci(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.4f} [{lo:.4f}, {hi:.4f}] (n={m['n']})"


def render_markdown(report: dict) -> str:
    """curate.md: the report a person reads."""
    c = report["counts"]
    lines = [f"# curate report: policy `{report['policy']['name']}`", "",
             f"Measured on: {report['measured_on']}. Engine: {report.get('engine', 'local')}.", "",
             "| metric | value [95% Wilson CI] |", "|---|---|",
             f"| forbidden recall | {_fmt_ci(report['forbidden_recall'])} |",
             f"| over-filtering of allowed | {_fmt_ci(report['overfilter_rate'])} |",
             f"| precision | {report['precision']:.4f} |", f"| F1 | {report['f1']:.4f} |", ""]
    if report.get("eval"):
        lines += ["## Each stage alone (held-out set)", "", "| stage | recall | over-filtering | precision |",
                  "|---|---|---|---|"]
        for k in ("blocklist_only", "classifier_only", "two_stage"):
            m = report["eval"][k]
            lines.append(f"| {k} | {_fmt_ci(m['forbidden_recall'])} | {_fmt_ci(m['overfilter_rate'])} | "
                         f"{m['precision']:.4f} |")
        lines.append("")
    lines += ["## Counts", "", f"Read: {c['read']}", "", "| domain | " + " | ".join(OUTPUT_FILES) + " |",
              "|---|" + "---|" * len(OUTPUT_FILES)]
    for d, row in c["by_domain"].items():
        lines.append(f"| {d} | " + " | ".join(str(row.get(k, 0)) for k in OUTPUT_FILES) + " |")
    lines += ["", "| reason | records |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(c["by_reason"].items())]
    lines += ["", "| stage counter | records |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(c["by_stage"].items())]
    lines += ["", "## Throughput (docs/s)", "", "| stage | docs/s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["throughput_docs_per_s_by_stage"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry points


def _count_lines(path: str | Path) -> int:
    """Non-blank lines of a text file (a cheap streaming pass, for the progress bar's total)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def run(cfg: CurateConfig, input_path: str | Path | list, out_dir: str | Path, policy_path: str | Path | None = None,
        eval_path: str | Path | None = None, classifier=None, quiet: bool = True) -> CurateResult:
    """Curate a corpus (JSONL, parquet, text or a saved HF dataset; or a list of such files, streamed one after
    the other) with a policy YAML, on the engine ``cfg.engine`` names: ``local`` (this process) or ``ray`` (Ray Data,
    each file a shard; same output files, byte for byte: see ray_engine.py)."""
    import itertools

    from ..policy import demo_policy_path
    from .corpus import detect_format

    policy_path = Path(policy_path or cfg.policy or demo_policy_path())
    policy = load_policy(policy_path)
    eval_path = eval_path or cfg.eval_file or None
    eval_records = [r for _, r in iter_records(eval_path, cfg.text_field) if isinstance(r, dict)] if eval_path else None
    paths = [Path(p) for p in input_path] if isinstance(input_path, (list, tuple)) else [Path(input_path)]
    if not paths:
        raise ValueError("curate: no corpus file given")
    fmts = [detect_format(p) for p in paths]
    total = sum(_count_lines(p) for p in paths) if all(f == "jsonl" for f in fmts) and not quiet else None
    corpus_inputs = {"corpus": paths[0]} if len(paths) == 1 else {f"corpus[{i}]": p for i, p in enumerate(paths)}
    inputs = {**corpus_inputs, "policy": policy_path, **({"eval": eval_path} if eval_path else {})}
    if cfg.engine == "ray":
        from .ray_engine import curate_ray

        res = curate_ray(paths, fmts, out_dir, policy, cfg, classifier=classifier, eval_records=eval_records,
                         total=total, quiet=quiet, inputs=inputs)
    else:
        stream = itertools.chain.from_iterable(iter_records(p, cfg.text_field, cfg.text_unit, fmt=f)
                                               for p, f in zip(paths, fmts, strict=True))
        res = curate(stream, out_dir, policy, cfg, classifier=classifier, eval_records=eval_records, quiet=quiet,
                     total=total, inputs=inputs)
    if cfg.simulate_leak_rate > 0:
        from .leak import simulate_leak

        res.report["simulated_leak"] = simulate_leak(out_dir, cfg.simulate_leak_rate, cfg.simulate_leak_seed,
                                                     cfg.label_field)
    return res


def run_demo(out_dir: str | Path, pipeline_cfg=None, classifier=None, quiet: bool = True,
             policy_path: str | Path | None = None) -> CurateResult:
    """The world corpus (train split, all domains) curated with the demo policy; the held-out set is the
    world's test split (disjoint from the train split the policy's exemplars come from)."""
    from ..config import demo_config
    from ..demo import world_corpus

    pcfg = pipeline_cfg or demo_config()
    cfg = pcfg.curate
    out = Path(out_dir)
    corpus_path = out / "input.jsonl"
    write_jsonl(corpus_path, world_corpus(pcfg.world, split=cfg.world_split))
    eval_path = out / "eval.jsonl"
    write_jsonl(eval_path, world_corpus(pcfg.world, split="test"))
    return run(cfg, corpus_path, out, policy_path=policy_path, eval_path=eval_path, classifier=classifier,
               quiet=quiet)
