"""The map recipe: statistics and attribution -> exact patching -> layer summary -> SAE -> validation -> files.

``run`` is the one entry point (the CLI and the pipeline both call it); ``run_suite`` maps a model against an
evaluation suite and a policy; ``run_files`` reads a model directory and forget/retain JSONL files;
``run_demo`` maps the demo teacher against the world's suite (via ``surgical.demo``, the only door to the world).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_path, provenance, write_json, write_text
from ..models import decoder_layers, head_dim
from .attribution import Scores, compute_scores
from .config import MapConfig
from .data import Example, batches, sample, scored_positions
from .hooks import capture, set_columns
from .patching import exact_neuron_ranking, exact_patching, mean_loss
from .stats import separability

MAP_FILES = ("map.json", "map.safetensors", "map.md", "mlp_scores.png", "head_scores.png", "layer_effects.png")


@dataclass
class MapResult:
    out_dir: Path
    summary: dict  # the content of map.json
    wall_s: float


# ---------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar over the run's phases, or nothing when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._bar = None
        self._task = None

    def __enter__(self):
        if not self.quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("map: {task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def phase(self, description: str, total: int):
        if self._bar is None:
            return lambda: None
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)
        return lambda: self._bar.advance(self._task)


# ---------------------------------------------------------------- layer summary


def layer_summary(scores: Scores, exact_rows: list[dict], n_recommended: int, spine_fraction: float) -> dict:
    """Per-layer forget vs retain effects and residual separability; the recommended layers and the spine.

    - recommended layers (for a representation-level penalty): where forget and retain residual streams are most
      separable (``stats.separability``), ties broken by the layer's exact forget effect;
    - spine (layers to keep in a smaller student): the layers whose mean-ablation raises the retain loss most.
    """
    n_layers = scores["mlp.score"].shape[0]
    by_layer = {r["layer"]: r for r in exact_rows if r["kind"] == "layer"}
    rows = []
    for layer in range(n_layers):
        sep = separability(scores["resid.forget_mean"][layer], scores["resid.forget_std"][layer] ** 2,
                           scores["resid.retain_mean"][layer], scores["resid.retain_std"][layer] ** 2)
        ex = by_layer[layer]
        rows.append({
            "layer": layer, "residual_separability": sep,
            "exact_forget": ex["exact_forget"], "exact_retain": ex["exact_retain"],
            "est_forget": ex["est_forget"], "est_retain": ex["est_retain"],
            "positive_mlp_score_mass": float(scores["mlp.score"][layer].clamp_min(0).sum()),
        })
    recommended = sorted(range(n_layers), key=lambda i: (-rows[i]["residual_separability"],
                                                          -rows[i]["exact_forget"]))[:n_recommended]
    n_spine = max(1, math.ceil(spine_fraction * n_layers))
    spine = sorted(sorted(range(n_layers), key=lambda i: -rows[i]["exact_retain"])[:n_spine])
    return {"layers": rows, "recommended_layers": recommended, "spine": spine}


def ranked_units(score: torch.Tensor, cap: int) -> dict[str, list[int]]:
    """Per layer: units with a positive score, most forget-specific first, at most ``cap``."""
    out = {}
    for layer in range(score.shape[0]):
        order = score[layer].argsort(descending=True)[:cap]
        out[str(layer)] = [int(u) for u in order if score[layer, u] > 0]
    return out


# ---------------------------------------------------------------- SAE


def _residual_rows(model, tokenizer, batch_list: list[dict], layer: int, with_context: bool):
    """Residual rows at ``layer``: all real positions, the scored positions, and (optionally) a token-in-context
    string for each scored position."""
    device = next(model.parameters()).device
    all_rows, scored_rows, contexts = [], [], []
    with torch.no_grad():
        for batch in batch_list:
            b = {k: v.to(device) for k, v in batch.items()}
            with capture(model, {"resid": [layer]}) as acts:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            h = acts[("resid", layer)].float().cpu()
            scored = scored_positions(batch["labels"])
            all_rows.append(h[batch["attention_mask"].bool()])
            scored_rows.append(h[scored])
            if with_context:
                special = set(tokenizer.all_special_ids)
                pieces = {}
                for i, t in torch.nonzero(scored).tolist():
                    if i not in pieces:  # decode each token once per sequence
                        ids = batch["input_ids"][i].tolist()
                        pieces[i] = ["" if x in special else s for x, s in
                                     zip(ids, tokenizer.batch_decode([[x] for x in ids]), strict=True)]
                    p = pieces[i]
                    contexts.append("".join(p[max(0, t - 32):t]) + f"[{p[t]}]")
    return torch.cat(all_rows), torch.cat(scored_rows), contexts


def run_sae(model, tokenizer, cfg: MapConfig, layer: int, data: dict[str, list[dict]], scores: Scores, evaluator, baseline: dict | None, progress) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train a TopK SAE on ``layer``'s residual stream; quality, latent selectivity, top latents, clamping."""
    from .sae import fvu, latent_stats, splice_edit, top_examples, train_sae
    from .validate import validate_latents

    tick = progress(f"SAE layer {layer}", 4)
    all_f, x_f, ctx_f = _residual_rows(model, tokenizer, data["forget"], layer, True)
    all_r, x_r, ctx_r = _residual_rows(model, tokenizer, data["retain"], layer, True)
    x_all = torch.cat([all_f, all_r])
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    n_hold = max(1, x_all.shape[0] // 10)
    held, train = x_all[perm[:n_hold]], x_all[perm[n_hold:]]
    t0 = time.perf_counter()
    sae, curve = train_sae(train, cfg.sae_expansion * x_all.shape[1], cfg.sae_k, cfg.sae_steps, cfg.sae_batch_tokens,
                           cfg.sae_lr, cfg.seed)
    train_s = time.perf_counter() - t0
    tick()
    with torch.no_grad():
        x_hat, z = sae(held)
        z_all = sae.encode(x_all)
    splice = {("resid", layer): splice_edit(sae)}
    mean_abl = {("resid", layer): set_columns(torch.arange(x_all.shape[1]), scores.retain_mean("resid", layer))}
    quality = {"fvu_heldout": fvu(held, x_hat), "l0": float((z > 0).sum(1).float().mean()),
               "dead_fraction": float(((z_all > 0).sum(0) == 0).float().mean()), "train_fvu_curve": curve,
               "train_s": round(train_s, 2), "n_train_rows": int(train.shape[0]), "n_latents": int(z.shape[1])}
    for which in ("forget", "retain"):  # LM loss = cross-entropy, whatever the attribution metric
        clean = mean_loss(model, data[which])
        spliced = mean_loss(model, data[which], splice)
        ablated = mean_loss(model, data[which], mean_abl)
        quality[f"delta_lm_loss_{which}"] = spliced - clean
        gap = ablated - clean
        quality[f"loss_recovered_{which}"] = (ablated - spliced) / gap if abs(gap) > 1e-9 else float("nan")
    tick()
    stats = latent_stats(sae, x_f, x_r)
    alive = (stats.fire_rate_forget + stats.fire_rate_retain) > 0
    order = [int(i) for i in stats.selectivity.argsort(descending=True) if alive[i]][:cfg.top_latents]
    x_both, ctx_both = torch.cat([x_f, x_r]), ctx_f + ctx_r
    top = [{"latent": j, "selectivity": float(stats.selectivity[j]),
            "fire_rate_forget": float(stats.fire_rate_forget[j]), "fire_rate_retain": float(stats.fire_rate_retain[j]),
            "top_examples": top_examples(sae, x_both, ctx_both, j, cfg.sae_examples)} for j in order]
    tick()
    block = {"layer": layer, "quality": quality, "top_forget_latents": top,
             "latent_selectivity_summary": {
                 "n_alive": int(alive.sum()),
                 "n_selectivity_above_1": int((stats.selectivity > 1).sum()),
                 "max_selectivity": float(stats.selectivity.max())}}
    if evaluator is not None and baseline is not None:
        block["clamping"] = validate_latents(model, sae, layer, stats.selectivity, alive, evaluator, cfg.sae_clamp_k,
                                             cfg.sae_clamp_scale, cfg.seed, baseline)
    tick()
    tensors = {f"sae.layer{layer}.{k}": v.detach().float().contiguous() for k, v in sae.state_dict().items()}
    tensors[f"sae.layer{layer}.latent_selectivity"] = stats.selectivity
    tensors[f"sae.layer{layer}.latent_fire_rate_forget"] = stats.fire_rate_forget
    tensors[f"sae.layer{layer}.latent_fire_rate_retain"] = stats.fire_rate_retain
    return block, tensors


# ---------------------------------------------------------------- the recipe


def run(cfg: MapConfig, model, tokenizer, forget: list[Example], retain: list[Example], out_dir: str | Path,
        evaluator=None, inputs: dict | None = None, quiet: bool = True, extra_provenance: dict | None = None
        ) -> MapResult:
    """Map ``model``: score every unit on ``forget`` vs ``retain`` examples, validate, write ``out_dir``."""
    from .validate import validate_neurons

    t_start = time.perf_counter()
    from ..threads import set_threads
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    model = model.to(cfg.device).eval()
    data = {
        "forget": batches(tokenizer, sample(forget, cfg.n_forget, cfg.seed), cfg.batch_size, cfg.max_length),
        "retain": batches(tokenizer, sample(retain, cfg.n_retain, cfg.seed + 1), cfg.batch_size, cfg.max_length),
    }
    timings = {}
    with _Progress(quiet) as bar:
        t0 = time.perf_counter()
        scores = compute_scores(model, data, cfg.fire_threshold,
                                bar.phase("statistics + attribution", 2 * sum(len(v) for v in data.values())),
                                metric=cfg.metric)
        timings["attribution_s"] = time.perf_counter() - t0
        ig_record = None
        ig_steps = cfg.ig_steps_by_site()
        if any(ig_steps.values()):
            from .integrated import integrated_scores, n_ig_ticks

            t0 = time.perf_counter()
            ig_record = integrated_scores(model, scores, data, ig_steps, metric=cfg.metric,
                                          prefix_cache_mb=cfg.exact_prefix_cache_mb,
                                          progress=bar.phase("integrated gradients",
                                                             n_ig_ticks(data, len(decoder_layers(model)),
                                                                        ig_steps)))
            timings["integrated_gradients_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_layers = len(decoder_layers(model))
        n_heads = scores["heads.score"].shape[1]
        n_targets = n_layers * (min(cfg.exact_top_n, scores["mlp.score"].shape[1]) + 1 +
                                (n_heads if cfg.exact_heads_top_n is None else min(cfg.exact_heads_top_n, n_heads)))
        exact = exact_patching(model, scores, data, cfg.exact_top_n, bar.phase("exact patching", n_targets),
                               metric=cfg.metric, heads_top_n=cfg.exact_heads_top_n,
                               zero_ablation=cfg.exact_zero_ablation, prefix_cache_mb=cfg.exact_prefix_cache_mb)
        timings["exact_patching_s"] = time.perf_counter() - t0

        summary = layer_summary(scores, exact["rows"], cfg.recommended_layers, cfg.spine_fraction)
        exact_ranking = None
        if cfg.rank_by == "exact":
            n_candidates = n_layers * min(cfg.exact_rank_candidates, scores["mlp.score"].shape[1])
            if n_candidates < max([cfg.validation_k, *cfg.validation_k_sweep]):
                raise ValueError(f"map.exact_rank_candidates: {cfg.exact_rank_candidates} per layer x {n_layers} "
                                 f"layers = {n_candidates} candidates, fewer than validation_k / "
                                 f"validation_k_sweep asks for")
            t0 = time.perf_counter()
            ranking, exact_ranking = exact_neuron_ranking(
                model, scores, data, cfg.exact_rank_candidates, cfg.exact_rank_retain_weight, metric=cfg.metric,
                prefix_cache_mb=cfg.exact_prefix_cache_mb, progress=bar.phase("exact ranking", n_candidates))
            timings["exact_ranking_s"] = time.perf_counter() - t0
        else:
            ranking = scores["mlp.score"] if cfg.rank_by == "attribution" else scores["mlp.selectivity"]

        baseline = None
        validation = {"skipped": "no evaluator: the records carry no prompt/completion to score"}
        if evaluator is not None:
            t0 = time.perf_counter()
            baseline = evaluator(model)
            validation = validate_neurons(model, scores, ranking, evaluator, cfg.validation_k, cfg.validation_k_sweep,
                                          cfg.ablation, cfg.seed, baseline,
                                          bar.phase("validation", len({cfg.validation_k, *cfg.validation_k_sweep})))
            timings["validation_s"] = time.perf_counter() - t0

        sae_blocks, sae_tensors = [], {}
        if cfg.sae:
            t0 = time.perf_counter()
            for layer in cfg.sae_layers if cfg.sae_layers is not None else summary["recommended_layers"][:1]:
                if not 0 <= layer < n_layers:
                    raise ValueError(f"map.sae_layers: layer {layer} out of range 0..{n_layers - 1}")
                block, tensors = run_sae(model, tokenizer, cfg, layer, data, scores, evaluator,
                                         baseline, bar.phase)
                sae_blocks.append(block)
                sae_tensors.update(tensors)
            timings["sae_s"] = time.perf_counter() - t0
    if "specificity_ratio" in validation and sae_blocks and "clamping" in sae_blocks[0]:
        validation["sae_clamping"] = [b["clamping"] for b in sae_blocks]

    wall_s = time.perf_counter() - t_start
    timings = {k: round(v, 2) for k, v in timings.items()}
    result = {
        "kind": "map",
        "model": {"n_layers": n_layers, "mlp_width": int(scores["mlp.score"].shape[1]),
                  "n_heads": int(scores["heads.score"].shape[1]), "head_dim": head_dim(model),
                  "hidden_size": int(scores["resid.score"].shape[1])},
        "data": {"n_forget": sum(len(b["input_ids"]) for b in data["forget"]),
                 "n_retain": sum(len(b["input_ids"]) for b in data["retain"]),
                 "forget_tokens": scores.n_tokens["forget"], "retain_tokens": scores.n_tokens["retain"],
                 "metric": scores_metric_doc(scores, cfg)},
        "recommended_layers": summary["recommended_layers"],
        "spine": summary["spine"],
        "forget_neurons": ranked_units(ranking, cfg.validation_k),
        "rank_by": cfg.rank_by,
        "exact_ranking": exact_ranking,
        "forget_heads": ranked_units(scores["heads.score"], scores["heads.score"].shape[1]),
        "layer_summary": summary["layers"],
        "attribution": ig_record or {"method": "attribution_patching"},
        "attribution_vs_exact_spearman": exact["spearman"]["units_forget"],
        "attribution_vs_exact": {"spearman": exact["spearman"], "n_patched": len(exact["rows"]),
                                 "top_n_per_layer": cfg.exact_top_n, "heads_top_n_per_layer": cfg.exact_heads_top_n,
                                 "zero_ablation": cfg.exact_zero_ablation, "prefix_replay": exact["prefix_replay"]},
        "validation": validation,
        "sae": sae_blocks,
        "timings_s": timings,
        "wall_s": round(wall_s, 2),
        "score_definitions": SCORE_DEFINITIONS,
        "provenance": provenance(cfg, inputs=inputs or {}, **(extra_provenance or {})),
    }
    write_outputs(out_dir, result, scores, exact["rows"], sae_tensors)
    return MapResult(out_dir, result, wall_s)


def scores_metric_doc(scores: Scores, cfg: MapConfig) -> dict:
    return {"name": cfg.metric, "clean_per_token": scores.clean_loss}


SCORE_DEFINITIONS = {
    "metric": "what attribution and exact patching measure, per scored token, higher = worse: 'logodds' = minus the "
              "log-odds of the correct next token, 'loss' = cross-entropy (nats); effects are its change",
    "selectivity": "standardised mean difference (forget - retain) of the activation on scored tokens; for heads, "
                   "of the head output's L2 norm",
    "fire_rate_diff": "fraction of forget tokens minus fraction of retain tokens where |activation| > "
                      "fire_threshold x the unit's RMS",
    "attr_forget / attr_retain": "estimated change of the forget / retain metric per scored token when the unit is "
                                 "set to its retain mean at every position: attribution patching, or integrated "
                                 "gradients with map.ig_steps >= 1, per site (map.json 'attribution' says which)",
    "attr_*_atp": "with integrated gradients: the attribution-patching estimates they replaced",
    "attr_*_zero": "the same estimate for zero-ablation",
    "score": "attr_forget - attr_retain: the ranking of forget_neurons and forget_heads",
    "delta_exact_match": "the domain's suite metric (validation.metric: MC accuracy, or QA answer probability / "
                         "accuracy) after ablation minus before (negative = it fell)",
    "specificity_ratio": "(forget drop / retain drop) of the map's ablation over that of the random control; "
                         "drops floored at one evaluation item (1/n)",
}


def write_outputs(out_dir: Path, result: dict, scores: Scores, exact_rows: list[dict],
                  sae_tensors: dict[str, torch.Tensor]) -> None:
    """map.safetensors, map.json, the PNGs and map.md, each written atomically."""
    from safetensors.torch import save_file

    from . import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in scores.tensors.items()}
    for key in ("est_forget", "est_retain", "exact_forget", "exact_retain", "est_forget_zero", "exact_forget_zero",
                "est_retain_zero", "exact_retain_zero"):
        tensors[f"exact.{key}"] = torch.tensor([r[key] for r in exact_rows], dtype=torch.float32)
    kinds = {"neuron": 0, "head": 1, "layer": 2}
    tensors["exact.kind"] = torch.tensor([kinds[r["kind"]] for r in exact_rows], dtype=torch.int64)
    tensors["exact.layer"] = torch.tensor([r["layer"] for r in exact_rows], dtype=torch.int64)
    tensors["exact.unit"] = torch.tensor([r["unit"] for r in exact_rows], dtype=torch.int64)
    tensors.update(sae_tensors)
    with atomic_path(out_dir / "map.safetensors") as tmp:
        from ..io import one_metadata_key

        save_file(tensors, str(tmp), metadata=one_metadata_key({"kind": "surgical.map",
                                                                 "exact.kind": "0=neuron 1=head 2=layer"}))
    plots.unit_heatmap(scores["mlp.score"], "MLP neurons: forget-specificity score (sorted per layer)",
                       "neuron rank", out_dir / "mlp_scores.png")
    plots.unit_heatmap(scores["heads.score"], "attention heads: forget-specificity score (sorted per layer)",
                       "head rank", out_dir / "head_scores.png")
    plots.layer_effects([r["exact_forget"] for r in result["layer_summary"]],
                        [r["exact_retain"] for r in result["layer_summary"]],
                        f"whole-layer mean-ablation ({result['data']['metric']['name']})", out_dir / "layer_effects.png")
    if result["validation"].get("sweep"):
        plots.ablation_curve(result["validation"]["sweep"], out_dir / "ablation_curve.png")
    write_json(out_dir / "map.json", result)
    write_text(out_dir / "map.md", render_markdown(result))


def _metric_names(v: dict) -> str:
    names = v.get("metric", {}).get("metric", {})
    return ", ".join(f"{d}: {m}" for d, m in names.items()) or "exact-match"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def render_markdown(r: dict) -> str:
    """A short human summary of map.json."""
    lines = ["# Map of the teacher", "",
             f"{r['model']['n_layers']} layers, {r['model']['mlp_width']} MLP neurons and {r['model']['n_heads']} "
             f"heads per layer; {r['data']['n_forget']} forget and {r['data']['n_retain']} retain sequences "
             f"({r['data']['forget_tokens']} / {r['data']['retain_tokens']} scored tokens). Wall time {r['wall_s']:.0f} s.",
             "",
             f"- Recommended layers for a representation penalty: {r['recommended_layers']}",
             f"- Spine (layers to keep in a smaller student): {r['spine']}",
             f"- Attribution vs exact patching, Spearman (neurons + heads, forget {r['data']['metric']['name']}): "
             f"{r['attribution_vs_exact_spearman']:.3f}", "",
             f"## Layers (whole-layer mean-ablation, Δ {r['data']['metric']['name']} per token)", "",
             "| layer | forget Δ | retain Δ | residual separability |", "|---|---|---|---|"]
    for row in r["layer_summary"]:
        lines.append(f"| {row['layer']} | {row['exact_forget']:.3f} | {row['exact_retain']:.3f} | "
                     f"{row['residual_separability']:.2f} |")
    v = r["validation"]
    lines += ["", "## Validation", ""]
    if "specificity_ratio" not in v:
        lines.append(f"Skipped: {v.get('skipped')}")
    else:
        lines += [f"Ablating the map's top {v['k']} MLP neurons ({v['ablation']}-ablation) vs {v['k']} random neurons "
                  f"from the same layers; change of each domain's suite metric in points "
                  f"({v['n_per_domain']} items per domain; {_metric_names(v)}):", "",
                  "| domain | before | map | random |", "|---|---|---|---|"]
        for d, before in v["baseline_exact_match"].items():
            lines.append(f"| {d} | {100 * before:.1f} | {_pct(v['map_ablation']['delta_exact_match'][d])} | "
                         f"{_pct(v['random_ablation']['delta_exact_match'][d])} |")
        lines += ["", f"Specificity ratio: **{v['specificity_ratio']:.2f}**", "", "| k | map forget drop | "
                  "map retain drop | random forget drop | random retain drop | specificity |", "|---|---|---|---|---|---|"]
        for s in v["sweep"]:
            lines.append(f"| {s['k']} | {100 * s['forget_drop_map']:.1f} | {100 * s['retain_drop_map']:.1f} | "
                         f"{100 * s['forget_drop_random']:.1f} | {100 * s['retain_drop_random']:.1f} | "
                         f"{s['specificity_ratio']:.2f} |")
    for block in r["sae"]:
        q = block["quality"]
        lines += ["", f"## SAE on the residual stream after layer {block['layer']}", "",
                  f"FVU {q['fvu_heldout']:.3f}, L0 {q['l0']:.1f}, dead latents {100 * q['dead_fraction']:.0f}%, "
                  f"Δ LM loss spliced in: forget {q['delta_lm_loss_forget']:+.3f}, retain {q['delta_lm_loss_retain']:+.3f}"
                  f" nats/token.", ""]
        for lat in block["top_forget_latents"][:5]:
            ex = "; ".join(f"`{e['context']}`" for e in lat["top_examples"][:3])
            lines.append(f"- latent {lat['latent']} (selectivity {lat['selectivity']:.2f}): {ex}")
        if "clamping" in block:
            c = block["clamping"]
            for name in ("zero", "negative"):
                m = c[name]
                lines.append(f"- clamping top {c['k']} forget latents ({name}, scale {m['scale']}): forget drop "
                             f"{100 * m['map_ablation']['forget_drop']:.1f}, retain drop "
                             f"{100 * m['map_ablation']['retain_drop']:.1f} points; random: "
                             f"{100 * m['random_ablation']['forget_drop']:.1f} / "
                             f"{100 * m['random_ablation']['retain_drop']:.1f}; specificity {m['specificity_ratio']:.2f}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry points over files and the demo


def run_files(cfg: MapConfig, model_spec: str | Path, forget_path: str | Path, retain_path: str | Path,
              out_dir: str | Path, quiet: bool = True) -> MapResult:
    """Map the model at ``model_spec`` with forget/retain JSONL files and no suite: validation scores the files'
    held-out prompt+completion records as QA domains (``validate.records_suite``; skipped for text records)."""
    from ..models import load_model, load_tokenizer
    from .data import load_examples
    from .validate import SuiteEvaluator, records_suite

    forget = load_examples(forget_path, "forget")
    retain = load_examples(retain_path, "retain")
    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec, device=cfg.device)
    evaluator = None
    if all(e.prompt for e in forget + retain):
        # scored on records the attribution did not see, per domain, where the files have any left
        used = set(map(id, sample(forget, cfg.n_forget, cfg.seed) + sample(retain, cfg.n_retain, cfg.seed + 1)))
        f_sets, r_sets = _held_out_by_domain(forget, used), _held_out_by_domain(retain, used)
        overlap = sorted(set(f_sets) & set(r_sets))
        if overlap:
            raise ValueError(f"{forget_path} and {retain_path} share domain name(s) {overlap}; give the records "
                             "distinct `domain` fields")
        suite = records_suite(f_sets, r_sets)
        evaluator = SuiteEvaluator(suite, tokenizer, list(f_sets), list(r_sets), cfg.validation_split,
                                   cfg.validation_limit, cfg.qa_metric, prefer=cfg.validation_kind)
    return run(cfg, model, tokenizer, forget, retain, out_dir, evaluator,
               inputs={"model": model_spec, "forget": forget_path, "retain": retain_path}, quiet=quiet,
               extra_provenance={"model_spec": str(model_spec)})


def _held_out_by_domain(examples: list[Example], used: set[int]) -> dict[str, list[Example]]:
    """Examples grouped by domain: those not in ``used`` (by identity), or all of the domain if none are left."""
    out: dict[str, list[Example]] = {}
    for e in examples:
        out.setdefault(e.domain, []).append(e)
    return {d: [e for e in exs if id(e) not in used] or exs for d, exs in out.items()}


def run_suite(cfg: MapConfig, model_spec: str | Path, suite_path: str | Path, policy, out_dir: str | Path,
              quiet: bool = True, forget_path: str | Path | None = None, retain_path: str | Path | None = None
              ) -> MapResult:
    """Map the model at ``model_spec`` against a suite, for ``policy`` (a loaded ``surgical.policy.Policy``).

    Domains come from ``suite.check_policy``: the forbidden (gated) ones are the forget domains, the allowed ones
    and the suite's other retain domains the retain domains (forget domains with ``gate: false`` are not used).
    The examples are the domains' ``attack`` records (``data.suite_examples``), or the JSONL files
    ``forget_path``/``retain_path`` when given; validation measures the suite's own metric per domain on its
    ``validation_split`` (``validate.SuiteEvaluator``). Raises SuiteError / ConfigError on bad input."""
    from ..models import load_model, load_tokenizer
    from ..suite import check_policy, load_suite
    from .data import load_examples, suite_examples
    from .validate import SuiteEvaluator

    suite = load_suite(suite_path)
    forget_all, retain_d = check_policy(suite, policy)
    forget_d = [d for d in forget_all if suite[d].spec.gate]
    forget = (load_examples(forget_path, "forget") if forget_path
              else suite_examples(suite, forget_d, cfg.n_forget, cfg.seed))
    retain = (load_examples(retain_path, "retain") if retain_path
              else suite_examples(suite, retain_d, cfg.n_retain, cfg.seed + 1))
    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec, device=cfg.device)
    evaluator = SuiteEvaluator(suite, tokenizer, forget_d, retain_d, cfg.validation_split, cfg.validation_limit,
                               cfg.qa_metric, prefer=cfg.validation_kind)
    inputs = {"model": model_spec, "suite": suite_path}
    inputs.update({k: v for k, v in (("forget", forget_path), ("retain", retain_path)) if v})
    return run(cfg, model, tokenizer, forget, retain, out_dir, evaluator, inputs=inputs, quiet=quiet,
               extra_provenance={
                   "model_spec": str(model_spec), "suite": suite.name, "suite_data_sha256": suite.data_hash,
                   "policy": policy.name, "forget_domains": forget_d, "retain_domains": retain_d,
                   "ungated_forget_domains": [d for d in forget_all if d not in forget_d],
                   "data": "forget/retain examples: " + ("JSONL files" if forget_path or retain_path
                                                          else "the domains' attack records")})


def run_demo(out_dir: str | Path, cfg=None, quiet: bool = True) -> MapResult:
    """Map the demo teacher (trained first if not cached) against the world's suite with the demo policy:
    forget = mul/div attack records (training split), retain = add/sub; validation on the suite's val split."""
    from .. import demo
    from ..config import demo_config
    from ..policy import demo_policy_path, load_policy

    pipeline_cfg = cfg or demo_config()
    return run_suite(pipeline_cfg.map, demo.teacher_dir(pipeline_cfg, quiet=quiet), demo.suite_path(pipeline_cfg),
                     load_policy(demo_policy_path()), out_dir, quiet=quiet)
