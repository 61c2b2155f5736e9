"""``DistillTrainer``: HF ``Trainer`` with the distill stage's loss.

Subclassing Trainer (rather than writing a loop) gives us ``accelerate launch`` (DDP/FSDP/DeepSpeed),
checkpointing and ``resume_from_checkpoint``, gradient accumulation, LR schedules, ``report_to`` logging
and progress bars. What we add: the teacher (online, or its top-k logits from the collator), the per-term
loss of ``compute_loss``, the fixed batch order of the gold/forbidden stream, and per-term logging.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import Trainer

from ..models import decoder_layers, layer_output
from .config import DistillConfig
from .losses import hidden_mse, kd_loss, kd_loss_topk, linear_warmup, masked_ce, reduce_masked
from .penalties import away_term, maxent_term, refusal_term, representation_terms

ALIGN_ATTR = "surgical_align"  # where the learned projections live on the student during training


@contextlib.contextmanager
def capture_layers(model: nn.Module, indices):
    """Record the hidden-state output of decoder layers ``indices`` during the forward passes in the block."""
    store: dict[int, torch.Tensor] = {}
    layers = decoder_layers(model)
    handles = []
    for i in sorted(set(indices)):
        def hook(_mod, _inp, out, i=i):
            store[i] = layer_output(out)
        handles.append(layers[i].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class DistillTrainer(Trainer):
    """Trainer whose loss is KD on gold rows (+ CE, + hidden alignment) and the Safety Divergence Penalty
    on forbidden rows. ``align_pairs`` / ``rmu_pairs`` are (teacher layer, student layer) pairs."""

    def __init__(self, *args, dcfg: DistillConfig, teacher: nn.Module | None = None,
                 align_pairs: list[tuple[int, int]] = (), rmu_pairs: list[tuple[int, int]] = (),
                 directions: dict[int, torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dcfg, self.teacher = dcfg, teacher
        self.align_pairs, self.rmu_pairs = list(align_pairs), list(rmu_pairs)
        self.directions = directions or {}
        if self.teacher is not None:
            self.teacher.to(self.args.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        # Our loss is already a per-micro-batch mean; let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_count = 0

    def _get_train_sampler(self, train_dataset=None):
        # The stream is already shuffled and laid out batch by batch (fixed gold/forbidden ratio per batch).
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        c = self.dcfg
        inputs = dict(inputs)
        forbidden = inputs.pop("forbidden").bool()
        inputs.pop("example_index", None)
        labels, kd_mask, replaced = inputs.pop("labels"), inputs.pop("kd_mask"), inputs.pop("replaced_mask")
        cached = [inputs.pop(k) for k in ("teacher_values", "teacher_indices", "teacher_other") if k in inputs]
        refusal = {k: inputs.pop(k) for k in ("refusal_input_ids", "refusal_attention_mask", "refusal_labels")
                   if k in inputs}
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        student = self.accelerator.unwrap_model(model)
        forms = set(c.penalty_forms)
        want_rmu = "representation" in forms and bool(self.rmu_pairs)
        s_layers = [s for _, s in self.align_pairs] + ([s for _, s in self.rmu_pairs] if want_rmu else [])
        t_layers = [t for t, _ in self.align_pairs] + ([t for t, _ in self.rmu_pairs] if want_rmu else [])

        with capture_layers(student, s_layers) as s_hidden:
            logits = model(input_ids=ids, attention_mask=attn).logits
        t_logits, t_hidden = None, {}
        need_teacher_logits = not cached and (c.kd_weight > 0 or "away" in forms)
        if self.teacher is not None and (need_teacher_logits or t_layers):
            with torch.no_grad(), capture_layers(self.teacher, t_layers) as t_hidden:
                t_logits = self.teacher(input_ids=ids, attention_mask=attn).logits

        s_logits, targets = logits[:, :-1], labels[:, 1:]
        gold, forb = (~forbidden).long()[:, None], forbidden.long()[:, None]
        target_tok = (targets != -100).long()
        kd_tok, rep_tok = kd_mask[:, 1:], replaced[:, 1:]
        terms: dict[str, tuple[float, torch.Tensor]] = {}

        per_token_kl = None
        if cached or t_logits is not None:
            kwargs = dict(kind=c.loss, beta=c.jsd_beta, temperature=c.temperature, reduction="none")
            if cached:
                values, indices, other = (t[:, :-1] for t in cached)
                per_token_kl = kd_loss_topk(s_logits, values, indices, other, **kwargs)
            else:
                per_token_kl = kd_loss(s_logits, t_logits[:, :-1], **kwargs)
        if c.kd_weight > 0 and per_token_kl is not None:
            terms["kd"] = (c.kd_weight, reduce_masked(per_token_kl, kd_tok * gold))
        if c.ce_weight > 0:
            terms["ce"] = (c.ce_weight, masked_ce(s_logits, targets, target_tok * gold))
        if bool((rep_tok * gold).any()):  # constitutional replacements: learn the replacement, not the teacher
            terms["replaced_ce"] = (max(c.kd_weight, c.ce_weight), masked_ce(s_logits, targets, rep_tok * gold))
        if c.hidden_weight > 0 and self.align_pairs and t_hidden:
            proj = getattr(student, ALIGN_ATTR)
            token_mask = attn * gold
            h = sum(hidden_mse(proj[str(t)](s_hidden[s]), t_hidden[t], token_mask) for t, s in self.align_pairs)
            terms["hidden"] = (c.hidden_weight, h / len(self.align_pairs))

        w = c.penalty_weight * linear_warmup(self.state.global_step, c.penalty_warmup_steps)
        if forms and bool(forbidden.any()):
            forb_tok = target_tok * forb
            if "away" in forms and per_token_kl is not None:
                fkl = per_token_kl if c.loss == "forward_kl" else self._forward_kl(s_logits, t_logits, cached)
                terms["away"] = (w, away_term(fkl, forb_tok, c.away_margin))
            if "maxent" in forms:
                terms["maxent"] = (w, maxent_term(s_logits, forb_tok))
            if "refusal" in forms and refusal:
                terms["refusal"] = (w, refusal_term(model, refusal["refusal_input_ids"],
                                                    refusal["refusal_attention_mask"], refusal["refusal_labels"]))
        if want_rmu:
            forget, retain = representation_terms(
                s_hidden, t_hidden, self.rmu_pairs, getattr(student, ALIGN_ATTR, None), self.directions,
                c.rmu_steering_coeff, forget_mask=attn * forb, retain_mask=attn * gold)
            if bool(forbidden.any()):
                terms["rmu_forget"] = (w, forget)
            if t_hidden and c.rmu_retain_weight > 0:
                terms["rmu_retain"] = (c.rmu_retain_weight, retain)

        loss = logits.sum() * 0.0  # keeps every student parameter in the graph (DDP) even if no term applies
        for name, (weight, value) in terms.items():
            loss = loss + weight * value
            self._term_sums[name] += float(value.detach())
        self._term_sums["penalty_weight"] += w
        self._term_count += 1
        return (loss, {"logits": logits}) if return_outputs else loss

    def _forward_kl(self, s_logits, t_logits, cached):
        kw = dict(kind="forward_kl", temperature=self.dcfg.temperature, reduction="none")
        if cached:
            values, indices, other = (t[:, :-1] for t in cached)
            return kd_loss_topk(s_logits, values, indices, other, **kw)
        return kd_loss(s_logits, t_logits[:, :-1], **kw)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._term_count and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"term_{name}"] = round(total / self._term_count, 6)
            self._term_sums.clear()
            self._term_count = 0
        super().log(logs, start_time)
