"""Where the map reads and writes a model's units, through forward hooks on the architecture helpers.

Three sites per decoder layer:

- ``mlp``: the input of the MLP's down/output projection (``models.mlp_down_proj``), one column per neuron;
- ``heads``: the input of the attention output projection (``models.attn_out_proj``), the concatenation of the
  heads' outputs, ``num_heads`` blocks of ``head_dim`` columns;
- ``resid``: the decoder layer's output hidden state (``models.layer_output``), the residual stream after it.

``capture`` records activations (kept in the autograd graph, so ``torch.autograd.grad`` can differentiate a
loss with respect to them); ``edit`` replaces them with the output of a function, for patching, ablation
and SAE splicing. Both work during ``generate`` (each decoding step sees its own slice of positions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..models import attn_out_proj, decoder_layers, layer_output, mlp_down_proj, replace_layer_output

SITES = ("mlp", "heads", "resid")
Edit = Callable[[torch.Tensor], torch.Tensor]


def site_module(model: nn.Module, site: str, layer: int) -> nn.Module:
    """The module whose input (mlp, heads) or output (resid) is ``site`` of ``layer``."""
    block = decoder_layers(model)[layer]
    if site == "mlp":
        return mlp_down_proj(block)
    if site == "heads":
        return attn_out_proj(block)
    if site == "resid":
        return block
    raise ValueError(f"unknown site {site!r}; expected one of {SITES}")


def _register(model: nn.Module, site: str, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Hook ``fn`` on a site; ``fn`` sees the site's tensor and may return a replacement."""
    module = site_module(model, site, layer)
    if site == "resid":
        def post_hook(_mod, _args, output):
            new = fn(layer_output(output))
            return None if new is None else replace_layer_output(output, new)

        return module.register_forward_hook(post_hook)

    def pre_hook(_mod, args):
        new = fn(args[0])
        return None if new is None else (new,) + tuple(args[1:])

    return module.register_forward_pre_hook(pre_hook)


@contextlib.contextmanager
def capture(model: nn.Module, sites: dict[str, list[int]]) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Record the tensors at ``sites`` ({site: [layers]}) during the forward passes inside the block.

    Yields a dict ``(site, layer) -> tensor`` filled by the last forward pass.
    """
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    try:
        for site, layers in sites.items():
            for layer in layers:
                def record(t, key=(site, layer)):
                    store[key] = t
                    return None

                handles.append(_register(model, site, layer, record))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def stream(model: nn.Module, sites: dict[str, list[int]], fn: Callable[[tuple[str, int], torch.Tensor], None]
           ) -> Iterator[None]:
    """Call ``fn((site, layer), tensor)`` at each of ``sites`` as the forward pass reaches it, keeping nothing:
    the caller reduces each site's tensor on the spot (statistics) or hooks its gradient, so no dict of every
    site's activations is held at once."""
    handles = []
    try:
        for site, layers in sites.items():
            for layer in layers:
                def call(t, key=(site, layer)):
                    fn(key, t)
                    return None

                handles.append(_register(model, site, layer, call))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def edit(model: nn.Module, edits: dict[tuple[str, int], Edit]) -> Iterator[None]:
    """Replace the tensor at each ``(site, layer)`` by ``fn(tensor)`` during the block."""
    handles = [_register(model, site, layer, fn) for (site, layer), fn in edits.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def set_columns(columns: torch.Tensor, values: torch.Tensor | float) -> Edit:
    """An edit that sets the last-dimension ``columns`` of the tensor to ``values`` (per column, or a scalar):
    mean-ablation with the retain means, or zero-ablation with 0."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        v = values.to(t.dtype) if isinstance(values, torch.Tensor) else values
        t[..., columns] = v
        return t

    return fn


def head_columns(heads: torch.Tensor | list[int], head_dim: int) -> torch.Tensor:
    """Column indices of ``heads`` in the concatenated head outputs."""
    heads = torch.as_tensor(heads, dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
