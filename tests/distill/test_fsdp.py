"""Scale-out of distill: FSDP2 over gloo on 2 CPU processes (student and teacher sharded), DDP, the data-parallel
logits cache, the teacher under DeepSpeed ZeRO-3, and the shipped accelerate configs."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from surgical.models import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"
EXE = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SETS = ["max_steps=3", "batch_size=8", "student_hidden_size=16", "threads=1", "logging_steps=1"]


def _distill_args(files, out, sets):
    args = [str(EXE / "surgical"), "distill", "--teacher", str(files / "teacher"), "--gold", str(files / "gold.jsonl"),
            "--forbidden", str(files / "forbidden.jsonl"), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return args


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _close(a: dict, b: dict, atol: float = 1e-5) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_shards_student_and_teacher(files, tmp_path):
    """accelerate launch with FSDP2 (configs/accelerate/fsdp2-cpu.yaml): each rank holds half of the student and half
    of the teacher; the losses and the weights equal a single-process run that sees the same rows (grad_accum=2,
    the same global batch of 8); a checkpoint saved under FSDP is a plain HF dir."""
    from transformers import AutoModelForCausalLM

    _run([str(EXE / "accelerate"), "launch", "--config_file", str(CONFIGS / "fsdp2-cpu.yaml"),
          *_distill_args(files, tmp_path / "fsdp", SETS + ["save_steps=2"])])
    _run(_distill_args(files, tmp_path / "single", SETS + ["grad_accum=2"]))
    fsdp = json.loads((tmp_path / "fsdp" / "distill.json").read_text())
    single = json.loads((tmp_path / "single" / "distill.json").read_text())

    dist = fsdp["distributed"]
    assert dist["world_size"] == 2 and dist["student_sharded"] and dist["teacher_placement"] == "fsdp2"
    assert "FSDP" in dist["type"]
    for name in ("student", "teacher"):
        el = dist["parameter_elements"][name]
        assert len(el["per_rank"]) == 2 and sum(el["per_rank"]) == el["total"]
        assert max(el["per_rank"]) <= el["total"] / 2 + 64, (name, el)  # each rank: its shard (+ padding)
    assert single["distributed"]["parameter_elements"]["teacher"]["per_rank"] == [dist["parameter_elements"]
                                                                                   ["teacher"]["total"]]

    f_loss = [c["loss"] for c in fsdp["curves"]]
    s_loss = [c["loss"] for c in single["curves"]]
    assert len(f_loss) == 3 and f_loss == pytest.approx(s_loss, rel=1e-4)
    assert _close(_weights(tmp_path / "fsdp" / "student"), _weights(tmp_path / "single" / "student"))

    ckpt = tmp_path / "fsdp" / "checkpoints" / "checkpoint-2"
    model = AutoModelForCausalLM.from_pretrained(ckpt)  # a plain HF dir, no FSDP needed to read it
    assert not any(hasattr(p, "to_local") for p in model.parameters())
    assert model.config.num_hidden_layers == AutoModelForCausalLM.from_pretrained(
        tmp_path / "fsdp" / "student").config.num_hidden_layers


@pytest.mark.slow
def test_ddp_and_data_parallel_cache_under_torchrun(files, tmp_path):
    """torchrun with 2 CPU ranks: distill is DDP (the teacher replicated, every rank a full copy) and equals the
    single-process run with the same global batch; `cache-logits` splits its shards over the ranks, and the shard
    files are byte-identical to a single process's."""
    torchrun = [str(EXE / "torchrun"), "--nproc_per_node", "2"]
    _run(torchrun + _distill_args(files, tmp_path / "ddp", SETS))
    _run(_distill_args(files, tmp_path / "single", SETS + ["grad_accum=2"]))
    ddp = json.loads((tmp_path / "ddp" / "distill.json").read_text())
    single = json.loads((tmp_path / "single" / "distill.json").read_text())
    el = ddp["distributed"]["parameter_elements"]["teacher"]
    assert ddp["distributed"]["world_size"] == 2 and el["per_rank"] == [el["total"]] * 2
    assert [c["loss"] for c in ddp["curves"]] == pytest.approx([c["loss"] for c in single["curves"]], rel=1e-4)
    assert _close(_weights(tmp_path / "ddp" / "student"), _weights(tmp_path / "single" / "student"))

    cache = [str(EXE / "surgical"), "distill", "cache-logits", "--teacher", str(files / "teacher"), "--gold",
             str(files / "gold.jsonl"), "--forbidden", str(files / "forbidden.jsonl"), "--shard-examples", "16",
             "--top-k", "8", "--out"]
    _run(cache + [str(tmp_path / "c1")])
    _run(torchrun + cache + [str(tmp_path / "c2")])
    one, two = (json.loads((tmp_path / c / "cache.json").read_text()) for c in ("c1", "c2"))
    assert one["world_size"] == 1 and two["world_size"] == 2 and len(one["shards"]) >= 4
    assert {k: v for k, v in one.items() if k not in ("wall_s", "world_size")} == \
        {k: v for k, v in two.items() if k not in ("wall_s", "world_size")}
    for s in one["shards"]:
        assert (tmp_path / "c1" / s["file"]).read_bytes() == (tmp_path / "c2" / s["file"]).read_bytes()


@pytest.mark.slow
def test_teacher_as_deepspeed_zero3_engine_on_two_cpu_ranks():
    """DeepSpeed's CPU accelerator with gloo: the teacher built by prepare_teacher from the zero3-8gpu.yaml plugin
    holds half its elements per rank and gives the unsharded model's logits. (The student's side of ZeRO-3 goes
    through accelerate, which enables DeepSpeed only on accelerator devices: that half needs a GPU.)"""
    pytest.importorskip("deepspeed", reason="needs deepspeed: `make deepspeed`")
    r = _run([str(EXE / "torchrun"), "--nproc_per_node", "2", str(Path(__file__).parent / "ds_teacher_worker.py"),
              str(CONFIGS / "zero3-8gpu.yaml")])
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(x["rank"] for x in rows) == [0, 1]
    for x in rows:
        assert x["kind"] == "deepspeed-zero3" and not x["grad"]
        assert x["local"] * 2 == x["total"] and x["max_logit_diff"] < 1e-5


def _launch_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    return _validate_launch_command(args)[0]


def test_shipped_accelerate_configs_parse_to_the_intended_plan():
    one = _launch_args("1gpu.yaml")
    assert one.num_processes == 1 and not one.use_fsdp and not one.use_deepspeed
    fsdp = _launch_args("fsdp2-8gpu.yaml")
    assert fsdp.num_processes == 8 and fsdp.use_fsdp and str(fsdp.fsdp_version) == "2" and not fsdp.use_cpu
    assert fsdp.fsdp_state_dict_type == "FULL_STATE_DICT"  # checkpoints stay plain HF dirs
    zero = _launch_args("zero3-8gpu.yaml")
    assert zero.num_processes == 8 and zero.use_deepspeed and int(zero.zero_stage) == 3
    cpu = _launch_args("fsdp2-cpu.yaml")
    assert cpu.num_processes == 2 and cpu.use_fsdp and cpu.use_cpu and str(cpu.fsdp_version) == "2"


def _fake_accelerator(kind, plugin=None):
    from accelerate.utils import DistributedType

    state = types.SimpleNamespace(distributed_type=getattr(DistributedType, kind), deepspeed_plugin=plugin)
    return types.SimpleNamespace(state=state, device=torch.device("cpu"))


@pytest.mark.parametrize("stage", [3, 2])
def test_deepspeed_teacher_config_is_inference_only(monkeypatch, stage):
    """The config prepare_teacher hands to deepspeed.initialize, from the shipped ZeRO-3 config's plugin: no
    optimizer, scheduler or optimizer offload; ZeRO-3 keeps the teacher sharded, lower stages replicate it (0)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    from surgical.distill.sharding import prepare_teacher

    seen = {}

    def initialize(model, config):
        seen["config"] = config
        return types.SimpleNamespace(module=model, eval=lambda: None), None, None, None

    teacher = make_tiny_model("llama", 50, layers=1)  # before the fake module: transformers probes for deepspeed
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    ds = load_config_from_file(str(CONFIGS / "zero3-8gpu.yaml")).deepspeed_config
    plugin = DeepSpeedPlugin(**{**ds, "zero_stage": stage})
    plugin.deepspeed_config["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-4}}
    plugin.deepspeed_config["scheduler"] = {"type": "WarmupLR"}
    plugin.deepspeed_config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    engine, kind = prepare_teacher(teacher, _fake_accelerator("DEEPSPEED", plugin))
    cfg = seen["config"]
    assert "optimizer" not in cfg and "scheduler" not in cfg and "offload_optimizer" not in cfg["zero_optimization"]
    assert cfg["zero_optimization"]["stage"] == (3 if stage == 3 else 0)
    assert kind == ("deepspeed-zero3" if stage == 3 else "deepspeed-replicated")
    assert all(v != "auto" for v in cfg.values()) and cfg["train_micro_batch_size_per_gpu"] == 1
    assert plugin.deepspeed_config["optimizer"]  # the student's config is left alone
    assert not any(p.requires_grad for p in engine.module.parameters())


def test_teacher_without_distribution_is_frozen_and_replicated():
    from surgical.distill.sharding import local_numel, prepare_teacher

    teacher = make_tiny_model("gpt2", 50, layers=1).train()
    placed, kind = prepare_teacher(teacher, _fake_accelerator("NO"))
    assert kind == "replicated" and not placed.training
    assert not any(p.requires_grad for p in placed.parameters())
    local, total = local_numel(placed)
    assert local == total == sum(p.numel() for p in teacher.parameters())


def test_cpu_fsdp_switch_only_when_the_launcher_asked(monkeypatch):
    """enable_cpu_fsdp leaves a run alone unless ACCELERATE_USE_FSDP is set and accelerate fell back to multi-CPU."""
    from surgical.distill.sharding import enable_cpu_fsdp

    acc = _fake_accelerator("MULTI_CPU")
    acc.state.device = torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert enable_cpu_fsdp(acc) is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    gpu = _fake_accelerator("MULTI_GPU")
    gpu.state.device = torch.device("cpu")
    assert enable_cpu_fsdp(gpu) is False  # accelerate already decided (FSDP or not) on an accelerator
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="FSDP2"):
        enable_cpu_fsdp(acc)
