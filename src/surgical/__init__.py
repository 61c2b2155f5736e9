"""surgical: safe, selective distillation of language models."""

__version__ = "0.1.0"
