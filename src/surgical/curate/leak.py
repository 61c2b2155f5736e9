"""A leaky filter with a known ground truth, for experiments (issue 14): after curate has decided, a fraction
``rate`` of the quarantined records whose ground-truth label says forbidden is moved to gold, as a filter with
recall 1 - rate would have let them through. Real filters leak (Deep Ignorance's blocklist: 98% recall on its eval
set); the leak sweep (``surgical experiment leak``) measures what each method does with the forbidden data that gets
past the filter.

This deliberately breaks curate's fail-closed rule, so it is loud: only records with a ground-truth label can leak
(a record without one is never moved), ``leak.json`` lists every moved record (its line in quarantine.jsonl, its
domain and a hash of its text), each moved record carries ``curate.simulated_leak: true`` in gold.jsonl, and
curate.json gets a ``simulated_leak`` block. A rate of 0 (the default) changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from ..io import read_json, read_jsonl, write_json, write_jsonl


def simulate_leak(out_dir: str | Path, rate: float, seed: int, label_field: str = "label") -> dict:
    """Move ``round(rate x n)`` of the ``n`` quarantined records labelled forbidden (seeded choice) from
    quarantine.jsonl to the end of gold.jsonl; returns the ``simulated_leak`` block (also in curate.json)."""
    out = Path(out_dir)
    quarantined = read_jsonl(out / "quarantine.jsonl")
    gold = read_jsonl(out / "gold.jsonl")
    candidates = [i for i, r in enumerate(quarantined) if r.get(label_field) == "forbidden"]
    n = round(rate * len(candidates))
    picked = sorted(random.Random(seed).sample(candidates, n)) if n else []
    moved = set(picked)
    leaked = []
    for i in picked:
        rec = dict(quarantined[i])
        rec["curate"] = {**rec.get("curate", {}), "decision": "gold", "simulated_leak": True}
        leaked.append(rec)
    block = {"rate": rate, "seed": seed, "label_field": label_field, "forbidden_quarantined": len(candidates),
             "moved_to_gold": n, "by_domain": dict(Counter(str(r.get("domain", "unlabelled")) for r in leaked)),
             "effective_recall": round(1 - n / len(candidates), 6) if candidates else None}
    write_jsonl(out / "gold.jsonl", gold + leaked)
    write_jsonl(out / "quarantine.jsonl", [r for i, r in enumerate(quarantined) if i not in moved])
    write_json(out / "leak.json", {**block, "records": [
        {"quarantine_line": i + 1, "domain": quarantined[i].get("domain"),
         "sha256": hashlib.sha256(json.dumps({k: v for k, v in quarantined[i].items() if k != "curate"},
                                             sort_keys=True).encode()).hexdigest()[:16]} for i in picked]})
    report = read_json(out / "curate.json")
    report["simulated_leak"] = block
    write_json(out / "curate.json", report)
    from ..io import write_text

    md = out / "curate.md"
    write_text(md, f"**Simulated leak (an experiment, not a filter result):** {n} of {len(candidates)} quarantined "
               f"forbidden records moved to gold (rate {rate}, seed {seed}; leak.json).\n\n"
               + (md.read_text(encoding="utf-8") if md.exists() else ""))
    return block
