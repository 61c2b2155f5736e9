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
    from safetensors import safe_open

    tok, teacher, encoded = setup
    V = len(tok)
    meta = cache_logits(teacher, encoded[:4], tmp_path / "c", k=4, pad_id=tok.pad_token_id)
    # uint16 ids (the vocabulary fits), fp16 values, fp32 other: 4 x 2 + 4 x 2 + 4
    assert meta["bytes_per_token"] == cache_bytes_per_token(4, V) == 20 < meta["full_logits_bytes_per_token_fp32"]
    f = safe_open(str(tmp_path / "c" / meta["shards"][0]["file"]), framework="pt")
    assert f.get_tensor("indices").dtype == torch.uint16 and f.get_tensor("values").dtype == torch.float16
    # the on-disk size is what bytes_per_token says (plus the offsets and the safetensors header)
    assert meta["total_bytes"] - meta["n_tokens"] * 20 < 8 * 5 + 1024
    cache = TopKCache(tmp_path / "c")
    v, ix, other = cache.example(0)
    assert v.dtype == torch.float32 and ix.dtype == torch.int64 and torch.isfinite(other).all()
    assert int(ix.max()) < V


def test_sizes_per_format_and_vocab():
    assert cache_bytes_per_token(32) == 196  # int32 ids when the vocabulary is unknown
    assert cache_bytes_per_token(32, 49152) == 132  # SmolLM2: uint16 ids
    assert cache_bytes_per_token(32, 49152, "u8") == 102
    assert cache_bytes_per_token(32, 262144) == 196  # Gemma-3: int32 ids
    with pytest.raises(ValueError, match="value format"):
        cache_bytes_per_token(32, 100, "fp8")


def test_u8_values_keep_the_bucket_distribution(setup, tmp_path):
    """u8 values are shifted by the top-1 logit; the bucket distribution (a softmax) and so the KD loss stay
    within the rounding error of the fp16 cache, and the ids are the same."""
    from surgical.distill.losses import teacher_topk_logp

    tok, teacher, encoded = setup
    for fmt in ("fp16", "u8"):
        meta = cache_logits(teacher, encoded[:6], tmp_path / fmt, k=16, temperature=2.0, pad_id=tok.pad_token_id,
                            value_format=fmt)
        assert meta["value_format"] == fmt
    assert meta["bytes_per_token"] == 16 * 2 + 16 + 2 + 4
    a, b = TopKCache(tmp_path / "fp16"), TopKCache(tmp_path / "u8", value_format="u8")
    for i in range(6):
        (va, ia, oa), (vb, ib, ob) = a.example(i), b.example(i)
        assert torch.equal(ia, ib)
        assert (vb <= 0).all() and torch.equal(vb[:, 0], torch.zeros_like(vb[:, 0]))  # shifted by the top-1 logit
        pa, pb = teacher_topk_logp(va, oa, 2.0).exp(), teacher_topk_logp(vb, ob, 2.0).exp()
        assert (pa - pb).abs().max() < 5e-3
    feats = [{**e, "forbidden": 0, "example_index": i} for i, e in enumerate(encoded[:6])]
    ba, bb = DistillCollator(tok.pad_token_id, a)(feats), DistillCollator(tok.pad_token_id, b)(feats)
    student = torch.randn(ba["input_ids"].shape + (len(tok),), generator=torch.Generator().manual_seed(0))
    la = kd_loss_topk(student, ba["teacher_values"], ba["teacher_indices"], ba["teacher_other"], ba["kd_mask"],
                      temperature=2.0)
    lb = kd_loss_topk(student, bb["teacher_values"], bb["teacher_indices"], bb["teacher_other"], bb["kd_mask"],
                      temperature=2.0)
    assert lb.item() == pytest.approx(la.item(), rel=1e-2)
    with pytest.raises(CacheError, match="value format"):
        TopKCache(tmp_path / "u8", value_format="fp16")


def test_cache_refuses_other_data_or_temperature(setup, tmp_path):
    tok, teacher, encoded = setup
    cache_logits(teacher, encoded[:3], tmp_path / "c", k=4, temperature=2.0, gold_sha256="aaa",
                 forbidden_sha256="fff", pad_id=tok.pad_token_id)
    with pytest.raises(CacheError, match="other gold data"):
        TopKCache(tmp_path / "c", gold_sha256="bbb")
    with pytest.raises(CacheError, match="temperature"):
        TopKCache(tmp_path / "c", gold_sha256="aaa", temperature=1.0)
    TopKCache(tmp_path / "c", gold_sha256="aaa", forbidden_sha256=None, temperature=2.0)  # gold-only run: fine
    cache_logits(teacher, encoded[:3], tmp_path / "t", k=4, gold_sha256="aaa", teacher_sha256="t1" * 32,
                 pad_id=tok.pad_token_id)
    TopKCache(tmp_path / "t", gold_sha256="aaa", teacher_sha256="t1" * 32, k=4)
    with pytest.raises(CacheError, match="another teacher"):
        TopKCache(tmp_path / "t", gold_sha256="aaa", teacher_sha256="t2" * 32)
    with pytest.raises(CacheError, match="another teacher"):  # a cache without a recorded teacher is refused too
        TopKCache(tmp_path / "c", teacher_sha256="t1" * 32)
    with pytest.raises(CacheError, match="k=4"):
        TopKCache(tmp_path / "t", k=8)
    with pytest.raises(CacheError, match="no cache.json"):
        TopKCache(tmp_path / "missing")
    with pytest.raises(CacheError, match="not in the cache"):
        TopKCache(tmp_path / "c").example(99)
