"""Silence harmless import-time noise from optional backends (torchao's missing CUDA kernels, pytree
deprecation warnings) so users see only what matters. Real errors still surface."""

from __future__ import annotations

import logging
import os
import warnings


class _DropNoise(logging.Filter):
    _PATTERNS = ("_C_mxfp8", "_C_cutlass", "register_constant", "is an Enum subclass")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(p in msg for p in self._PATTERNS)


def silence_import_noise() -> None:
    """Install filters for known-harmless messages; idempotent."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*is an Enum subclass.*")
    warnings.filterwarnings("ignore", message=".*_C_mxfp8.*")
    for name in ("", "torchao", "torch.utils._pytree", "torch._dynamo"):
        logging.getLogger(name).addFilter(_DropNoise())
