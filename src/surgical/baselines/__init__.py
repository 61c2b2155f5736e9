"""Literature baselines run next to the surgical student (unlearn-only: GradDiff, MaxEnt, RMU)."""

from .unlearn import METHODS, UnlearnConfig, suite_unlearn_records, unlearn

__all__ = ["METHODS", "UnlearnConfig", "suite_unlearn_records", "unlearn"]
