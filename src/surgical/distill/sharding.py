"""The teacher under FSDP and DeepSpeed, and FSDP on CPU (gloo).

``Trainer`` shards the student through accelerate, but it never sees the teacher: left alone, every rank holds a full
teacher (TRL issue 2580: GKDTrainer, GOLD and its Distillation trainer have this bug). ``prepare_teacher`` applies
the student's plan to the teacher, inference only (no optimizer state, no gradients):

- FSDP2: ``fully_shard`` on each decoder layer, then on the root, on the accelerator's mesh, with the plugin's
  ``reshard_after_forward``, offload and mixed-precision policies. A forward all-gathers one layer at a time, so a rank
  never holds more than its shard plus one layer. (TRL's ``prepare_fsdp`` shards the root only, which gathers the
  whole teacher for every forward.)
- FSDP1: ``FullyShardedDataParallel`` with the plugin's auto-wrap policy (as TRL's ``prepare_fsdp``).
- DeepSpeed: ZeRO-3 keeps the teacher sharded as an inference engine (``deepspeed.initialize`` without optimizer or
  scheduler, as TRL does for DPO's reference model); with ZeRO 0-2 the teacher is replicated (stage 0).
- anything else: the teacher is moved to the device.

``enable_cpu_fsdp`` exists because accelerate 1.x turns FSDP on only for accelerator devices: ``accelerate launch
--use_fsdp --cpu`` silently runs DDP. torch's FSDP2 runs on CPU with gloo, and that is how the sharded path is tested
on a machine without a GPU (tests/distill/test_fsdp.py). It is used only when the launcher asked for FSDP
(``ACCELERATE_USE_FSDP=true``), the device is the CPU and accelerate fell back to multi-CPU DDP.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ..models import decoder_layers


def fsdp_requested() -> bool:
    """The launcher asked for FSDP (``accelerate launch --use_fsdp`` or a config with ``distributed_type: FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_cpu_fsdp(accelerator) -> bool:
    """Switch a multi-CPU accelerator that fell back to DDP to FSDP2 (see the module docstring). Returns whether it
    did. FSDP1 needs an accelerator device; on CPU only FSDP2 is supported."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_requested() or state.distributed_type != DistributedType.MULTI_CPU or state.device.type != "cpu":
        return False
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables the launcher set
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU needs FSDP2: launch with --fsdp_version 2 (configs/accelerate/fsdp2-cpu.yaml)")
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return True


def _fsdp2_mesh(accelerator):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None and getattr(accelerator, "parallelism_config", None) is not None:
        return mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    return init_device_mesh(accelerator.device.type, (accelerator.num_processes,))


def prepare_teacher(teacher: nn.Module, accelerator) -> tuple[nn.Module, str]:
    """The teacher placed for this run's distributed plan (see the module docstring), frozen and in eval mode, and
    the name of the placement (``fsdp2``, ``fsdp1``, ``deepspeed-zero3``, ``deepspeed-replicated`` or
    ``replicated``)."""
    from accelerate.utils import DistributedType

    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    state = accelerator.state
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        if plugin.fsdp_version == 2:
            from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

            if not isinstance(teacher, FSDPModule):
                kw = dict(mesh=_fsdp2_mesh(accelerator), reshard_after_forward=bool(plugin.reshard_after_forward),
                          mp_policy=plugin.mixed_precision_policy or MixedPrecisionPolicy())
                if plugin.cpu_offload:
                    kw["offload_policy"] = plugin.cpu_offload
                for layer in decoder_layers(teacher):
                    fully_shard(layer, **kw)
                fully_shard(teacher, **kw)
            return teacher.eval(), "fsdp2"
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        plugin.set_auto_wrap_policy(teacher)
        teacher = FSDP(teacher, sharding_strategy=plugin.sharding_strategy, cpu_offload=plugin.cpu_offload,
                       auto_wrap_policy=plugin.auto_wrap_policy, mixed_precision=plugin.mixed_precision_policy,
                       sync_module_states=plugin.sync_module_states, use_orig_params=True,
                       device_id=accelerator.device)
        return teacher.eval(), "fsdp1"
    if kind == DistributedType.DEEPSPEED:
        import deepspeed

        ds = copy.deepcopy(state.deepspeed_plugin.deepspeed_config)
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        # inference only: no optimizer, scheduler or optimizer offload (DeepSpeed would build them otherwise)
        for key in ("optimizer", "scheduler"):
            ds.pop(key, None)
        ds.setdefault("zero_optimization", {}).pop("offload_optimizer", None)
        if stage != 3:
            ds["zero_optimization"]["stage"] = 0
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            if ds.get(key) == "auto":
                ds.pop(key)
        ds.setdefault("train_micro_batch_size_per_gpu", 1)
        engine, *_ = deepspeed.initialize(model=teacher, config=ds)
        engine.eval()
        return engine, "deepspeed-zero3" if stage == 3 else "deepspeed-replicated"
    return teacher.to(accelerator.device), "replicated"


def local_numel(module: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole module) over the parameters of ``module``: DTensor shards
    (FSDP2) and ZeRO-3 partitions count their local part (FSDP1 reports local elements for both)."""
    local = total = 0
    for p in module.parameters():
        if hasattr(p, "to_local"):  # DTensor (FSDP2)
            local += p.to_local().numel()
            total += p.numel()
        elif hasattr(p, "ds_numel"):  # ZeRO-3 partitioned parameter
            local += p.ds_tensor.numel()
            total += p.ds_numel
        else:  # a plain parameter, or an FSDP1 flat shard (use_orig_params views of the local shard)
            local += p.numel()
            total += p.numel()
    return local, total


def full_state_dict(model: nn.Module, accelerator) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on the main process (None on the others); a collective under FSDP and ZeRO-3, so
    every rank must call it."""
    from accelerate.utils import DistributedType

    if accelerator.state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        sd = accelerator.get_state_dict(model)
        return sd if accelerator.is_main_process else None
    return accelerator.unwrap_model(model).state_dict() if accelerator.is_main_process else None
