"""The layout shows the method: the world reaches the stages only through the files it writes."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "surgical"
WORLD_IMPORT = re.compile(r"^\s*(from\s+(\.\.?world|surgical\.world)\b|import\s+surgical\.world\b)", re.M)


def test_only_the_world_and_the_demo_import_the_world():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.relative_to(SRC).parts[0] not in ("world", "demo") and WORLD_IMPORT.search(p.read_text())]
    assert offenders == []


def test_quantize_does_not_import_verify():
    text = (SRC / "quantize.py").read_text()
    assert not re.search(r"^\s*from\s+\.verify|^\s*import\s+surgical\.verify", text, re.M)
