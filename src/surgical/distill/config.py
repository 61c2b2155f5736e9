"""Config of the distill stage (a section of the pipeline YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import Section

PenaltyForm = Literal["away", "maxent", "refusal", "representation"]
PRESETS = ("surgical", "plain-kd", "filter-only", "oracle")


class DistillConfig(Section):
    """The distill stage's knobs (see docs/distill.md)."""

    preset: Literal["surgical", "plain-kd", "filter-only", "oracle"] = Field(
        "surgical",
        description="surgical = gold-only KD + Safety Divergence Penalty on forbidden batches; plain-kd = KD on "
        "gold + forbidden records, no penalty; filter-only = gold-only KD, no penalty; oracle = the same student "
        "trained from scratch with CE on gold labels only, no teacher.",
    )

    # ---- the student
    student_init: Literal["config", "teacher_layers", "noised"] = Field(
        "config",
        description="config = fresh architecture of the teacher's family (student_* sizes); teacher_layers = "
        "copy a subset of the teacher's layers (+ optional MLP neuron cut); noised = UNDO's "
        "(1-alpha)*theta + alpha*beta*noise applied to the model in student_init_from.",
    )
    student_layers: int = Field(2, ge=1, description="Decoder layers of a 'config' student.")
    student_hidden_size: int = Field(64, ge=8, description="Residual width of a 'config' student (units).")
    student_heads: int = Field(4, ge=1, description="Attention heads of a 'config' student.")
    student_intermediate_size: int = Field(256, ge=8, description="MLP neurons per layer of a 'config' student.")
    keep_layers: list[int] | None = Field(
        None, description="teacher_layers: teacher layer indices to keep; default the map's 'spine' if a map is "
        "given, else every keep_every-th layer."
    )
    keep_every: int = Field(2, ge=1, description="teacher_layers without spine: keep layers 0, k, 2k, ...")
    cut_forget_neurons: int = Field(
        0, ge=0, description="teacher_layers: drop this many of the map's most forget-selective MLP neurons per "
        "kept layer before training (surgery)."
    )
    cut_selection: Literal["map", "random"] = Field(
        "map", description="teacher_layers: which neurons cut_forget_neurons cuts: the map's most forget-selective "
        "(map) or a seeded random choice of the same size per layer (random: the control that shows whether the "
        "map matters)."
    )
    cut_seed: int = Field(0, description="cut_selection random: seed of the choice.")
    mlp_keep_fraction: float = Field(
        1.0, gt=0, le=1, description="teacher_layers: fraction of MLP neurons kept per layer (the cut neurons first, "
        "then the lowest-norm ones)."
    )
    student_init_from: str | None = Field(
        None, description="noised: model dir whose weights are noised (default the teacher; UNDO uses an "
        "unlearned model)."
    )
    noise_alpha: float = Field(0.5, ge=0, le=1, description="noised: interpolation weight alpha toward noise.")
    noise_beta: float = Field(0.02, ge=0, description="noised: std of the Gaussian noise (beta).")
    noise_cut: bool = Field(
        False, description="teacher_layers: also apply UNDO's noise (noise_alpha, noise_beta) to the cut student "
        "before healing, so what the cut leaves of the teacher's weights is partly forgotten."
    )

    # ---- KD losses
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="KD divergence.")
    jsd_beta: float = Field(0.5, ge=0, le=1, description="beta of the generalised JSD (0 = forward KL, 1 = reverse).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the KD terms (scaled by T^2).")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the KD term on gold tokens.")
    ce_weight: float = Field(0.0, ge=0, description="Weight of CE on gold labels (replaced spans always use CE).")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of hidden-state alignment (learned projection).")
    hidden_layers: list[int] | None = Field(
        None, description="Teacher layers aligned by hidden_weight / representation retain; default the last layer."
    )
    kd_tokens: Literal["completion", "all"] = Field(
        "completion", description="Tokens the losses are computed on: the completion only, or every token."
    )
    teacher_logits: Literal["online", "cache"] = Field(
        "online", description="online = teacher forward in each step; cache = read a top-k logits cache."
    )
    cache_dir: str | None = Field(None, description="Top-k cache directory (default OUT/logits-cache, or a "
                                  "subdirectory of cache_root).")
    cache_root: str | None = Field(
        None, description="A directory of caches shared by several runs (the pipeline's RUN_DIR/teacher-logits): "
        "each (teacher hash, data hashes, k, temperature, value format) gets its own subdirectory, built once under "
        "a file lock and read by every later run with the same key. cache_dir, when given, wins."
    )
    cache_top_k: int = Field(16, ge=1, description="Teacher logits kept per token in the cache.")
    cache_values: Literal["fp16", "u8"] = Field(
        "fp16", description="How the cache stores the top-k logits: fp16, or u8 steps below the top-1 logit with a "
        "per-token fp16 step (k + 2 bytes instead of 2k; see docs/distill.md for the KD-loss error)."
    )

    # ---- Safety Divergence Penalty
    penalty_forms: list[PenaltyForm] = Field(
        ["maxent", "away"], description="Forms applied to forbidden batches (combinable)."
    )
    penalty_weight: float = Field(1.0, ge=0, description="Weight of the summed penalty.")
    penalty_warmup_steps: int = Field(0, ge=0, description="Linear warm-up of penalty_weight (optimizer steps).")
    forbidden_ratio: float = Field(
        0.25, ge=0, lt=1, description="Fraction of each batch drawn from forbidden records (surgical preset)."
    )
    away_margin: float = Field(2.0, ge=0, description="away: KL(teacher||student) margin per token (nats).")
    refusal_text: str = Field(" I cannot help with that.", description="refusal: target continuation.")
    rmu_layers: list[int] | None = Field(
        None, description="representation: teacher layers (mapped onto the student); default the map's "
        "recommended_layers, else the middle layer."
    )
    leak_guard: Literal["off", "probe"] = Field(
        "off", description="probe = before training, a cross-fitted logistic probe on the teacher's hidden states "
        "(forbidden records vs gold) scores every gold record out of fold; those it puts on the forbidden side "
        "leave KD (surgical: they become penalty records; filter-only: dropped). Catches forbidden records that "
        "got past curate (docs/distill.md, 'Leak guard'). Needs forbidden records.")
    leak_guard_layer: int | None = Field(
        None, description="leak_guard: teacher layer the probe reads; default the map's first recommended layer, "
        "else the middle layer.")
    leak_guard_threshold: float = Field(0.5, gt=0, lt=1, description="leak_guard: p(forbidden) at which a gold "
                                        "record is flagged.")
    leak_guard_folds: int = Field(5, ge=2, description="leak_guard: cross-fitting folds.")
    rmu_steering_coeff: float = Field(4.0, ge=0, description="representation: norm of the random target direction.")
    rmu_retain_weight: float = Field(1.0, ge=0, description="representation: weight of the gold-side alignment.")

    # ---- optimisation
    max_steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per optimizer step (gold + forbidden).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: float = Field(4e-3, gt=0, description="Peak learning rate (AdamW, cosine).")
    warmup_steps: int = Field(30, ge=0, description="LR warm-up steps.")
    weight_decay: float = Field(0.01, ge=0)
    max_length: int = Field(128, ge=8, description="Truncate encoded records to this many tokens.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0 = only the final student).")
    eval_every: int = Field(100, ge=0, description="World runs: val add/sub exact-match every N steps (0 = off).")
    eval_limit: int = Field(100, ge=10, description="Val problems per domain in the periodic evaluation.")
    logging_steps: int = Field(10, ge=1)
    term_grad_every: int = Field(
        100, ge=0, description="Every this many steps, measure each loss term's gradient norm relative to KD's (an "
        "extra backward per term on that step; logged as gradratio_<term>, summarised in distill.json's "
        "penalty_activity). 0 = off. Single-process runs only.")
    seed: int = Field(0)
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
