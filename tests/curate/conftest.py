"""Fixtures of the curate tests: the MiniLM embedder loaded once per session, and a stub classifier."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def minilm():
    from surgical.curate.classifier import MiniLMEmbedder

    return MiniLMEmbedder(batch_size=64)


@pytest.fixture(scope="session")
def demo_policy():
    from surgical.policy import demo_policy_path, load_policy

    return load_policy(demo_policy_path())


class StubClassifier:
    """A deterministic stand-in for the embedding classifier: P(mul) = 0.9 when the text has '*',
    P(div) = 0.9 when it has '/'. Records the size of every batch it scores."""

    def __init__(self, domains=("mul", "div", "mixed"), crash_on: str | None = None):
        self.domains = domains
        self.crash_on = crash_on
        self.batch_sizes: list[int] = []
        self.training_texts: set[str] = set()

    def predict_proba(self, texts):
        self.batch_sizes.append(len(texts))
        if self.crash_on is not None and any(self.crash_on in t for t in texts):
            raise RuntimeError("stub classifier crashed")
        out = {d: np.full(len(texts), 0.05) for d in self.domains}
        for i, t in enumerate(texts):
            if "*" in t:
                out["mul"][i] = 0.9
            if "/" in t:
                out["div"][i] = 0.9
        return out


@pytest.fixture
def stub_classifier():
    return StubClassifier()



@pytest.fixture
def make_stub():
    """The StubClassifier class, for tests that need one with options (e.g. crash_on)."""
    return StubClassifier
