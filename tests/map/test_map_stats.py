"""The map's pure functions against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from surgical.map.sae import TopKSAE, clamp_edit, fvu, train_sae
from surgical.map.stats import (
    Moments,
    attribution_effect,
    fire_rate,
    group_sum,
    separability,
    spearman,
    specificity_ratio,
    standardized_difference,
    token_loss_sum,
)
from surgical.map.validate import compare, random_units_like, top_units


def test_moments_match_hand_computation():
    m = Moments(2)
    m.update(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    m.update(torch.tensor([[5.0, 4.0]]))
    assert m.n == 3
    assert torch.allclose(m.mean, torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert torch.allclose(m.var, torch.tensor([8 / 3, 8 / 3], dtype=torch.float64))
    assert torch.allclose(m.rms, torch.tensor([math.sqrt(35 / 3), math.sqrt(20 / 3)], dtype=torch.float64))


def test_standardized_difference():
    d = standardized_difference(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 4.0]), torch.tensor([0.0, 1.0]),
                                torch.tensor([1.0, 0.0]), eps=0.0)
    assert torch.allclose(d, torch.tensor([2.0, -1 / math.sqrt(2)]))


def test_attribution_effect_hand_computed():
    grad = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, T=2, units=2)
    act = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    # unit 0: 1*(0-1) + 3*(0-2) = -7; unit 1: 2*(1-1) + 4*(1-0) = 4
    assert torch.equal(attribution_effect(grad, act, torch.tensor([0.0, 1.0])), torch.tensor([-7.0, 4.0]))
    # zero-ablation: -(g * a) summed
    assert torch.equal(attribution_effect(grad, act, 0.0), torch.tensor([-7.0, -2.0]))


def test_attribution_is_exact_for_a_linear_loss():
    torch.manual_seed(0)
    w = torch.randn(5)
    act = torch.randn(3, 4, 5, requires_grad=True)
    loss = (act * w).sum()
    (grad,) = torch.autograd.grad(loss, act)
    patch = torch.randn(5)
    est = attribution_effect(grad, act.detach(), patch)
    for u in range(5):
        patched = act.detach().clone()
        patched[..., u] = patch[u]
        assert float(est[u]) == pytest.approx(float((patched * w).sum() - loss.detach()), abs=1e-4)


def test_group_sum_and_fire_rate():
    x = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(group_sum(x, 3), torch.tensor([[1.0, 5.0, 9.0], [13.0, 17.0, 21.0]]))
    assert torch.equal(fire_rate(torch.tensor([[-3.0, 0.5], [1.0, 2.0]]), torch.tensor([1.5, 1.0])),
                       torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_token_loss_sum_matches_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    total, n = token_loss_sum(logits, labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert n == 5
    assert float(total / n) == pytest.approx(float(ref), rel=1e-6)


def test_specificity_ratio():
    # map: 0.6 / 0.05, random: 0.1 / 0.1 -> 12 / 1
    assert specificity_ratio(0.6, 0.05, 0.1, 0.1, floor=0.02) == pytest.approx(12.0)
    # a zero (or negative) drop is floored: map 0.5 / floor(0.0 -> 0.02) = 25, random floor/floor = 1
    assert specificity_ratio(0.5, 0.0, 0.0, -0.04, floor=0.02) == pytest.approx(25.0)
    # a map no better than random gives 1
    assert specificity_ratio(0.2, 0.2, 0.2, 0.2, floor=0.02) == pytest.approx(1.0)


def test_separability_and_spearman():
    sep = separability(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0]), torch.zeros(2), torch.tensor([1.0, 1.0]),
                       eps=0.0)
    assert sep == pytest.approx(5.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))


def test_top_units_and_random_control():
    score = torch.tensor([[0.1, 5.0, 0.0, 3.0], [4.0, -1.0, 0.2, 0.3]])
    top = top_units(score, 3)
    assert top == {0: [1, 3], 1: [0]}
    rand = random_units_like(top, 4, seed=0)
    assert {k: len(v) for k, v in rand.items()} == {0: 2, 1: 1}
    assert not set(rand[0]) & {1, 3} and rand[1] != [0]


def test_compare_signs():
    res = compare({"add": 1.0, "mul": 0.9}, {"add": 0.95, "mul": 0.1}, ["mul"], ["add"])
    assert res["delta_exact_match"]["mul"] == pytest.approx(-0.8)
    assert res["forget_drop"] == pytest.approx(0.8)
    assert res["retain_drop"] == pytest.approx(0.05)


def test_topk_sae_encode_is_k_sparse_and_clamp_edits():
    torch.manual_seed(0)
    sae = TopKSAE(6, 24, k=3)
    x = torch.randn(10, 6)
    z = sae.encode(x)
    assert int((z > 0).sum(1).max()) <= 3
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(24), atol=1e-5)
    latents = [int(z[0].argmax())]
    assert torch.allclose(clamp_edit(sae, latents, 1.0)(x), x)  # scale 1 changes nothing
    zeroed = clamp_edit(sae, latents, 0.0)(x)
    expected = x - z[:, latents] @ sae.W_dec[latents]
    assert torch.allclose(zeroed, expected, atol=1e-6)
    neg = clamp_edit(sae, latents, -2.0)(x)
    assert torch.allclose(neg, x - 3 * z[:, latents] @ sae.W_dec[latents], atol=1e-6)
    assert fvu(x, x) == 0.0


def test_topk_sae_learns_a_sparse_dictionary():
    torch.manual_seed(0)
    atoms = F.normalize(torch.randn(12, 8), dim=1)
    codes = torch.zeros(2000, 12)
    idx = torch.randint(0, 12, (2000, 2))
    codes.scatter_(1, idx, torch.rand(2000, 2) + 0.5)
    x = codes @ atoms
    sae, curve = train_sae(x, n_latents=32, k=2, steps=400, batch_tokens=256, lr=5e-3, seed=0)
    with torch.no_grad():
        x_hat, _ = sae(x)
    assert fvu(x, x_hat) < 0.15
    assert curve[-1] < curve[0]
