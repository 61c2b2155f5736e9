"""The offline top-k logits cache: round trip, the k = vocab identity, data checks."""

import pytest
import torch

from surgical.demo import distill_records as world_records
from surgical.distill.cache import CacheError, TopKCache, cache_bytes_per_token, cache_logits
from surgical.distill.data import DistillCollator, encode_record
from surgical.distill.losses import kd_loss, kd_loss_topk
from surgical.models import make_tiny_model


@pytest.fixture(scope="module")
def setup(world):
    tok = world.tokenizer
    teacher = make_tiny_model("gpt2", len(tok), seed=1)
    encoded = [encode_record(tok, r) for r in world_records(world, ("add", "mul"))[::300]]
    return tok, teacher, encoded


def test_cache_round_trip_and_k_equal_vocab_loss(setup, tmp_path):
    tok, teacher, encoded = setup
    V = len(tok)
    meta = cache_logits(teacher, encoded, tmp_path / "c", k=V, gold_sha256="g", batch_size=8, shard_examples=7,
                        pad_id=tok.pad_token_id)
    assert len(meta["shards"]) > 1 and meta["n_tokens"] == sum(len(e["input_ids"]) for e in encoded)
    cache = TopKCache(tmp_path / "c", gold_sha256="g", temperature=1.0)
    feats = [{**e, "forbidden": 0, "example_index": i} for i, e in enumerate(encoded[5:12], start=5)]
    batch = DistillCollator(tok.pad_token_id, cache)(feats)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    student = torch.randn_like(t_logits)
    mask = batch["kd_mask"]
    full = kd_loss(student, t_logits, mask)
    cached = kd_loss_topk(student, batch["teacher_values"], batch["teacher_indices"], batch["teacher_other"], mask)
    assert cached.item() == pytest.approx(full.item(), rel=2e-3)  # fp16 values: equal up to half precision
    # stored top-k ids are the teacher's argmax
    v, ix, _ = cache.example(6)
    assert torch.equal(ix[:, 0].long(), t_logits[1, : v.shape[0]].argmax(-1))


def test_small_k_cache_size_and_proper_divergence(setup, tmp_path):
    tok, teacher, encoded = setup
    meta = cache_logits(teacher, encoded[:4], tmp_path / "c", k=4, pad_id=tok.pad_token_id)
    assert meta["bytes_per_token"] == cache_bytes_per_token(4) == 28 < meta["full_logits_bytes_per_token_fp32"]
    cache = TopKCache(tmp_path / "c")
    v, ix, other = cache.example(0)
    assert v.dtype == torch.float16 and ix.dtype == torch.int32 and torch.isfinite(other).all()


def test_cache_refuses_other_data_or_temperature(setup, tmp_path):
    tok, teacher, encoded = setup
    cache_logits(teacher, encoded[:3], tmp_path / "c", k=4, temperature=2.0, gold_sha256="aaa",
                 forbidden_sha256="fff", pad_id=tok.pad_token_id)
    with pytest.raises(CacheError, match="other gold data"):
        TopKCache(tmp_path / "c", gold_sha256="bbb")
    with pytest.raises(CacheError, match="temperature"):
        TopKCache(tmp_path / "c", gold_sha256="aaa", temperature=1.0)
    TopKCache(tmp_path / "c", gold_sha256="aaa", forbidden_sha256=None, temperature=2.0)  # gold-only run: fine
    with pytest.raises(CacheError, match="no cache.json"):
        TopKCache(tmp_path / "missing")
    with pytest.raises(CacheError, match="not in the cache"):
        TopKCache(tmp_path / "c").example(99)
