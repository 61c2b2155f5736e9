"""Config of the map stage (a section of the pipeline YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..config_base import Section

# the hooked sites of map/hooks.py (kept here so the config imports no torch; a test checks they agree)
IG_SITES = ("mlp", "heads", "resid")


class MapConfig(Section):
    """The map stage's knobs (see docs/map.md)."""

    # ---- data
    n_forget: int = Field(64, ge=4, description="Forget examples (sequences) used for statistics and attribution.")
    n_retain: int = Field(64, ge=4, description="Retain examples (sequences) used for statistics and attribution.")
    batch_size: int = Field(64, ge=1, description="Sequences per forward/backward pass.")
    max_length: int = Field(256, ge=8, description="Tokens per sequence (longer ones are cut).")
    seed: int = Field(0, description="Seed of data sampling, random controls and SAE init.")

    # ---- activation statistics
    fire_threshold: float = Field(
        0.5, ge=0, description="A unit 'fires' on a token when |activation| exceeds this many times the unit's "
        "RMS over forget and retain tokens together (dimensionless)."
    )

    metric: Literal["logodds", "loss"] = Field(
        "logodds", description="What attribution and exact patching measure per scored token: 'logodds' = minus "
        "the log-odds of the correct token (does not saturate on a confident teacher), 'loss' = cross-entropy "
        "(nats).")
    rank_by: Literal["attribution", "selectivity", "exact"] = Field(
        "attribution", description="Ranking of forget units: 'attribution' = estimated forget minus retain loss "
        "change under mean-ablation (the map's score); 'selectivity' = Cohen's d of the activation (the "
        "activation-statistics baseline); 'exact' = the top exact_rank_candidates neurons per layer by "
        "attribution, mean-ablated one by one for real and ranked by exact forget effect minus "
        "exact_rank_retain_weight x exact retain effect (costs 2 patched passes per candidate).")
    ig_steps: int | dict[str, int] = Field(
        0, description="0 = attribution patching (the gradient at the clean activations, one pass per batch); "
        "N >= 1 = integrated gradients: each unit's effect integrated along the path that moves its (site, layer) "
        "from clean to the patch, N midpoint steps, N passes per (site, layer, ablation kind) and batch "
        "(map/integrated.py). A mapping {mlp: N, heads: N, resid: N} sets N per site (0 = attribution patching "
        "for that site); every site must be named. Measured on 6 demo teachers (docs/map.md): heads need more "
        "steps than neurons ({mlp: 1, heads: 4, resid: 1} meets Spearman >= 0.6 for neurons, heads and layers "
        "on all six, where 1 or 4 everywhere does not).")
    exact_rank_candidates: int = Field(32, ge=1, description="rank_by exact: candidate neurons per layer.")
    exact_rank_retain_weight: float = Field(1.0, ge=0, description="rank_by exact: weight of the retain effect "
                                            "subtracted from the forget effect (higher = fewer shared units).")

    # ---- exact activation patching
    exact_top_n: int = Field(6, ge=0, description="Top units per layer (by |attribution|) patched for real, "
                             "for the MLP neurons; the heads (see exact_heads_top_n) and every layer are patched "
                             "as well.")
    exact_heads_top_n: int | None = Field(None, ge=0, description="Top heads per layer (by |attribution|) patched "
                                          "for real; None = every head.")
    exact_zero_ablation: bool = Field(True, description="Also patch each target with zero-ablation (doubles the "
                                      "cost; its correlations are reported beside the mean-ablation ones).")
    exact_prefix_cache_mb: float = Field(1024, ge=0, description="Memory for the clean decoder-layer outputs "
                                         "replayed before each patch (a patch at layer L then runs layers L..N-1 "
                                         "only); when the outputs need more, or 0, every patch runs the whole model.")

    # ---- layer summary
    recommended_layers: int = Field(2, ge=1, description="How many layers to recommend for a "
                                    "representation-level penalty.")
    spine_fraction: float = Field(0.5, gt=0, le=1, description="Fraction of the teacher's layers kept in the "
                                  "recommended spine (rounded up).")

    # ---- validation
    validation_k: int = Field(64, ge=1, description="MLP neurons ablated in the headline validation (the map's "
                              "top-k vs k random neurons from the same layers).")
    validation_k_sweep: list[int] = Field([16, 128], description="Further k values for the "
                                          "ablation curve (map vs random); empty = none.")
    ablation: Literal["mean", "zero"] = Field("mean", description="How validation ablates a unit: its mean "
                                              "activation on retain tokens, or zero.")
    validation_limit: int = Field(50, ge=1, description="Evaluation items per domain for the validation's Δ "
                                  "metric.")
    validation_split: Literal["val", "test"] = Field("val", description="Suite split the validation evaluates on "
                                                     "(a domain without it falls back to its test split).")
    validation_kind: Literal["mc", "qa"] = Field(
        "mc", description="Which of a domain's data the validation measures when it has both: MC accuracy, or QA "
        "with qa_metric. A confident teacher's MC can stay at 100% under ablations that halve its QA accuracy "
        "(measured on the demo teacher: top-64 ablation moved no MC figure).")
    qa_metric: Literal["answer_prob", "accuracy"] = Field(
        "answer_prob", description="Validation metric of a domain with QA but no MC data: 'answer_prob' = "
        "per-token geometric-mean probability of the reference answer (continuous, fast), 'accuracy' = greedy "
        "generation scored by the domain's scorer.")

    # ---- sparse autoencoder
    sae: bool = Field(True, description="Train a TopK SAE on the residual stream and validate latent clamping.")
    sae_layers: list[int] | None = Field(None, description="Layers whose residual stream (decoder-layer output) "
                                         "gets an SAE; default: the first recommended layer.")
    sae_expansion: int = Field(4, ge=1, description="Latents per residual dimension.")
    sae_k: int = Field(16, ge=1, description="Active latents per token (TopK).")
    sae_steps: int = Field(400, ge=1, description="Adam steps of SAE training.")
    sae_batch_tokens: int = Field(512, ge=16, description="Activation vectors per SAE training step.")
    sae_lr: float = Field(2e-3, gt=0, description="SAE learning rate (Adam).")
    sae_clamp_k: int = Field(16, ge=1, description="Top forget latents clamped in the SAE validation.")
    sae_clamp_scale: float = Field(-4.0, description="Negative-scaling clamp: a latent's activation is multiplied "
                                   "by this factor (zeroing is always measured too).")
    sae_examples: int = Field(5, ge=1, description="Top-activating tokens listed per top forget latent.")
    top_latents: int = Field(10, ge=1, description="Top forget latents listed in map.json / map.md.")

    # ---- runtime
    threads: int = Field(1, ge=1, description="torch intra-op threads. 1 by default: the map runs many small ops and "
                         "short generations, where a second thread gains little and, on a busy machine, costs a lot "
                         "(OpenMP spin-waits; measured 10x+ slower generation at 2 threads under load).")
    device: str = Field("cpu", description="Torch device.")

    @field_validator("ig_steps", mode="before")
    @classmethod
    def _ig_steps_per_site(cls, value):
        # checked here, before pydantic's union, so that a bad value gets one message instead of one per branch
        expected = f"expected N >= 0, or a mapping {{{': N, '.join(IG_SITES)}: N}}"
        if isinstance(value, dict):
            unknown = [str(s) for s in value if s not in IG_SITES]
            missing = [s for s in IG_SITES if s not in value]
            if unknown or missing:
                raise ValueError((f"unknown site(s) {', '.join(unknown)}; " if unknown else "")
                                 + (f"missing site(s) {', '.join(missing)}; " if missing else "")
                                 + f"name each of {', '.join(IG_SITES)} (0 = attribution patching there)")
            items = list(value.items())
        else:
            items = [("", value)]
        for site, n in items:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{site + ': ' if site else ''}{n!r}; {expected}")
        return value

    def ig_steps_by_site(self) -> dict[str, int]:
        """Integrated-gradients steps of each site (0 = attribution patching)."""
        if isinstance(self.ig_steps, dict):
            return {s: self.ig_steps[s] for s in IG_SITES}
        return dict.fromkeys(IG_SITES, self.ig_steps)
