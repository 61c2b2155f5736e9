"""Curate throughput of the two engines: local (in-process, stage 1 in worker processes) against Ray Data.

For each corpus, four runs with the default filter (MiniLM + logistic heads, classify='escalated'):
  * local_1, local_2: ``engine: local`` with num_proc 1 and 2 (torch threads = num_proc);
  * ray_1, ray_2: ``engine: ray`` on an in-process Ray with 1 and 2 CPUs (as many classifier actors, 1 torch thread
    each); every run starts and shuts down its own Ray, as the CLI does.
Corpora: the demo corpus (the world's train split, demo config, 30,790 records) and a synthetic one of 100,000
records (``surgical.demo.synthetic.synthetic_corpus``: world problems, made-up facts, long documents, exact and
near duplicates; benign content only), each written as 4 JSONL shards read in order by both engines.

docs/s is curate's own figure (``throughput_docs_per_s`` in curate.json: records read / wall seconds, without the
driver's classifier setup, which both engines pay alike); the Ray engine's wall includes starting Ray and its
actors building their classifier. ``details`` has the end-to-end figures. ``identical`` says whether all four
runs wrote byte-identical gold/quarantine/borderline/heldout files.

Run: .venv/bin/python benchmarks/bench_curate_scale.py [--quick] [--synthetic 100000] [--demo-docs 0]
Writes benchmarks/results/bench_curate_scale.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from surgical._quiet import silence_import_noise

silence_import_noise()

RUNS = (("local_1", "local", 1), ("local_2", "local", 2), ("ray_1", "ray", 1), ("ray_2", "ray", 2))
FILES = ("gold.jsonl", "quarantine.jsonl", "borderline.jsonl", "heldout.jsonl")


def _digest(out: Path) -> dict[str, str]:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in FILES}


def _machine() -> dict:
    import ray

    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "load_average_1m_5m_15m": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def bench_corpus(name: str, records: list[dict], work: Path, runs=RUNS) -> dict:
    from surgical.curate.config import CurateConfig
    from surgical.curate.run import run
    from surgical.io import write_jsonl

    shards = [work / f"{name}-{i}.jsonl" for i in range(4)]
    step = -(-len(records) // len(shards))
    for i, p in enumerate(shards):
        write_jsonl(p, records[i * step : (i + 1) * step])
    result: dict = {"docs": len(records), "shards": len(shards)}
    details, digests = {}, {}
    for key, engine, n in runs:
        torch.set_num_threads(n)
        out = work / f"{name}-{key}"
        t0 = time.perf_counter()
        rep = run(CurateConfig(engine=engine, num_proc=n), shards, out).report
        end_to_end = time.perf_counter() - t0
        digests[key] = _digest(out)
        result[key] = rep["throughput_docs_per_s"]
        details[key] = {"docs_per_s": rep["throughput_docs_per_s"],
                        "end_to_end_docs_per_s": round(len(records) / end_to_end, 1),
                        "end_to_end_s": round(end_to_end, 2), "wall_s": rep["seconds"]["wall"],
                        "driver_setup_s": rep["seconds"]["setup_classifier"],
                        "by_stage": rep["throughput_docs_per_s_by_stage"],
                        "classified": rep["counts"]["by_stage"].get("stage2_classified", 0),
                        **({"ray": rep["ray"]} if "ray" in rep else {})}
        print(f"{name:16s} {key:8s} {rep['throughput_docs_per_s']:>9} docs/s  (end to end "
              f"{details[key]['end_to_end_docs_per_s']} docs/s, {end_to_end:.1f} s)", flush=True)
    first = next(iter(digests.values()))
    result["identical"] = all(d == first for d in digests.values())
    result["sha256"] = first
    result["details"] = details
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Small sizes (3,000 demo and 5,000 synthetic records).")
    ap.add_argument("--synthetic", type=int, default=100_000, help="Synthetic records.")
    ap.add_argument("--demo-docs", type=int, default=0, help="Demo records (0 = all of the train split).")
    args = ap.parse_args()
    if args.quick:
        args.synthetic, args.demo_docs = 5_000, 3_000

    from surgical.config import demo_config
    from surgical.demo.synthetic import synthetic_corpus
    from surgical.world.corpus import world_corpus

    demo = world_corpus(demo_config().world, split="train")
    demo = demo[: args.demo_docs] if args.demo_docs else demo
    synthetic = synthetic_corpus(args.synthetic, seed=0)
    results: dict = {"quick": args.quick, "machine": _machine()}
    with tempfile.TemporaryDirectory() as d:
        results["demo"] = bench_corpus("demo", demo, Path(d))
        syn_key = f"synthetic_{args.synthetic // 1000}k" if args.synthetic % 1000 == 0 else f"synthetic_{args.synthetic}"
        results[syn_key] = bench_corpus("synthetic", synthetic, Path(d))
    results["machine"]["load_average_at_end"] = list(os.getloadavg())

    print(f"\n{'corpus':16s} {'docs':>8s} " + " ".join(f"{k:>9s}" for k, _, _ in RUNS) + "  identical")
    for name in ("demo", syn_key):
        r = results[name]
        print(f"{name:16s} {r['docs']:>8d} " + " ".join(f"{r[k]:>9}" for k, _, _ in RUNS) + f"  {r['identical']}")
    out = Path(__file__).parent / "results" / "bench_curate_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
