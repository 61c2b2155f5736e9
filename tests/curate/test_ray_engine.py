"""`engine: ray` writes the same gold / quarantine / borderline / heldout files as the local engine, byte for byte.

Ray runs in this process with at most 2 CPUs: one Ray for the module (the engine joins it and leaves it running),
and the first test lets the engine start and shut down its own. Classifier actors build their classifier in their
own processes, so tests that need a stand-in name a factory in ray_classifiers.py (on the workers' PYTHONPATH).
Forbidden content is the arithmetic world's stand-in (multiplication and division)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

from surgical.cli import app  # noqa: E402
from surgical.curate.config import CurateConfig  # noqa: E402
from surgical.curate.run import OUTPUT_FILES, run  # noqa: E402
from surgical.io import read_jsonl, write_jsonl  # noqa: E402
from surgical.world.corpus import world_corpus  # noqa: E402

HERE = Path(__file__).parent
STUB = "ray_classifiers:stub"
runner = CliRunner()

# ~100 words of benign prose: a record of it plus a worked division is quarantined by stage 1 alone (decisive),
# and the prose alone (no blocklist hit, so gold in pass 1) is a near-copy of it that pass 2 must quarantine.
PROSE = " ".join(
    "notes from the long workshop in the old town hall on a rainy morning with the whole class present "
    "and the windows open while the teacher read aloud from the green book about rivers and hills and "
    "the children copied every line into the blue notebook kept by the door before lunch was served in "
    "the small garden behind the hall where the old gardener grew beans and tall yellow flowers that "
    "everyone liked to draw in the afternoon when the rain stopped and the sun came out over the roofs "
    "of the quiet town near the sea".split())
WORKED_DIV = "1686/3: 1/3=0 r1; 16/3=5 r1; 18/3=6 r0; 6/3=2 r0; so 562"


@pytest.fixture(scope="module")
def ray_local():
    """One in-process Ray (2 CPUs, no GPU) for the module; its workers can import ray_classifiers."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture
def cached_minilm(minilm, monkeypatch):
    """The driver's classifier embeds with the session's MiniLM (the actors load their own copy)."""
    from surgical.curate import classifier as clf_mod

    monkeypatch.setattr(clf_mod, "make_embedder", lambda *a, **k: minilm)


@pytest.fixture
def workers_import_here(monkeypatch):
    """For a Ray the engine starts itself: its workers inherit this PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))


def _shards(tmp_path: Path, n: int) -> list[Path]:
    """Two JSONL shards of the world corpus (all domains) with unreadable and unscoreable lines, exact duplicates
    across shards, and a benign near-copy (shard 1) of a forbidden record that comes later (shard 2)."""
    recs = world_corpus(split="train")[:n]
    half = n // 2
    a, b = tmp_path / "shard-0.jsonl", tmp_path / "shard-1.jsonl"
    write_jsonl(a, recs[:half] + [{"id": "near-copy", "text": PROSE}])
    with open(a, "ab") as fh:
        fh.write(b'{"text": "07*3: 7*3+0=21; so 21", BROKEN\n[1, 2, 3]\n{"text": 12345}\n{"body": "no text"}\n'
                 b'{"text": "   "}\n{"text": "84/4: so 21 \xff\xfe"}\n')
    write_jsonl(b, recs[half:] + recs[:20] + [{"id": "forbidden-original", "text": f"{PROSE} {WORKED_DIV}"}])
    return [a, b]


def _both(tmp_path: Path, paths, **cfg) -> dict[str, dict]:
    """Run both engines on ``paths``; assert every output file is byte-identical; return both reports."""
    reports = {}
    for engine in ("local", "ray"):
        res = run(CurateConfig(engine=engine, **cfg), paths if len(paths) > 1 else paths[0], tmp_path / engine)
        reports[engine] = res.report
        assert not [p.name for p in (tmp_path / engine).iterdir() if p.name.endswith(".tmp")]  # spills cleaned up
    for name in OUTPUT_FILES.values():
        local, ray_ = (tmp_path / "local" / name).read_bytes(), (tmp_path / "ray" / name).read_bytes()
        assert local == ray_, name
    same = ("counts", "forbidden_recall", "overfilter_rate", "precision", "f1", "corpus_labelled", "eval", "classifier")
    assert json.dumps([reports["local"][k] for k in same]) == json.dumps([reports["ray"][k] for k in same])
    assert reports["local"]["engine"] == "local" and reports["ray"]["engine"] == "ray"
    return reports


# ---------------------------------------------------------------- the engine's own Ray, and the CLI


def test_cli_engine_ray_starts_and_shuts_down_its_own_ray(tmp_path, workers_import_here):
    import ray

    assert not ray.is_initialized()
    paths = _shards(tmp_path, 200)
    (tmp_path / "p.yaml").write_text(f"curate:\n  classifier_factory: '{STUB}'\n  batch_size: 32\n")
    args = ["curate", "--input", str(paths[0]), "--input", str(paths[1]), "--config", str(tmp_path / "p.yaml"),
            "--quiet", "--json"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--num-proc", "1"])
    assert r.exit_code == 0, r.output
    assert not ray.is_initialized()  # started here, so shut down here
    summary = json.loads(r.stdout.splitlines()[0])
    assert summary["engine"] == "ray" and summary["counts"]["read"] == 200 + 1 + 6 + 20 + 1
    rep = json.loads((tmp_path / "ray" / "curate.json").read_text())
    assert rep["ray"]["workers"] == 1 and rep["ray"]["joined_existing"] is False
    assert rep["provenance"]["config"]["engine"] == "ray"
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "local")])
    assert r.exit_code == 0, r.output
    for name in OUTPUT_FILES.values():
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name


def test_cli_bad_engine_and_missing_ray_are_one_line_errors(tmp_path, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, [{"text": "1+1: so 2"}])
    base = ["curate", "--input", str(corpus), "--out", str(tmp_path / "o"), "--quiet"]
    r = runner.invoke(app, [*base, "--engine", "spark"])
    assert r.exit_code == 1 and "--engine" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*base, "--ray-address", "auto"])
    assert r.exit_code == 1 and "--engine ray" in r.output
    (tmp_path / "p.yaml").write_text(f"curate:\n  classifier_factory: '{STUB}'\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = runner.invoke(app, [*base, "--engine", "ray", "--config", str(tmp_path / "p.yaml")])
    assert r.exit_code == 1 and "pip install 'surgical[scale]'" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o" / "gold.jsonl").exists()
    r = runner.invoke(app, [*base[:2], str(tmp_path / "missing.jsonl"), *base[3:], "--engine", "ray"])
    assert r.exit_code == 1 and "missing.jsonl" in r.output


# ---------------------------------------------------------------- identity


def test_engines_identical_on_the_demo_corpus_with_minilm(tmp_path, ray_local, cached_minilm):
    """The real classifier (MiniLM + logistic heads): its floats depend on which windows share a batch, so this is
    the test that the actors see exactly the local engine's batches. batch_size 64 is also the cached MiniLM's
    embedding batch, so the driver's classifier and the actors' (built from the config) embed alike."""
    reps = _both(tmp_path, _shards(tmp_path, 1000), batch_size=64, holdout_domains=["sub"], ray_classifier_actors=1)
    c = reps["ray"]["counts"]
    assert c["by_stage"]["stage2_classified"] > 20  # the mixed problems: decided by the classifier
    assert c["by_stage"]["dedup_exact_dropped"] >= 20 and c["by_stage"]["dedup_near_quarantined"] >= 1
    assert c["by_reason"]["unreadable"] == 3 and c["by_reason"]["missing_text_field"] == 2
    assert c["by_reason"]["empty_text"] == 1 and c["by_decision"]["heldout"] > 0
    q = read_jsonl(tmp_path / "ray" / "quarantine.jsonl")
    near = [r for r in q if r.get("id") == "near-copy"]
    assert near and near[0]["curate"]["reason"] == "near_duplicate_of_quarantined"
    assert reps["ray"]["ray"]["joined_existing"] is True and reps["ray"]["ray"]["classifier_actors"] == 1
    assert reps["ray"]["classifier"]["n_training_texts"] > 0  # exemplars are left out of the corpus metrics


def test_multi_shard_with_a_malformed_line_and_a_parquet_shard(tmp_path, ray_local):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = world_corpus(split="val")[:150]
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "c.jsonl"
    write_jsonl(a, recs[:50])
    with open(a, "ab") as fh:
        fh.write(b'{"text": "3*4: so 12", BROKEN\n')
    # parquet types JSON cannot hold (a timestamp), a nested list and a null must reach the files as locally
    rows = [{**r, "answer": str(r["answer"]), "seen": datetime.datetime(2024, 1, 1 + i % 28), "tags": [r["domain"], "x"],
             "note": None if i % 3 else "n"} for i, r in enumerate(recs[50:100])]
    pq.write_table(pa.Table.from_pylist(rows), b, row_group_size=16)
    write_jsonl(c, recs[100:] + recs[:5])
    reps = _both(tmp_path, [a, b, c], batch_size=16, classifier_factory=STUB)
    assert reps["ray"]["ray"]["batches"] == -(-(150 + 1 + 5) // 16)
    q = read_jsonl(tmp_path / "ray" / "quarantine.jsonl")
    bad = [r for r in q if r["curate"]["reason"] == "unreadable"]
    assert len(bad) == 1 and bad[0]["curate"]["source"] == f"{a}:51" and "BROKEN" in bad[0]["raw"]
    out = read_jsonl(tmp_path / "ray" / "gold.jsonl") + q
    from_parquet = [r for r in out if r["curate"]["source"].startswith(f"{b}:row ")]
    assert len(from_parquet) == 50 and from_parquet[0]["seen"].startswith("2024-01-")
    assert reps["ray"]["counts"]["by_stage"]["dedup_exact_dropped"] == 5


def test_a_classifier_that_raises_in_the_actor_quarantines_its_batch(tmp_path, ray_local):
    """Fail closed on Ray too: the batch whose classifier call raised is quarantined (classifier_error), the
    others are decided; the files are the local engine's."""
    reps = _both(tmp_path, _shards(tmp_path, 300), batch_size=32, classifier_factory="ray_classifiers:crash_on_seven",
                 classify="all")
    reasons = reps["ray"]["counts"]["by_reason"]
    assert reasons["classifier_error"] > 0 and reasons.get("forbidden", 0) > 0
    q = read_jsonl(tmp_path / "ray" / "quarantine.jsonl")
    err = [r for r in q if r["curate"]["reason"] == "classifier_error"]
    assert err[0]["curate"]["detail"] == "RuntimeError: stub classifier crashed"
    assert all(r["curate"]["decision"] != "quarantine" for r in read_jsonl(tmp_path / "ray" / "gold.jsonl"))


def test_gpu_actors_without_a_gpu_is_an_error_not_a_hang(tmp_path, ray_local):
    from surgical.curate.ray_engine import RayEngineError

    assert ray_local.cluster_resources().get("GPU", 0) == 0  # the module's Ray has num_gpus=0
    write_jsonl(tmp_path / "c.jsonl", [{"text": "3*3: so 9"}])
    with pytest.raises(RayEngineError, match="ray_num_gpus_per_actor=1.0 but this Ray has 0 GPUs"):
        run(CurateConfig(engine="ray", classifier_factory=STUB, ray_num_gpus_per_actor=1), tmp_path / "c.jsonl",
            tmp_path / "out")
    assert not (tmp_path / "out" / "gold.jsonl").exists()


@pytest.mark.slow
def test_engines_identical_on_a_synthetic_100k_corpus(tmp_path, ray_local, cached_minilm):
    from surgical.demo.synthetic import synthetic_corpus

    recs = synthetic_corpus(100_000, seed=0)
    paths = [tmp_path / f"syn-{i}.jsonl" for i in range(4)]
    for i, p in enumerate(paths):
        write_jsonl(p, recs[i * 25_000 : (i + 1) * 25_000])
    reps = _both(tmp_path, paths, batch_size=64, ray_classifier_actors=2)
    c = reps["ray"]["counts"]
    assert c["read"] == 100_000 and c["by_stage"]["dedup_exact_dropped"] > 1000
    assert c["by_stage"]["stage2_classified"] > 1000
