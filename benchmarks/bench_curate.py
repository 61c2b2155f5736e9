"""Curate throughput and detection quality on the CPU.

Compares, in one run:
  * two-stage (blocklist escalates, classifier decides; the default) against the baseline
    "classifier on everything" (classify='all'): docs/s of each stage and the speed-up ratio;
  * batched MiniLM embedding against batch size 1 (the baseline): docs/s ratio;
  * detection quality on the world's held-out test split (recall, over-filtering with Wilson 95% CIs)
    and on the mixed-topic prose corpus (precision, recall), for both filter modes.

Run: .venv/bin/python benchmarks/bench_curate.py [--docs 2000] [--prose 400] [--threads 2]
Writes benchmarks/results/curate.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from surgical._quiet import silence_import_noise

silence_import_noise()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000, help="World train-split documents to curate.")
    ap.add_argument("--prose", type=int, default=400, help="Prose documents (one topic in four forbidden).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from surgical.curate.classifier import MiniLMEmbedder, PolicyClassifier
    from surgical.curate.config import CurateConfig
    from surgical.curate.prose import prose_corpus, prose_policy
    from surgical.curate.run import curate
    from surgical.policy import demo_policy_path, load_policy
    from surgical.world.corpus import world_corpus

    t0 = time.perf_counter()
    emb = MiniLMEmbedder()
    load_s = time.perf_counter() - t0
    policy = load_policy(demo_policy_path())
    clf = PolicyClassifier(policy, emb)
    # a seeded uniform sample keeps the corpus's real mix (~12% forbidden); the interleaved prefix would not
    docs = random.Random(0).sample(world_corpus(split="train"), args.docs)
    held_out = world_corpus(split="test")
    results: dict = {"minilm_load_s": round(load_s, 2), "threads": args.threads, "world_docs": len(docs)}

    def one(name, recs, pol, classifier, mode, eval_records=None):
        with tempfile.TemporaryDirectory() as d:
            rep = curate(((r["id"], r) for r in recs), d, pol, CurateConfig(classify=mode), classifier=classifier,
                         eval_records=eval_records).report
        keep = {k: rep[k] for k in ("forbidden_recall", "overfilter_rate", "precision", "f1",
                                    "throughput_docs_per_s", "throughput_docs_per_s_by_stage")}
        keep["classified"] = rep["counts"]["by_stage"].get("stage2_classified", 0)
        keep["wall_s"] = rep["seconds"]["wall"]
        results[name] = keep
        fr, ofr = rep["forbidden_recall"], rep["overfilter_rate"]
        print(f"{name:28s} recall {fr['value']:.4f} {fr['ci95']}  overfilter {ofr['value']:.4f} {ofr['ci95']}  "
              f"precision {rep['precision']:.4f}  overall {rep['throughput_docs_per_s']} docs/s  "
              f"stages {rep['throughput_docs_per_s_by_stage']}")
        return rep

    one("world_two_stage", docs, policy, clf, "escalated", held_out)
    one("world_classify_all", docs, policy, clf, "all", held_out)
    results["two_stage_speedup_vs_classify_all"] = round(
        results["world_two_stage"]["throughput_docs_per_s"] / results["world_classify_all"]["throughput_docs_per_s"], 2)

    prose_pol = prose_policy("astronomy")
    prose_clf = PolicyClassifier(prose_pol, emb)
    prose = prose_corpus(args.prose, "astronomy", seed=0)
    one("prose_two_stage", prose, prose_pol, prose_clf, "escalated")
    one("prose_classify_all", prose, prose_pol, prose_clf, "all")

    texts = [r["text"] for r in docs[:256]]
    rates = {}
    for bs in (1, 128):
        emb.batch_size = bs
        t0 = time.perf_counter()
        emb.encode(texts)
        rates[bs] = len(texts) / (time.perf_counter() - t0)
    results["embedding_docs_per_s"] = {"batch_1": round(rates[1], 1), "batch_128": round(rates[128], 1),
                                       "ratio": round(rates[128] / rates[1], 2)}
    print(f"two-stage speed-up vs classify-all: x{results['two_stage_speedup_vs_classify_all']}; "
          f"batched embedding vs batch 1: x{results['embedding_docs_per_s']['ratio']}")
    out = Path(__file__).parent / "results" / "curate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
