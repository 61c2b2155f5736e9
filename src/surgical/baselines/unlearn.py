"""Unlearn-only baselines: the teacher itself unlearned in place, with three methods from the literature.

- **GradDiff** (gradient difference; Liu et al. 2022 "Continual learning and private unlearning", the
  TOFU baseline of Maini et al. 2024): gradient *ascent* on the forget CE plus descent on the retain CE,
  ``loss = -CE_forget + alpha * CE_retain``.
- **MaxEnt** (the "uniform target" objective, e.g. Yuan et al. 2024, "A closer look at machine
  unlearning for LLMs"): push the next-token distribution on forget answer tokens toward uniform,
  ``loss = KL(U || p)_forget + alpha * CE_retain``.
- **RMU** (Representation Misdirection for Unlearning; Li et al. 2024, "The WMDP Benchmark", sec. 5 and
  their reference code): at one layer l, MSE between the hidden state on forget tokens and ``c * u`` (u a
  fixed random unit vector, c the steering coefficient), plus ``alpha *`` MSE between the hidden state on
  retain tokens and the frozen original model's; only the MLP down-projection weights of layers l-2..l are
  updated.

All losses are on completion tokens (the worked steps and answer; ``encode_example`` masks the prompt).
Training runs in an HF ``Trainer`` subclass per method (own ``compute_loss`` on paired forget/retain
batches); a wall-clock budget stops it early. ``unlearn(...)`` writes an HF model dir and unlearn.json.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback

from ..data import PadCollator, encode_example
from ..io import provenance, write_json
from ..models import (
    count_parameters,
    decoder_layers,
    enable_kv_cache,
    hidden_size,
    layer_output,
    load_model,
    load_tokenizer,
    mlp_down_proj,
)
from ..outputs import check_replaceable, fresh_tmp, replace_dir
from .config import UnlearnConfig

METHODS = ("graddiff", "maxent", "rmu")

# WMDP reference (Li et al. 2024, zephyr-7b-beta, 32 layers): layer 7, layers 5..7 updated, c = 6.5,
# alpha = 1200, lr = 5e-5, batch 4, 150 batches (their run_rmu.py defaults / paper appendix B).
WMDP_LAYER, WMDP_DEPTH, WMDP_STEERING, WMDP_ALPHA = 7, 32, 6.5, 1200.0


def default_lr(method: str) -> float:
    return {"graddiff": 1e-4, "maxent": 1e-4, "rmu": 1e-3}[method]


def default_alpha(method: str) -> float:
    return {"graddiff": 1.0, "maxent": 1.0, "rmu": WMDP_ALPHA}[method]


def scaled_rmu_layer(depth: int) -> int:
    """WMDP's layer 7 of 32 scaled to ``depth``, kept >= 2 (when possible) so that l-2..l are real layers
    and below the last layer so something sits above the misdirected representation."""
    layer = round(WMDP_LAYER / WMDP_DEPTH * depth)
    layer = max(layer, min(2, depth - 1))
    return min(layer, max(depth - 2, 0))


# ---------------------------------------------------------------- losses (pure functions)


def masked_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not -100 (labels unshifted, HF style)."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100)


def kl_uniform_to_model(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(U || p) = -log V - (1/V) sum_v log p_v: 0 exactly when the model's
    next-token distribution is uniform over the vocabulary."""
    shift_logits, mask = logits[:, :-1].float(), (labels[:, 1:] != -100)
    logp = F.log_softmax(shift_logits, dim=-1)
    vocab = logp.shape[-1]
    per_token = -math.log(vocab) - logp.mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden units of masked positions (``F.mse_loss`` restricted to the mask)."""
    target = target.expand_as(hidden)
    per_pos = ((hidden.float() - target.float()) ** 2).mean(-1)
    return (per_pos * mask).sum() / mask.sum().clamp_min(1)


def graddiff_loss(forget_ce: torch.Tensor, retain_ce: torch.Tensor, alpha: float) -> torch.Tensor:
    return -forget_ce + alpha * retain_ce


def random_unit_vector(dim: int, seed: int) -> torch.Tensor:
    """WMDP's control vector direction: uniform [0, 1) entries, normalised to unit length."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(dim, generator=g)
    return u / u.norm()


# ---------------------------------------------------------------- data


def suite_unlearn_records(suite, domains) -> list[dict]:
    """The ``attack`` records ({prompt, completion}) of suite ``domains`` as unlearning records (a suite's
    training-side data: never its eval items). ``suite``: a ``surgical.suite.Suite`` or a manifest path."""
    from ..suite import Suite, SuiteError, load_suite

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    out = []
    for d in domains:
        if d not in suite.domains:
            raise SuiteError(f"domain {d!r} is not in suite {suite.name!r}")
        if not suite[d].attack:
            raise SuiteError(f"domain {d!r} of suite {suite.name!r} has no `attack` records to unlearn on")
        out += [{"prompt": r["prompt"], "completion": r["completion"], "domain": d} for r in suite[d].attack]
    return out


def _encode(tokenizer, records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        if "prompt" not in r or "completion" not in r:
            raise ValueError(f"unlearning record without prompt/completion: keys {sorted(r)[:6]}")
        out.append(encode_example(tokenizer, r["prompt"], r["completion"]))
    return out


class PairedDataset(torch.utils.data.Dataset):
    """Step i pairs forget example i (cycled through shuffled epochs) with a random retain example."""

    def __init__(self, forget: list[dict], retain: list[dict], n: int, seed: int):
        rng = random.Random(seed)
        order: list[int] = []
        while len(order) < n:
            perm = list(range(len(forget)))
            rng.shuffle(perm)
            order += perm
        self.pairs = [(forget[order[i]], retain[rng.randrange(len(retain))]) for i in range(n)]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return {"forget": self.pairs[i][0], "retain": self.pairs[i][1]}


class PairCollator:
    """Pads the forget and retain halves of a batch separately (PadCollator each)."""

    def __init__(self, pad_id: int):
        self.pad = PadCollator(pad_id)

    def __call__(self, features):
        f = self.pad([x["forget"] for x in features])
        r = self.pad([x["retain"] for x in features])
        return {**{f"forget_{k}": v for k, v in f.items()}, **{f"retain_{k}": v for k, v in r.items()}}


def _half(inputs: dict, side: str) -> dict:
    return {k[len(side) + 1:]: v for k, v in inputs.items() if k.startswith(side + "_")}


# ---------------------------------------------------------------- trainers


class _UnlearnTrainer(Trainer):
    """Keeps the last step's loss parts for the curve in unlearn.json."""

    def __init__(self, *args, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.parts: list[dict] = []

    def _log_parts(self, **parts):
        self.parts.append({k: round(float(v.detach()), 5) for k, v in parts.items()})


class GradDiffTrainer(_UnlearnTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f, r = _half(inputs, "forget"), _half(inputs, "retain")
        forget_ce = masked_token_ce(model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits,
                                    f["labels"])
        retain_ce = masked_token_ce(model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits,
                                    r["labels"])
        self._log_parts(forget_ce=forget_ce, retain_ce=retain_ce)
        return graddiff_loss(forget_ce, retain_ce, self.alpha)


class MaxEntTrainer(_UnlearnTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f, r = _half(inputs, "forget"), _half(inputs, "retain")
        kl = kl_uniform_to_model(model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits,
                                 f["labels"])
        retain_ce = masked_token_ce(model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits,
                                    r["labels"])
        self._log_parts(kl_uniform=kl, retain_ce=retain_ce)
        return kl + self.alpha * retain_ce


class _LayerCapture:
    """Forward hook that keeps decoder layer ``index``'s output hidden state (tensor or tuple outputs)."""

    def __init__(self, model, index: int):
        self.hidden = None
        self.handle = decoder_layers(model)[index].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.hidden = layer_output(output)

    def remove(self):
        self.handle.remove()


class RMUTrainer(_UnlearnTrainer):
    """Li et al. 2024 (WMDP), Algorithm 1: forget MSE to c*u plus alpha * retain MSE to the frozen model,
    both at layer l (the hidden state output by decoder layer l)."""

    def __init__(self, *args, frozen, layer: int, control: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen, self.control = frozen, control
        self.capture = _LayerCapture(self.model, layer)
        self.frozen_capture = _LayerCapture(frozen, layer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        f, r = _half(inputs, "forget"), _half(inputs, "retain")
        model(input_ids=f["input_ids"], attention_mask=f["attention_mask"])
        forget_mse = masked_mse(self.capture.hidden, self.control, f["labels"] != -100)
        model(input_ids=r["input_ids"], attention_mask=r["attention_mask"])
        updated = self.capture.hidden
        with torch.no_grad():
            self.frozen(input_ids=r["input_ids"], attention_mask=r["attention_mask"])
        retain_mse = masked_mse(updated, self.frozen_capture.hidden, r["labels"] != -100)
        self._log_parts(forget_mse=forget_mse, retain_mse=retain_mse)
        return forget_mse + self.alpha * retain_mse


class _WallBudget(TrainerCallback):
    def __init__(self, max_wall_s: float):
        self.max_wall_s, self.t0 = max_wall_s, None

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if time.perf_counter() - self.t0 > self.max_wall_s:
            control.should_training_stop = True


# ---------------------------------------------------------------- evaluation helpers


@torch.no_grad()
def mean_completion_ce(model, encoded: list[dict], pad_id: int, batch_size: int = 32) -> float:
    """Mean per-token CE on completion tokens over ``encoded`` examples (token-weighted)."""
    model.eval()
    collate = PadCollator(pad_id)
    total, count = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        b = collate(encoded[i:i + batch_size])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        n = int((b["labels"][:, 1:] != -100).sum())
        total += float(masked_token_ce(logits, b["labels"])) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def mean_hidden_norm(model, encoded: list[dict], layer: int, pad_id: int) -> float:
    """Mean L2 norm of layer ``layer``'s output hidden state over completion tokens."""
    cap = _LayerCapture(model, layer)
    try:
        b = PadCollator(pad_id)(encoded)
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        mask = b["labels"] != -100
        return float(cap.hidden.float().norm(dim=-1)[mask].mean())
    finally:
        cap.remove()


def rmu_parameters(model, layer: int, span: int) -> list[tuple[str, nn.Parameter]]:
    """The MLP down-projection weights of layers ``layer-span+1 .. layer`` (WMDP: l-2..l)."""
    layers = decoder_layers(model)
    wanted = {id(mlp_down_proj(layers[i]).weight) for i in range(max(0, layer - span + 1), layer + 1)}
    return [(n, p) for n, p in model.named_parameters() if id(p) in wanted]


# ---------------------------------------------------------------- the entry point


def unlearn(model_dir: str | Path, method: Literal["graddiff", "maxent", "rmu"], forget_records: list[dict],
            retain_records: list[dict], cfg: UnlearnConfig | None = None, out_dir: str | Path = "runs/unlearn",
            quiet: bool = True) -> dict:
    """Unlearn ``forget_records`` from the model in ``model_dir`` in place (keeping ``retain_records``) with
    ``method``; writes ``out_dir`` (HF model dir + tokenizer + unlearn.json) and returns unlearn.json."""
    from transformers import TrainingArguments, set_seed

    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; expected one of {', '.join(METHODS)}")
    if not forget_records or not retain_records:
        raise ValueError("unlearning needs non-empty forget and retain records")
    cfg = cfg or UnlearnConfig()
    check_replaceable(out_dir)  # before any work: never over a directory surgical did not make
    from ..threads import set_threads, share_callback
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).float()
    pad_id = tokenizer.pad_token_id
    forget, retain = _encode(tokenizer, forget_records), _encode(tokenizer, retain_records)
    eval_rng = random.Random(cfg.seed + 1)
    forget_eval = eval_rng.sample(forget, min(cfg.eval_items, len(forget)))
    retain_eval = eval_rng.sample(retain, min(cfg.eval_items, len(retain)))
    before = {"forget_ce": mean_completion_ce(model, forget_eval, pad_id),
              "retain_ce": mean_completion_ce(model, retain_eval, pad_id)}

    lr, alpha = cfg.lr or default_lr(method), cfg.alpha if cfg.alpha is not None else default_alpha(method)
    extra: dict = {}
    kwargs: dict = {}
    trainer_cls = {"graddiff": GradDiffTrainer, "maxent": MaxEntTrainer, "rmu": RMUTrainer}[method]
    if method == "rmu":
        depth = len(decoder_layers(model))
        layer = cfg.rmu_layer if cfg.rmu_layer is not None else scaled_rmu_layer(depth)
        if layer >= depth:
            raise ValueError(f"rmu_layer {layer} but the model has {depth} layers")
        dim = hidden_size(model)
        mean_hidden = mean_hidden_norm(model, forget_eval, layer, pad_id)
        coeff = cfg.steering_coeff or WMDP_STEERING * mean_hidden / math.sqrt(dim)
        control = coeff * random_unit_vector(dim, cfg.seed)
        trainable = rmu_parameters(model, layer, cfg.rmu_update_span)
        keep = {id(p) for _, p in trainable}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        kwargs = {"frozen": frozen, "layer": layer, "control": control}
        extra = {"layer": layer, "updated_parameters": [n for n, _ in trainable], "steering_coeff": round(coeff, 4),
                 "mean_forget_hidden_norm": round(mean_hidden, 4)}

    work = out_dir.parent / f".{out_dir.name}.trainer"
    args = TrainingArguments(
        output_dir=str(work), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_strategy="no", save_strategy="no", report_to=[], seed=cfg.seed,
        data_seed=cfg.seed, use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=quiet, max_grad_norm=1.0,
    )
    dataset = PairedDataset(forget, retain, cfg.max_steps * cfg.batch_size, cfg.seed)
    model.train()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, data_collator=PairCollator(pad_id),
                          callbacks=[_WallBudget(cfg.max_wall_s), share_callback()], alpha=alpha, **kwargs)
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - t0
    if method == "rmu":
        trainer.capture.remove()
        trainer.frozen_capture.remove()
    shutil.rmtree(work, ignore_errors=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    after = {"forget_ce": mean_completion_ce(model, forget_eval, pad_id),
             "retain_ce": mean_completion_ce(model, retain_eval, pad_id)}

    steps = trainer.state.global_step
    forget_tokens, retain_tokens = _tokens_seen(dataset, steps, cfg.batch_size)
    tokens = forget_tokens + retain_tokens
    n_params = count_parameters(model)
    # 6 N T per trained (forward + backward) token (Kaplan et al. 2020); RMU also runs the frozen model
    # forward on the retain tokens (2 N T).
    flops = 6 * n_params * tokens + (2 * n_params * retain_tokens if method == "rmu" else 0)
    tmp = fresh_tmp(out_dir)
    enable_kv_cache(model).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {
        "kind": "unlearn", "method": method, "lr": lr, "alpha": alpha, "steps": steps,
        "stopped_by_wall_budget": steps < cfg.max_steps, "wall_s": round(wall_s, 2), "train_tokens": tokens,
        "train_flops": int(flops), "n_parameters": n_params, "before": before, "after": after,
        "loss_parts": trainer.parts[:: max(1, len(trainer.parts) // 50)], **extra,
        "provenance": provenance(cfg, inputs={"model": model_dir}, method=method,
                                 n_forget_records=len(forget_records), n_retain_records=len(retain_records)),
    }
    write_json(tmp / "unlearn.json", record)
    replace_dir(tmp, out_dir, f"unlearned model ({method})")
    return record


def _tokens_seen(dataset: PairedDataset, steps: int, batch_size: int) -> tuple[int, int]:
    """(forget, retain) tokens the optimizer saw in ``steps`` steps (unpadded)."""
    pairs = dataset.pairs[: min(len(dataset), steps * batch_size)]
    return sum(len(f["input_ids"]) for f, _ in pairs), sum(len(r["input_ids"]) for _, r in pairs)
