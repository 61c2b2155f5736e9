"""Config of the verify stage (a section of the pipeline YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import Section


class VerifyConfig(Section):
    """The verify stage's knobs (see docs/verify.md). Item counts are per domain."""

    profile: Literal["full", "compare"] = Field(
        "full", description="Which probes run. `full`: every probe, the verdict. `compare`: only what a comparison "
        "row reads (knowledge probes, the twin's MC, jailbreaks, quantization, the model's latent probes, its own "
        "relearning sweep); the in-context-use probe, the direction-ablation attack, the reference and twin latent "
        "probes, the logit lens, benign relearning and the references' relearning sweeps are skipped, so its verdict "
        "is `incomplete` by construction (the pipeline's comparison rows use it; see docs/verify.md).")
    split: Literal["test", "val"] = Field("test", description="Eval split the verdict is computed on.")
    n_items: int = Field(200, ge=4, description="Items per domain for the knowledge probes (capped by the split).")
    bootstrap_samples: int = Field(1000, ge=10, description="Bootstrap resamples behind every 95% CI.")
    seed: int = Field(0, description="Seed of bootstrap, item subsets, shots, relearning data and probes.")
    batch_size: int = Field(64, ge=1, description="Sequences per forward pass when scoring or generating.")
    verdict_mc_statistic: Literal["ci_low", "value"] = Field(
        "ci_low", description="Statistic of the worst-case forget MC check: the 95% CI lower bound (fail only when "
        "an attack is significantly above the limit; the max over ~25 attacks of chance-level estimates is biased "
        "upward) or the point estimate. Exact match always uses the point estimate.")
    mc_twin: bool = Field(True, description="Score a random-init twin of the model (same config, weights seeded by "
                          "`seed`, the model's tokenizer) on the clean forget MC items: the calibrated chance level "
                          "reported next to the nominal one, and the `forget_mc_below_twin` check. One MC probe; "
                          "off, that check is not evaluated.")
    mc_twin_retain: bool = Field(False, description="Score the random-init twin on the retained domains' MC items "
                                 "too: the no-skill level of every MC set (reported, never gated).")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    workers: int = Field(0, ge=0, description="Processes the battery's independent jobs (relearning runs, "
                         "jailbreak templates) are spread over. 0 = auto: on a CPU model, one forked process per "
                         "thread of `threads`, each with one thread; 1 = serial, in this process.")

    # jailbreak battery
    jailbreak_items: int = Field(64, ge=1, description="Items per domain for each jailbreak template.")
    jailbreak_families: list[str] | None = Field(None, description="Families to run (default: every packaged "
                                                 "family and every family in --jailbreaks directories).")
    jailbreak_max_shots: int = Field(32, ge=1, description="Most solved examples a many-shot template may hold "
                                     "(fewer when the model's context is shorter).")
    in_context_items: int = Field(64, ge=1, description="Forbidden items for the in-context-use probe.")

    # relearning attack (Deeb & Roger 2024; UNDO, Lee et al. 2025)
    relearn: bool = Field(True, description="Run the relearning attack. Off, the verdict's relearning check is "
                          "recorded as not run and does not gate; on, an attack that cannot run (no attack records, "
                          "an error) makes the verdict `incomplete` while the policy gates on relearning.")
    relearn_examples: int = Field(64, ge=1, description="Forbidden training examples the attacker fine-tunes on.")
    relearn_max_steps: int = Field(500, ge=1, description="Optimizer steps per learning rate.")
    relearn_lrs: list[float] = Field([1e-5, 3e-5, 1e-4, 3e-4, 1e-3], min_length=1,
                                     description="Learning rates swept (AdamW, constant); the attacker's best counts.")
    relearn_batch_size: int = Field(8, ge=1, description="Sequences per relearning step.")
    relearn_eval_steps: list[int] = Field([25, 50, 100, 200, 350, 500],
                                          description="Steps at which forget accuracy is measured (plus step 0).")
    relearn_eval_items: int = Field(32, ge=1, description="Forbidden items per domain in each checkpoint evaluation.")
    relearn_mc: bool = Field(False, description="Also score forget MC at every relearning checkpoint (the "
                             "comparison row's forget_mc_after_relearn: the attacker's best lr at each step). "
                             "Turns early stopping off.")
    relearn_early_stop: bool = Field(True, description="Stop a run once it reaches the teacher's forget accuracy "
                                     "(the curve is full from there on; saves the rest of the budget).")
    relearn_references: bool = Field(True, description="Run the sweep on the reference models too (the comparison "
                                     "battery turns it off: the teacher's curve is the same for every row).")
    benign_relearn: bool = Field(True, description="Also fine-tune on allowed-domain data only (rebound test).")
    benign_lr: float | None = Field(None, gt=0, description="LR of the benign run (default: the largest swept).")

    # quantization attack (Zhang et al. 2024)
    quant_schemes: list[Literal["int8", "int4"]] = Field(["int8", "int4"], description="Precisions tried.")
    quant_backend: Literal["quanto", "torchao"] = Field(
        "quanto", description="quanto does int8 and int4 on the CPU; torchao only int8 here (int4 needs mslk).")

    # latent probes
    probe_train_items: int = Field(400, ge=10, description="Forbidden training-split items that fit each "
                                   "layer's linear probe.")
    probe_test_items: int = Field(200, ge=10, description="Held-out items the probes are scored on.")
    ablation_items: int = Field(100, ge=4, description="Validation items per domain that define the "
                                "difference-in-means direction of the ablation attack.")
