"""The curate stage: a policy-driven two-stage filter (blocklist -> classifier) with dedup, teacher
trajectories, and constitutional rewriting with per-token distillation masks. See docs/curate.md.

Entry points: ``surgical.curate.run.run`` / ``run_demo`` (curate), ``surgical.curate.generate.run`` /
``run_demo`` (generate), ``surgical.curate.constitution.token_kd_mask``.
"""

from .corpus import iter_records

__all__ = ["iter_records"]
