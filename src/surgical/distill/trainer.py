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
from .losses import (
    hidden_mse,
    kd_loss,
    kd_loss_topk,
    linear_warmup,
    masked_ce,
    maxent_penalty,
    reduce_masked,
    rmu_forget_loss,
)
from .penalties import ACTIVE_TOL, active_fraction, away_term, refusal_term, representation_terms
from .sharding import enable_cpu_fsdp, prepare_teacher

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
        self.teacher_placement = None
        if self.teacher is not None:  # the student's plan applied to the teacher (sharding.py)
            self.teacher, self.teacher_placement = prepare_teacher(self.teacher, self.accelerator)
        # Our loss is already a per-micro-batch mean; let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_count = 0
        # penalty activity: per logging window (logged as active_<term>, gradratio_<term>) and over the run
        self._window: dict[str, list[float]] = defaultdict(list)
        self._run: dict[str, list[float]] = defaultdict(list)
        self._grads_measured_at: int | None = None  # the step whose gradient norms were measured last
        self.shard_report: dict | None = None

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        if enable_cpu_fsdp(self.accelerator):  # `accelerate launch --use_fsdp --cpu`: FSDP2 over gloo, not DDP
            self.is_fsdp_enabled = True

    @property
    def sharded(self) -> bool:
        """The student's parameters are split across ranks (FSDP, ZeRO-3): every forward is a collective."""
        ds = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return self.is_fsdp_enabled or (ds is not None and ds.zero_stage == 3)

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
        if self.shard_report is None:
            self.shard_report = self._gather_shard_report(model)
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
            with torch.no_grad(), capture_layers(getattr(self.teacher, "module", self.teacher), t_layers) as t_hidden:
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
        active: dict[str, float] = {}  # the fraction of its tokens on which each penalty term has a gradient
        if forms and bool(forbidden.any()):
            forb_tok = target_tok * forb
            if "away" in forms and per_token_kl is not None:
                fkl = per_token_kl if c.loss == "forward_kl" else self._forward_kl(s_logits, t_logits, cached)
                terms["away"] = (w, away_term(fkl, forb_tok, c.away_margin))
                active["away"] = active_fraction(c.away_margin - fkl, forb_tok, 0.0)  # the hinge is on
            if "maxent" in forms:
                per = maxent_penalty(s_logits, None, reduction="none")
                terms["maxent"] = (w, reduce_masked(per, forb_tok))
                active["maxent"] = active_fraction(per, forb_tok)
            if "refusal" in forms and refusal:
                value, frac = refusal_term(model, refusal["refusal_input_ids"], refusal["refusal_attention_mask"],
                                           refusal["refusal_labels"], activity_tol=ACTIVE_TOL)
                terms["refusal"], active["refusal"] = (w, value), frac
        if want_rmu:
            forget, retain = representation_terms(
                s_hidden, t_hidden, self.rmu_pairs, getattr(student, ALIGN_ATTR, None), self.directions,
                c.rmu_steering_coeff, forget_mask=attn * forb, retain_mask=attn * gold)
            if bool(forbidden.any()):
                terms["rmu_forget"] = (w, forget)
                per = sum(rmu_forget_loss(s_hidden[s].detach(), self.directions[s].to(s_hidden[s].device),
                                          c.rmu_steering_coeff, None, reduction="none")
                          for _, s in self.rmu_pairs) / len(self.rmu_pairs)
                active["rmu_forget"] = active_fraction(per, attn * forb)
            if t_hidden and c.rmu_retain_weight > 0:
                terms["rmu_retain"] = (c.rmu_retain_weight, retain)
        for name, frac in active.items():
            self._window[f"active_{name}"].append(frac)
            self._run[f"active_{name}"].append(frac)
        if self._measure_grads_now(model):
            for name, ratio in self._grad_ratios(model, terms).items():
                self._window[f"gradratio_{name}"].append(ratio)
                self._run[f"gradratio_{name}"].append(ratio)

        loss = logits.sum() * 0.0  # keeps every student parameter in the graph (DDP) even if no term applies
        for name, (weight, value) in terms.items():
            loss = loss + weight * value
            self._term_sums[name] += float(value.detach())
        self._term_sums["penalty_weight"] += w
        self._term_count += 1
        return (loss, {"logits": logits}) if return_outputs else loss

    def _measure_grads_now(self, model) -> bool:
        """Whether this micro-batch measures the terms' gradient norms: on the last of every ``term_grad_every``
        optimizer steps (steps 99, 199, ... at 100: not step 0, where the penalty warm-up weighs every penalty 0;
        the first micro-batch of that step), in a single-process run (a per-term backward through a DDP/FSDP
        wrapper would start collectives the other ranks do not join)."""
        every = self.dcfg.term_grad_every
        if not every or not model.training or self.args.world_size > 1 or (self.state.global_step + 1) % every:
            return False
        if self._grads_measured_at == self.state.global_step:
            return False
        self._grads_measured_at = self.state.global_step
        return True

    def _grad_ratios(self, model, terms: dict) -> dict[str, float]:
        """||grad of weight x term|| / ||grad of the KD term|| over the student's trainable parameters, for every
        term but KD (absolute norms when there is no KD term). An extra backward per term, on a retained graph."""
        params = [p for p in model.parameters() if p.requires_grad]
        norms = {}
        for name, (weight, value) in terms.items():
            if not torch.is_tensor(value) or not value.requires_grad:
                norms[name] = 0.0
                continue
            grads = torch.autograd.grad(weight * value, params, retain_graph=True, allow_unused=True)
            norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)
                                           or torch.zeros(())))
        kd = norms.get("kd")
        return {name: (n / kd if kd else n) for name, n in norms.items() if name != "kd"}

    def penalty_activity(self) -> dict:
        """Over the whole run, per penalty term: the mean fraction of its tokens on which it was active (had a
        gradient: the away hinge below its margin, maxent / refusal / RMU above ACTIVE_TOL per token), the mean
        ratio of its gradient norm to KD's (``term_grad_every`` samples; absolute norm without KD), and how many
        batches each figure is the mean of."""
        out: dict[str, dict] = {}
        for key, vals in self._run.items():
            kind, name = key.split("_", 1)
            rec = out.setdefault(name, {})
            field = "active_fraction" if kind == "active" else "grad_norm_ratio_vs_kd"
            rec[field] = round(sum(vals) / len(vals), 6)
            rec[f"{field}_batches"] = len(vals)
        return out

    def _gather_shard_report(self, model) -> dict:
        """Parameter elements each rank holds, of the student (as prepared) and of the teacher: the evidence that
        both are sharded (each rank about total / world size) or replicated. A collective in a distributed run, made
        once, on the first step (when the student has been prepared)."""
        import torch.distributed as dist

        from .sharding import local_numel

        mine = {"student": local_numel(model)}
        if self.teacher is not None:
            mine["teacher"] = local_numel(self.teacher)
        ranks = [mine]
        if dist.is_available() and dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        return {name: {"total": ranks[0][name][1], "per_rank": [r[name][0] for r in ranks]} for name in mine}

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
            for name, vals in self._window.items():
                logs[name] = round(sum(vals) / len(vals), 6)
            self._term_sums.clear()
            self._window.clear()
            self._term_count = 0
        super().log(logs, start_time)
