"""Student construction: (a) config, (b) teacher layers + neuron cut, (c) UNDO noise, on every family."""

import pytest
import torch

from surgical.distill.student import (
    TokenizerMismatchError,
    check_tokenizers,
    map_layer,
    noised_copy,
    spine_layers,
    student_from_config,
    student_from_teacher,
)
from surgical.models import count_parameters, decoder_layers, make_tiny_model, mlp_width


def _x(vocab):
    return torch.randint(4, vocab, (2, 9), generator=torch.Generator().manual_seed(0))


def test_teacher_layers_student_on_every_family(family, world_tokenizer):
    V = len(world_tokenizer)
    teacher = make_tiny_model(family, V, layers=4)
    x = _x(V)
    # keeping every layer reproduces the teacher exactly: the weight remapping is right
    same, _ = student_from_teacher(teacher, [0, 1, 2, 3])
    assert torch.allclose(same.eval()(x).logits, teacher(x).logits, atol=1e-5)
    student, info = student_from_teacher(teacher, [0, 3])
    assert len(decoder_layers(student)) == 2 and info.kept_layers == [0, 3]
    assert info.n_parameters == count_parameters(student) < count_parameters(teacher)
    # layer 3 of the teacher is layer 1 of the student, weight for weight
    t_params = dict(decoder_layers(teacher)[3].named_parameters())
    for name, p in decoder_layers(student)[1].named_parameters():
        assert torch.equal(p, t_params[name])
    assert student.eval()(x).logits.shape == (2, 9, V)
    student.generate(x[:, :3], max_new_tokens=3, do_sample=False)  # KV cache works on the renumbered layers


def test_neuron_cut_drops_the_maps_neurons(family, world_tokenizer):
    V = len(world_tokenizer)
    teacher = make_tiny_model(family, V, layers=2)
    width = mlp_width(teacher)
    forget = {"0": [5, 7, 9], "1": [1, 2]}
    student, info = student_from_teacher(teacher, [0, 1], forget, cut_forget_neurons=2, mlp_keep_fraction=0.5)
    assert mlp_width(student) == info.mlp_width == width // 2
    assert {5, 7} <= set(info.cut_neurons["0"]) and {1, 2} <= set(info.cut_neurons["1"])
    assert student.eval()(_x(V)).logits.shape == (2, 9, V)
    # cutting only neurons that never fire (zeroed weights) leaves the function unchanged
    t2 = make_tiny_model(family, V, layers=2)
    from surgical.models import mlp_down_proj

    with torch.no_grad():
        for layer in decoder_layers(t2):
            down = mlp_down_proj(layer)
            if isinstance(down, torch.nn.Linear):
                down.weight[:, : width // 2] = 0
            else:
                down.weight[: width // 2] = 0
    cut, _ = student_from_teacher(t2, [0, 1], mlp_keep_fraction=0.5)
    assert torch.allclose(cut.eval()(_x(V)).logits, t2(_x(V)).logits, atol=1e-5)


def test_noised_copy_on_every_family(family, world_tokenizer):
    teacher = make_tiny_model(family, len(world_tokenizer))
    assert all(torch.equal(a, b) for a, b in zip(noised_copy(teacher, 0.0, 1.0).parameters(), teacher.parameters(), strict=False))
    alpha, beta = 0.3, 0.1
    noised = noised_copy(teacher, alpha, beta, seed=1)
    (name, p0), (_, p1) = next(zip(teacher.named_parameters(), noised.named_parameters(), strict=False))
    eps = (p1 - (1 - alpha) * p0) / (alpha * beta)  # recover the noise: it must look standard normal
    assert abs(eps.mean().item()) < 0.2 and 0.8 < eps.std().item() < 1.2
    assert count_parameters(noised) == count_parameters(teacher)


def test_config_student_is_smaller_and_same_family(family, world_tokenizer):
    teacher = make_tiny_model(family, len(world_tokenizer), hidden=64, layers=4, intermediate=128)
    student, info = student_from_config(teacher, 2, 32, 4, 64)
    assert type(student) is type(teacher)
    assert info.size_ratio < 0.5
    assert student(_x(len(world_tokenizer))).logits.shape[-1] == len(world_tokenizer)


def test_tokenizer_mismatch_is_refused(world_tokenizer):
    from surgical.world.tokenizer import train_world_tokenizer

    check_tokenizers(world_tokenizer, world_tokenizer)
    other = train_world_tokenizer(["only a few letters"])
    other.add_tokens(["<extra>"])
    with pytest.raises(TokenizerMismatchError, match="Cross-tokenizer distillation is out of scope"):
        check_tokenizers(world_tokenizer, other)


def test_layer_helpers():
    assert spine_layers(4, 2) == [0, 2, 3]
    assert spine_layers(6, 3) == [0, 3, 5]
    assert map_layer(3, 4, 2) == 1 and map_layer(1, 4, 2) == 0 and map_layer(0, 4, 1) == 0


def test_oracle_cut_from_the_teacher_gets_the_architecture_but_fresh_weights(world_tokenizer):
    """The oracle is the no-skill level: with student_init teacher_layers it keeps the cut's shape but none of the
    teacher's weights (which hold the forget skill); filter-only, from the same config, starts from the teacher."""
    from surgical.distill.config import DistillConfig
    from surgical.distill.run import _build_student

    V = len(world_tokenizer)
    teacher = make_tiny_model("llama", V, layers=4)
    t_params = dict(decoder_layers(teacher)[3].named_parameters())
    students = {}
    for preset in ("filter-only", "oracle"):
        cfg = DistillConfig(preset=preset, student_init="teacher_layers", keep_layers=[0, 3], seed=5)
        students[preset], info = _build_student(cfg, teacher, world_tokenizer, {})
        assert len(decoder_layers(students[preset])) == 2
    same = [torch.equal(p, t_params[n]) for n, p in decoder_layers(students["filter-only"])[1].named_parameters()]
    fresh = [torch.equal(p, t_params[n]) for n, p in decoder_layers(students["oracle"])[1].named_parameters()
             if p.dim() > 1]
    assert all(same) and not any(fresh)
    assert count_parameters(students["oracle"]) == count_parameters(students["filter-only"])
    again, _ = _build_student(DistillConfig(preset="oracle", student_init="teacher_layers", keep_layers=[0, 3],
                                            seed=5), teacher, world_tokenizer, {})
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), students["oracle"].parameters(), strict=True))
