"""Run by test_fsdp.py under torchrun (2 CPU ranks, gloo): the teacher as a DeepSpeed ZeRO-3 inference engine, built
by ``prepare_teacher`` from the plugin of configs/accelerate/zero3-8gpu.yaml. Prints one JSON line per rank."""

import json
import sys
import types

import deepspeed
import torch
import torch.distributed as dist
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType

from surgical.distill.sharding import local_numel, prepare_teacher
from surgical.models import make_tiny_model


def main(config_path: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    plugin = DeepSpeedPlugin(**load_config_from_file(config_path).deepspeed_config)
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_plugin=plugin),
        device=torch.device("cpu"))
    teacher = make_tiny_model("llama", 100, layers=2, seed=2)
    reference = make_tiny_model("llama", 100, layers=2, seed=2)
    engine, kind = prepare_teacher(teacher, accelerator)
    local, total = local_numel(engine.module)
    x = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (engine(input_ids=x).logits - reference(input_ids=x).logits).abs().max().item()
    print(json.dumps({"rank": dist.get_rank(), "kind": kind, "local": local, "total": total, "max_logit_diff": diff,
                      "grad": any(p.requires_grad for p in engine.module.parameters())}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
