"""Size on disk, weights in memory, peak RSS and CPU tokens/s of each quantization scheme vs fp32.

Run: .venv/bin/python benchmarks/bench_quantize.py [MODEL_DIR]
MODEL_DIR defaults to the cached demo teacher, or a random 4x128 Llama of the same shape when none is cached.
The baseline is the fp32 model, measured in the same run (each model in its own fresh process).
Writes benchmarks/results/quantize.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from surgical.io import surgical_home, write_json
from surgical.quantize import compare, measure, run

SETTINGS = [("int8", "torchao"), ("int8", "quanto"), ("int4", "quanto"), ("int2", "quanto")]


def _model_dir(work: Path) -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    cached = sorted(surgical_home().glob("teachers/*/teacher.json"))
    if cached:
        return cached[-1].parent
    from transformers import LlamaConfig, LlamaForCausalLM

    d = work / "random-4x128"
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                 intermediate_size=512, max_position_embeddings=128)).save_pretrained(d)
    return d


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_quantize."))
    src = _model_dir(work)
    kw = {"new_tokens": 32, "batch": 8, "repeats": 3}
    fp32 = measure(src, **kw)
    rows = [{"setting": "fp32", **fp32}]
    print(f"model {src}\n{'setting':<16}{'disk B':>10}{'mem B':>10}{'peak RSS MB':>13}{'tok/s':>9}  ratios vs fp32")
    print(f"{'fp32':<16}{fp32['size_on_disk_bytes']:>10}{fp32['weights_memory_bytes']:>10}"
          f"{fp32['peak_rss_bytes'] / 2**20:>13.1f}{fp32['tokens_per_s']:>9.0f}")
    for scheme, backend in SETTINGS:
        res = run(src, work / f"{scheme}-{backend}", scheme, backend, verify=False, do_measure=False)
        q = measure(res.model_dir, **kw)
        ratios = compare(fp32, q)
        rows.append({"setting": f"{scheme}-{backend}", "format": res.record["format"], **q, "ratios": ratios})
        print(f"{scheme + '-' + backend:<16}{q['size_on_disk_bytes']:>10}{q['weights_memory_bytes']:>10}"
              f"{q['peak_rss_bytes'] / 2**20:>13.1f}{q['tokens_per_s']:>9.0f}  size {ratios['size_ratio']}, "
              f"mem {ratios['weights_memory_ratio']}, speed {ratios['tokens_per_s_ratio']}")
    out = Path(__file__).parent / "results" / "quantize.json"
    write_json(out, {"model": str(src), "measure": kw, "rows": rows})
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
