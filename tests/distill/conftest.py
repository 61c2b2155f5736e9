"""Fixtures of the distill tests: a tiny teacher and world gold/forbidden records (once per module)."""

import pytest

from surgical.demo import distill_records as world_records
from surgical.io import write_jsonl
from surgical.models import make_tiny_model


@pytest.fixture(scope="module")
def files(world, tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    tok = world.tokenizer
    make_tiny_model("llama", len(tok), layers=2, seed=2).save_pretrained(d / "teacher")
    tok.save_pretrained(d / "teacher")
    write_jsonl(d / "gold.jsonl", world_records(world, ("add", "sub"))[::200])
    write_jsonl(d / "forbidden.jsonl", world_records(world, ("mul", "div"))[::40])
    return d
