"""Base class of every config section (kept apart from config.py so stage packages can import it)."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, so typos never pass silently; an infinite or NaN number is
    an error too (``lr: .inf`` passes ``gt=0`` otherwise)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
