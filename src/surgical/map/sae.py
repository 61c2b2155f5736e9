"""A TopK sparse autoencoder on the residual stream, its quality figures, latent selectivity and clamping.

TopK SAE after Gao et al. 2024, "Scaling and evaluating sparse autoencoders": z = TopK(ReLU(W_enc (x - b_dec)
+ b_enc)), x_hat = z W_dec + b_dec, decoder rows kept at unit norm, loss = normalised MSE (FVU).

Why not ``eai-sparsify`` (EleutherAI's TopK SAE library, the one we would otherwise use): we checked version
1.3.3. Its trainer streams a tokenized HF dataset through the model and is built for GPUs (autocast on "cuda",
Triton decoder kernels, distributed training), and it would add four dependencies (einops, natsort,
schedulefree, simple-parsing). The map trains on a few thousand in-memory activation vectors of a tiny model
for a few seconds on a CPU; this 50-line module does that with nothing beyond torch. Swap in
``sparsify.SparseCoder`` if the map ever targets large models on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .stats import Moments, standardized_difference


class TopKSAE(nn.Module):
    """TopK sparse autoencoder with a tied-init, unit-norm decoder."""

    def __init__(self, d_in: int, n_latents: int, k: int):
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d_in, n_latents)
        nn.init.zeros_(self.encoder.bias)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())  # (n_latents, d_in)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalize_decoder()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.encoder(x - self.b_dec))
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12))


def train_sae(x: torch.Tensor, n_latents: int, k: int, steps: int, batch_tokens: int, lr: float,
              seed: int) -> tuple[TopKSAE, list[float]]:
    """Train a TopK SAE on activation rows ``x`` (N, d); returns it and its training FVU every 50 steps."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = x.float()
    sae = TopKSAE(x.shape[1], n_latents, k)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    variance = ((x - x.mean(0)) ** 2).sum(1).mean()
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    curve = []
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_tokens, x.shape[0]),), generator=gen)
        xb = x[idx]
        x_hat, _ = sae(xb)
        loss = ((xb - x_hat) ** 2).sum(1).mean() / variance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalize_decoder()
        if step % 50 == 0 or step == steps - 1:
            curve.append(round(float(loss.detach()), 5))
    return sae.eval(), curve


def splice_edit(sae: TopKSAE):
    """Replace the residual with its SAE reconstruction (no error term): the 'spliced-in' Δ LM loss."""
    def fn(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sae.decode(sae.encode(t.float())).to(t.dtype)
    return fn


def clamp_edit(sae: TopKSAE, latents: list[int], scale: float):
    """Multiply the given latents' activations by ``scale`` (0 = zeroing, < 0 = negative scaling) and add the
    change of the reconstruction to the residual, so the SAE's error term is kept intact."""
    idx = torch.as_tensor(latents, dtype=torch.long)

    def fn(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = sae.encode(t.float())[..., idx]
            return t + ((scale - 1.0) * z @ sae.W_dec[idx]).to(t.dtype)
    return fn


@dataclass
class LatentStats:
    selectivity: torch.Tensor  # (n_latents,) standardised difference forget vs retain
    fire_rate_forget: torch.Tensor
    fire_rate_retain: torch.Tensor
    mean_forget: torch.Tensor
    mean_retain: torch.Tensor


@torch.no_grad()
def latent_stats(sae: TopKSAE, x_forget: torch.Tensor, x_retain: torch.Tensor) -> LatentStats:
    """Selectivity and firing rates of each latent on forget vs retain activation rows."""
    z_f, z_r = sae.encode(x_forget.float()), sae.encode(x_retain.float())
    m_f, m_r = Moments(z_f.shape[1]), Moments(z_r.shape[1])
    m_f.update(z_f)
    m_r.update(z_r)
    return LatentStats(
        selectivity=standardized_difference(m_f.mean, m_f.var, m_r.mean, m_r.var).float(),
        fire_rate_forget=(z_f > 0).float().mean(0),
        fire_rate_retain=(z_r > 0).float().mean(0),
        mean_forget=m_f.mean.float(),
        mean_retain=m_r.mean.float(),
    )


@torch.no_grad()
def top_examples(sae: TopKSAE, x: torch.Tensor, contexts: list[str], latent: int, n: int) -> list[dict]:
    """The ``n`` rows of ``x`` on which ``latent`` is most active, with their token-in-context strings."""
    acts = sae.encode(x.float())[:, latent]
    top = acts.topk(min(n, acts.shape[0]))
    return [{"context": contexts[i], "activation": round(float(a), 4)}
            for a, i in zip(top.values.tolist(), top.indices.tolist(), strict=True) if a > 0]
