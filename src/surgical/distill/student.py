"""Building the student: (a) a fresh smaller architecture, (b) a subset of the teacher's layers with an
optional MLP width cut ("surgery before training"), (c) UNDO's noised copy of a model.

(c) follows "Distillation Robustifies Unlearning" (Lee et al. 2025): theta <- (1 - alpha)*theta + alpha*beta*eps,
eps ~ N(0, 1), applied to every weight; the noised model is then distilled on the teacher's outputs.
Architecture access goes through ``surgical.models`` only, so every supported family works.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import count_parameters, decoder_layers, linear_in_out, mlp_down_proj, mlp_width

# Family-agnostic config attribute names (Llama/Qwen2/NeoX first, GPT-2 second).
_ATTRS = {
    "layers": ("num_hidden_layers", "n_layer"),
    "hidden": ("hidden_size", "n_embd"),
    "heads": ("num_attention_heads", "n_head"),
    "intermediate": ("intermediate_size", "n_inner"),
}


class TokenizerMismatchError(ValueError):
    """The student's tokenizer differs from the teacher's (cross-tokenizer distillation is out of scope)."""


@dataclass
class StudentInfo:
    """What was built, for distill.json."""

    init: str
    n_parameters: int
    teacher_parameters: int
    kept_layers: list[int] | None = None
    mlp_width: int | None = None
    cut_neurons: dict[str, list[int]] = field(default_factory=dict)
    init_from: str | None = None
    noise_alpha: float | None = None
    noise_beta: float | None = None
    cut_selection: str | None = None

    @property
    def size_ratio(self) -> float:
        return self.n_parameters / max(1, self.teacher_parameters)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["size_ratio"] = round(self.size_ratio, 4)
        return d


def _set(cfg, key: str, value) -> None:
    for name in _ATTRS[key]:
        if hasattr(cfg, name):
            setattr(cfg, name, value)
            return
    raise TypeError(f"{type(cfg).__name__} has none of {_ATTRS[key]}")


def _get(cfg, key: str):
    for name in _ATTRS[key]:
        v = getattr(cfg, name, None)
        if v is not None:
            return v
    return None


def check_tokenizers(teacher_tok, student_tok) -> None:
    """Refuse a student whose tokenizer is not the teacher's (same vocabulary and special tokens)."""
    problems = []
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        problems.append(f"vocabularies differ ({len(teacher_tok)} vs {len(student_tok)} tokens)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(teacher_tok, name) != getattr(student_tok, name):
            problems.append(f"{name} {getattr(teacher_tok, name)} vs {getattr(student_tok, name)}")
    if problems:
        raise TokenizerMismatchError(
            "the student's tokenizer differs from the teacher's: " + "; ".join(problems)
            + ". Cross-tokenizer distillation is out of scope: build the student on the teacher's tokenizer."
        )


def student_from_config(teacher: nn.Module, layers: int, hidden: int, heads: int, intermediate: int,
                        seed: int = 0) -> tuple[nn.Module, StudentInfo]:
    """(a) A fresh, randomly initialised model of the teacher's family and vocabulary with new sizes."""
    from transformers import AutoModelForCausalLM

    if hidden % heads:
        raise ValueError(f"student_hidden_size {hidden} is not divisible by student_heads {heads}")
    cfg = copy.deepcopy(teacher.config)
    _set(cfg, "layers", layers)
    _set(cfg, "hidden", hidden)
    _set(cfg, "heads", heads)
    _set(cfg, "intermediate", intermediate)
    if getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = hidden // heads
    if getattr(cfg, "num_key_value_heads", None) is not None:
        t_heads, t_kv = _get(teacher.config, "heads"), teacher.config.num_key_value_heads
        kv = max(1, heads * t_kv // t_heads)
        cfg.num_key_value_heads = kv if heads % kv == 0 else heads
    _slice_layer_lists(cfg, teacher.config, list(range(layers)))
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(cfg)
    info = StudentInfo("config", count_parameters(student), count_parameters(teacher))
    return student, info


def _slice_layer_lists(cfg, teacher_cfg, keep: list[int]) -> None:
    """Per-layer config lists (e.g. ``layer_types``) must have one entry per kept layer."""
    n = _get(teacher_cfg, "layers")
    for name, value in vars(teacher_cfg).items():
        if isinstance(value, list) and len(value) == n and name not in ("architectures",):
            setattr(cfg, name, [value[min(i, n - 1)] for i in keep])


def _layers_prefix(model: nn.Module) -> str:
    layers = decoder_layers(model)
    for name, mod in model.named_modules():
        if mod is layers:
            return name
    raise TypeError("decoder layer list not found among named modules")


def _mlp_input_linears(layer: nn.Module, width: int) -> list[nn.Module]:
    """The MLP's projections *into* the neurons (up/gate/fc): every Linear or Conv1D whose output is
    ``width`` wide, other than the down projection."""
    down = mlp_down_proj(layer)
    out = []
    for mod in layer.mlp.modules():
        if mod is down or not hasattr(mod, "weight") or mod.weight is None or mod.weight.dim() != 2:
            continue
        if linear_in_out(mod)[1] == width:
            out.append(mod)
    return out


def _slice_neurons(layer: nn.Module, width: int, keep: torch.Tensor) -> None:
    """Keep only MLP neurons ``keep`` of ``layer`` (in place)."""
    for mod in _mlp_input_linears(layer, width):
        if isinstance(mod, nn.Linear):
            mod.weight = nn.Parameter(mod.weight.data[keep].clone())
            mod.out_features = len(keep)
        else:  # GPT-2 Conv1D: weight (in, out)
            mod.weight = nn.Parameter(mod.weight.data[:, keep].clone())
            mod.nf = len(keep)
        if getattr(mod, "bias", None) is not None:
            mod.bias = nn.Parameter(mod.bias.data[keep].clone())
    down = mlp_down_proj(layer)
    if isinstance(down, nn.Linear):
        down.weight = nn.Parameter(down.weight.data[:, keep].clone())
        down.in_features = len(keep)
    else:
        down.weight = nn.Parameter(down.weight.data[keep].clone())


def _neuron_norms(layer: nn.Module) -> torch.Tensor:
    """Per-neuron norm of the down projection's input weights (how much each neuron writes)."""
    down = mlp_down_proj(layer)
    w = down.weight.data
    return w.norm(dim=0) if isinstance(down, nn.Linear) else w.norm(dim=1)


def student_from_teacher(teacher: nn.Module, keep_layers: list[int], forget_neurons: dict | None = None,
                         cut_forget_neurons: int = 0, mlp_keep_fraction: float = 1.0) -> tuple[nn.Module, StudentInfo]:
    """(b) Keep ``keep_layers`` of the teacher (embeddings, norms and head copied) and optionally cut MLP
    neurons: the first ``cut_forget_neurons`` of the map's ``forget_neurons[str(layer)]`` are dropped,
    then the lowest-norm ones until ``mlp_keep_fraction`` of the width remains (same width in every layer)."""
    from transformers import AutoModelForCausalLM

    n_teacher = len(decoder_layers(teacher))
    keep_layers = sorted(set(keep_layers))
    if not keep_layers or keep_layers[0] < 0 or keep_layers[-1] >= n_teacher:
        raise ValueError(f"keep_layers {keep_layers} out of range for a {n_teacher}-layer teacher")
    width = mlp_width(teacher)
    work = copy.deepcopy(teacher).float()
    layers = decoder_layers(work)
    forget_neurons = forget_neurons or {}
    n_keep = min(max(1, round(width * mlp_keep_fraction)), width - cut_forget_neurons)
    cut: dict[str, list[int]] = {}
    if n_keep < width:
        for li in keep_layers:
            drop = [int(i) for i in forget_neurons.get(str(li), [])[:cut_forget_neurons]]
            order = torch.argsort(_neuron_norms(layers[li]), descending=True).tolist()
            kept = sorted([i for i in order if i not in set(drop)][:n_keep])
            cut[str(li)] = sorted(set(range(width)) - set(kept))
            _slice_neurons(layers[li], width, torch.tensor(kept))

    cfg = copy.deepcopy(teacher.config)
    _set(cfg, "layers", len(keep_layers))
    _set(cfg, "intermediate", n_keep)
    _slice_layer_lists(cfg, teacher.config, keep_layers)
    student = AutoModelForCausalLM.from_config(cfg)

    prefix = _layers_prefix(work) + "."
    new_index = {old: new for new, old in enumerate(keep_layers)}
    state = {}
    for key, value in work.state_dict().items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            if int(idx) not in new_index:
                continue
            key = f"{prefix}{new_index[int(idx)]}.{rest}"
        state[key] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(student)]
    if unexpected or missing:
        raise RuntimeError(f"student weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    info = StudentInfo("teacher_layers", count_parameters(student), count_parameters(teacher),
                       kept_layers=keep_layers, mlp_width=n_keep, cut_neurons=cut)
    return student, info


def random_neurons(teacher: nn.Module, sizes: dict[int, int], seed: int) -> dict[str, list[int]]:
    """A seeded random choice of ``sizes[layer]`` MLP neurons in each layer, in the map's ``forget_neurons``
    shape: the random cut of the same size the map's cut is compared with."""
    width = mlp_width(teacher)
    gen = torch.Generator().manual_seed(seed)
    return {str(li): torch.randperm(width, generator=gen)[:n].tolist() for li, n in sorted(sizes.items())}


def _tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that alias another parameter (tied embeddings) or are non-persistent buffers."""
    seen, tied = {}, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    for name, _ in model.named_buffers():
        tied.add(name)
    return tied | {"lm_head.weight"}


def noised_copy(model: nn.Module, alpha: float, beta: float, seed: int = 0) -> nn.Module:
    """(c) UNDO: every parameter theta <- (1 - alpha)*theta + alpha*beta*eps, eps ~ N(0, 1) (tied weights
    noised once), on a copy of ``model``."""
    return noise_(copy.deepcopy(model), alpha, beta, seed)


def noise_(model: nn.Module, alpha: float, beta: float, seed: int = 0) -> nn.Module:
    """UNDO's noise in place (``model`` is a student surgical just built, such as a cut): see ``noised_copy``."""
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            eps = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
            p.mul_(1 - alpha).add_(alpha * beta * eps)
    return model


def spine_layers(n_layers: int, every: int) -> list[int]:
    """Every ``every``-th layer, always including the last one."""
    keep = list(range(0, n_layers, every))
    if keep[-1] != n_layers - 1:
        keep.append(n_layers - 1)
    return keep


def map_layer(teacher_layer: int, n_teacher: int, n_student: int) -> int:
    """The student layer at the same relative depth as ``teacher_layer``."""
    return min(n_student - 1, max(0, round((teacher_layer + 1) * n_student / n_teacher) - 1))
