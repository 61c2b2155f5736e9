"""Every distill loss against a hand computation on small tensors (TRL's TestGeneralizedJSDLoss style)."""

import math

import pytest
import torch

from surgical.distill.losses import (
    away_hinge,
    hidden_mse,
    jsd_from_logp,
    kd_loss,
    kd_loss_topk,
    linear_warmup,
    masked_ce,
    maxent_penalty,
    reduce_masked,
    rmu_forget_loss,
    topk_cache_entry,
)


def _logits(p):
    return torch.tensor(p, dtype=torch.float32).log()


P, Q = [0.5, 0.5], [0.25, 0.75]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=False) if a > 0)


def test_forward_and_reverse_kl_by_hand():
    t, s = _logits(P)[None], _logits(Q)[None]  # teacher P, student Q
    assert kd_loss(s, t, kind="forward_kl").item() == pytest.approx(_kl(P, Q), abs=1e-6)
    assert kd_loss(s, t, kind="reverse_kl").item() == pytest.approx(_kl(Q, P), abs=1e-6)
    assert _kl(P, Q) != pytest.approx(_kl(Q, P), abs=1e-3)  # the two directions really differ here


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_identical_inputs_give_zero(kind):
    x = torch.randn(3, 5, 11)
    assert kd_loss(x, x.clone(), kind=kind, beta=0.3).item() == pytest.approx(0.0, abs=1e-6)


def test_jsd_by_hand_and_symmetric_at_half():
    m = [(a + b) / 2 for a, b in zip(P, Q, strict=False)]
    expected = 0.5 * _kl(P, m) + 0.5 * _kl(Q, m)
    t, s = _logits(P)[None], _logits(Q)[None]
    assert kd_loss(s, t, kind="jsd", beta=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert kd_loss(t, s, kind="jsd", beta=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert expected <= math.log(2)


def test_jsd_beta_limits_and_asymmetry():
    t, s = _logits(P)[None], _logits(Q)[None]
    # beta=0.2: m = 0.2 t + 0.8 s; JSD = 0.2 KL(t||m) + 0.8 KL(s||m)
    m = [0.2 * a + 0.8 * b for a, b in zip(P, Q, strict=False)]
    assert kd_loss(s, t, kind="jsd", beta=0.2).item() == pytest.approx(0.2 * _kl(P, m) + 0.8 * _kl(Q, m), abs=1e-6)
    assert jsd_from_logp(t.log_softmax(-1), s.log_softmax(-1), 0.0).item() == pytest.approx(_kl(P, Q), abs=1e-6)
    assert jsd_from_logp(t.log_softmax(-1), s.log_softmax(-1), 1.0).item() == pytest.approx(_kl(Q, P), abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_matches_trl(beta):
    trl_gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    labels = torch.tensor([[1, 2, -100, 3], [-100, 4, 5, 6]])
    ref = trl_gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=2.0)
    ours = kd_loss(s, t, mask=labels != -100, kind="jsd", beta=beta, temperature=2.0) / 4.0  # we scale by T^2
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)


def test_temperature_divides_logits_and_scales_by_t_squared():
    torch.manual_seed(1)
    s, t = torch.randn(3, 9), torch.randn(3, 9)
    T = 3.0
    assert kd_loss(s, t, temperature=T).item() == pytest.approx(T**2 * kd_loss(s / T, t / T).item(), rel=1e-5)
    # a higher temperature flattens both distributions: the unscaled divergence shrinks
    assert kd_loss(s, t, temperature=T).item() / T**2 < kd_loss(s, t).item()


def test_masking_and_reductions():
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    per_token = kd_loss(s, t, reduction="none")
    assert per_token.shape == (2, 3)
    masked = kd_loss(s, t, mask=mask, reduction="none")
    assert torch.all(masked[mask == 0] == 0)
    total = per_token[mask.bool()].sum()
    assert kd_loss(s, t, mask=mask, reduction="sum").item() == pytest.approx(total.item(), rel=1e-6)
    assert kd_loss(s, t, mask=mask).item() == pytest.approx(total.item() / 3, rel=1e-6)
    s2 = s.clone()
    s2[0, 1] += 100.0  # changing a masked-out token changes nothing
    assert kd_loss(s2, t, mask=mask).item() == pytest.approx(kd_loss(s, t, mask=mask).item(), rel=1e-6)
    assert kd_loss(s, t, mask=torch.zeros(2, 3)).item() == 0.0  # empty mask: 0, not nan
    with pytest.raises(ValueError):
        reduce_masked(per_token, mask, "batchmean")


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_with_k_equal_vocab_equals_full_loss(kind):
    torch.manual_seed(3)
    V = 13
    s, t = torch.randn(2, 4, V, requires_grad=True), torch.randn(2, 4, V)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]])
    values, indices, other = topk_cache_entry(t, V, temperature=1.5)
    assert torch.isinf(other).all() and (other < 0).all()  # no mass left outside the top-V
    full = kd_loss(s, t, mask, kind=kind, beta=0.4, temperature=1.5)
    top = kd_loss_topk(s, values, indices, other, mask, kind=kind, beta=0.4, temperature=1.5)
    assert top.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    top.backward()
    assert torch.isfinite(s.grad).all()


def test_topk_other_bucket_is_a_proper_divergence():
    torch.manual_seed(4)
    t = torch.randn(5, 20)
    values, indices, other = topk_cache_entry(t, 4)
    # the teacher's own logits give 0; any other student gives > 0 and no more than the full KL
    assert kd_loss_topk(t, values, indices, other).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 20)
    bucketed = kd_loss_topk(s, values, indices, other).item()
    assert 0 < bucketed <= kd_loss(s, t).item() + 1e-6  # coarsening never increases KL (data processing)
    # fp16 storage of the values changes the loss only slightly
    half = kd_loss_topk(s, values.half(), indices, other).item()
    assert half == pytest.approx(bucketed, rel=1e-2)


def test_masked_ce_by_hand():
    logits = _logits([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    targets = torch.tensor([0, 2])
    assert masked_ce(logits, targets).item() == pytest.approx((-math.log(0.5) - math.log(0.8)) / 2, rel=1e-6)
    assert masked_ce(logits, targets, torch.tensor([0, 1])).item() == pytest.approx(-math.log(0.8), rel=1e-6)


def test_maxent_by_hand():
    assert maxent_penalty(torch.zeros(2, 6)).item() == pytest.approx(0.0, abs=1e-6)  # uniform
    logits = _logits([0.25, 0.75])
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert maxent_penalty(logits[None]).item() == pytest.approx(math.log(2) - entropy, rel=1e-6)


def test_away_hinge_by_hand():
    div = torch.tensor([0.5, 3.0, 1.0])
    mask = torch.tensor([1, 1, 0])
    # relu(2 - 0.5) = 1.5, relu(2 - 3) = 0, third masked -> mean over 2 tokens
    assert away_hinge(div, 2.0, mask).item() == pytest.approx(0.75)
    assert away_hinge(div, 0.0).item() == 0.0


def test_hidden_mse_and_rmu_by_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    target = torch.zeros(1, 2, 2)
    assert hidden_mse(h, target).item() == pytest.approx((0.5 + 2.0) / 2)
    u = torch.tensor([0.0, 1.0])
    # target c*u = (0, 2): token 1 is exactly there, token 0 is off by (1, -2) -> mse 2.5
    assert rmu_forget_loss(h, u, 2.0, torch.tensor([[1, 1]])).item() == pytest.approx(2.5 / 2)
    assert rmu_forget_loss(h, u, 2.0, torch.tensor([[0, 1]])).item() == pytest.approx(0.0)


def test_linear_warmup():
    assert linear_warmup(0, 10) == 0.0
    assert linear_warmup(5, 10) == 0.5
    assert linear_warmup(50, 10) == 1.0
    assert linear_warmup(0, 0) == 1.0
