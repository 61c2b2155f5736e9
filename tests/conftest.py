"""Shared fixtures: the demo world, its tokenizer, and tiny random-init models of the four families."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own SURGICAL_HOME so caches never leak between tests or into ~/.cache."""
    monkeypatch.setenv("SURGICAL_HOME", str(tmp_path_factory.mktemp("surgical_home")))


@pytest.fixture(scope="session")
def world():
    from surgical.config import WorldConfig
    from surgical.world import build_world

    return build_world(WorldConfig())


@pytest.fixture(scope="session")
def world_tokenizer(world):
    return world.tokenizer


@pytest.fixture(scope="session")
def world_suite(tmp_path_factory):
    """The world's suite as the world writes it (surgical world), loaded like any user's suite."""
    from surgical.config import WorldConfig
    from surgical.suite import load_suite
    from surgical.world.suite import write_world_suite

    return load_suite(write_world_suite(WorldConfig(), tmp_path_factory.mktemp("world_suite")))


@pytest.fixture(params=["llama", "qwen2", "gpt2", "gpt_neox"])
def family(request):
    return request.param


@pytest.fixture
def tiny_model(family, world_tokenizer):
    from surgical.models import make_tiny_model

    return make_tiny_model(family, len(world_tokenizer))


@pytest.fixture
def tiny_model_dir(tiny_model, world_tokenizer, tmp_path):
    """A saved HF model dir (model + world tokenizer) of the parametrised family."""
    d = tmp_path / "model"
    tiny_model.save_pretrained(d)
    world_tokenizer.save_pretrained(d)
    return d
