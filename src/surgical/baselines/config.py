"""Config of the unlearn-only baselines (the pipeline's ``baselines.unlearn`` section), light to import."""

from __future__ import annotations

from pydantic import Field

from ..config_base import Section


class UnlearnConfig(Section):
    """Knobs of the unlearn-only baselines (see docs/baselines.md)."""

    max_steps: int = Field(150, ge=1, description="Optimizer steps (WMDP RMU: 150 batches).")
    max_wall_s: float = Field(60.0, gt=0, description="Stop early after this many seconds of training.")
    batch_size: int = Field(16, ge=1, description="Forget sequences (and as many retain sequences) per step.")
    lr: float | None = Field(None, gt=0, description="AdamW learning rate; None = the method's default "
                             "(graddiff/maxent 1e-4, rmu 1e-3: see docs/baselines.md).")
    alpha: float | None = Field(None, ge=0, description="Retain-loss weight; None = the method's default "
                                "(graddiff/maxent 1.0, rmu 1200 as in WMDP).")
    rmu_layer: int | None = Field(None, ge=0, description="RMU layer l; None = WMDP's 7 of 32 scaled to our "
                                  "depth: round(7/32 * depth), at least 2 when depth > 2 so l-2..l exists.")
    rmu_update_span: int = Field(3, ge=1, description="RMU updates the down-projections of this many layers "
                                 "ending at l (WMDP: l-2..l, 3 layers).")
    steering_coeff: float | None = Field(None, gt=0, description="RMU steering coefficient c; None = WMDP's 6.5 "
                                         "times (mean forget hidden-state norm at l / sqrt(hidden size)), "
                                         "see docs/baselines.md.")
    seed: int = Field(0, description="Seed of the random direction and the data order.")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    eval_items: int = Field(64, ge=1, description="Forget/retain sequences in the before/after loss check.")
