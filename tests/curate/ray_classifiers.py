"""Classifier factories for the Ray engine tests (``curate.classifier_factory: ray_classifiers:stub``).

The Ray engine's classifier actors build their classifier in their own worker process, so a test cannot hand
them an object or monkeypatch them: it names a factory by dotted path instead, and this module must be
importable there (test_ray_engine.py puts this directory on the workers' PYTHONPATH). Content is the arithmetic
world's stand-in for forbidden data ('*' and '/')."""

from __future__ import annotations

import numpy as np


class Stub:
    """P(mul) = 0.9 for a text with '*', P(div) = 0.9 for one with '/', else 0.05; raises on ``crash_on``."""

    training_texts: set = set()

    def __init__(self, crash_on: str | None = None):
        self.crash_on = crash_on

    def predict_proba(self, texts):
        if self.crash_on is not None and any(self.crash_on in t for t in texts):
            raise RuntimeError("stub classifier crashed")
        out = {d: np.full(len(texts), 0.05) for d in ("mul", "div", "mixed")}
        for i, t in enumerate(texts):
            if "*" in t:
                out["mul"][i] = 0.9
            if "/" in t:
                out["div"][i] = 0.9
        return out


def stub(policy, cfg):
    return Stub()


def crash_on_seven(policy, cfg):
    """Fails every batch in which some text to classify has a '7' (some batches, not all)."""
    return Stub(crash_on="7")
