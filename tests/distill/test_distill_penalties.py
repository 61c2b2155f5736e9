"""Each Safety Divergence Penalty form moves a toy student in the intended direction."""

import pytest
import torch

from surgical.demo import distill_records as world_records
from surgical.distill.data import DistillCollator, encode_record
from surgical.distill.losses import kd_loss, maxent_penalty, rmu_forget_loss
from surgical.distill.penalties import (
    away_term,
    maxent_term,
    random_directions,
    refusal_term,
    representation_terms,
)
from surgical.distill.student import noised_copy
from surgical.distill.trainer import capture_layers
from surgical.models import make_tiny_model

REFUSAL = " I cannot help with that."


@pytest.fixture(scope="module")
def toy(world):
    tok = world.tokenizer
    teacher = make_tiny_model("llama", len(tok), seed=3)
    recs = world_records(world, ("mul",))[:16]
    feats = [{**encode_record(tok, r, refusal_text=REFUSAL), "forbidden": 1, "example_index": i}
             for i, r in enumerate(recs)]
    batch = DistillCollator(tok.pad_token_id)(feats)
    return teacher, batch


def _train(student, loss_fn, steps=15, lr=1e-2):
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(student).backward()
        opt.step()
    student.eval()


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]


def _mask(batch):
    return (batch["labels"][:, 1:] != -100).long()


def test_away_pushes_the_student_off_the_teacher(toy):
    teacher, batch = toy
    student = noised_copy(teacher, 0.0, 1.0)  # starts exactly on the teacher: KL = 0 < margin
    with torch.no_grad():
        t_logits = _logits(teacher, batch)

    def kl(model):
        return kd_loss(_logits(model, batch), t_logits, _mask(batch), reduction="none")

    assert away_term(kl(student), _mask(batch), 1.0).item() == pytest.approx(1.0, abs=1e-4)
    _train(student, lambda m: away_term(kl(m), _mask(batch), 1.0))
    with torch.no_grad():
        after = kd_loss(_logits(student, batch), t_logits, _mask(batch)).item()
    assert after > 0.3  # moved away, toward the margin


def test_maxent_raises_entropy_on_forbidden_tokens(toy):
    teacher, batch = toy
    student = noised_copy(teacher, 0.0, 1.0)
    with torch.no_grad():
        before = maxent_penalty(_logits(student, batch), _mask(batch)).item()
    _train(student, lambda m: maxent_term(_logits(m, batch), _mask(batch)))
    with torch.no_grad():
        after = maxent_penalty(_logits(student, batch), _mask(batch)).item()
    assert after < 0.5 * before  # closer to uniform (higher entropy)


def test_refusal_makes_the_refusal_likelier(toy):
    teacher, batch = toy
    student = noised_copy(teacher, 0.0, 1.0)
    args = (batch["refusal_input_ids"], batch["refusal_attention_mask"], batch["refusal_labels"])
    with torch.no_grad():
        before = refusal_term(student, *args).item()
    _train(student, lambda m: refusal_term(m, *args))
    with torch.no_grad():
        after = refusal_term(student, *args).item()
    assert after < 0.5 * before


def test_representation_steers_hidden_states_to_the_random_direction(toy):
    teacher, batch = toy
    student = noised_copy(teacher, 0.0, 1.0)
    directions = random_directions([1], 32, seed=0)
    attn = batch["attention_mask"]

    def forget(model):
        with capture_layers(model, [1]) as h:
            model(input_ids=batch["input_ids"], attention_mask=attn)
        f, _ = representation_terms(h, {}, [(1, 1)], None, directions, 4.0, attn, attn)
        return f

    with torch.no_grad():
        before = forget(student).item()
    _train(student, forget)
    with torch.no_grad():
        after = forget(student).item()
        with capture_layers(student, [1]) as h:
            student(input_ids=batch["input_ids"], attention_mask=attn)
        cos = torch.nn.functional.cosine_similarity(h[1][attn.bool()], directions[1][None], dim=-1).mean()
    assert after < 0.5 * before
    assert cos.item() > 0.8
    assert rmu_forget_loss(h[1], directions[1], 4.0, attn).item() == pytest.approx(after, rel=1e-4)


def test_random_directions_are_fixed_unit_vectors():
    a, b = random_directions([0, 2], 16, seed=5), random_directions([0, 2], 16, seed=5)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[2])
    assert a[2].norm().item() == pytest.approx(1.0)
