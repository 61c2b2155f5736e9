"""The demo configuration: the embedded arithmetic world as one data source among others.

This package and ``surgical.world`` are the only places that import the world. The `--demo` flags of the
stage CLIs and ``surgical demo`` resolve their inputs here (the world's cached teacher, its suite, its corpus)
into plain files, which the stages then read exactly as they read a user's own.
"""

from __future__ import annotations

from pathlib import Path


def world_config(cfg=None):
    from ..config import WorldConfig

    return cfg.world if cfg is not None else WorldConfig()


def suite_path(cfg=None) -> Path:
    """The world's suite manifest for ``cfg.world`` (written once under $SURGICAL_HOME)."""
    from ..world.suite import world_suite_path

    return world_suite_path(world_config(cfg))


def teacher_dir(cfg=None, quiet: bool = False) -> Path:
    """The world's teacher for ``cfg`` (trained and cached on first use)."""
    from ..config import demo_config
    from ..world.teacher import get_or_train_teacher

    cfg = cfg or demo_config()
    return get_or_train_teacher(cfg.world, cfg.teacher, quiet=quiet)[0]


def cached_teacher_dir(cfg=None) -> Path:
    """Where the world's teacher for ``cfg`` is cached (it may not exist yet; nothing is trained)."""
    from ..config import demo_config
    from ..world.teacher import teacher_dir as _teacher_dir

    cfg = cfg or demo_config()
    return _teacher_dir(cfg.world, cfg.teacher)
