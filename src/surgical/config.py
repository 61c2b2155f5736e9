"""Pydantic schema of a pipeline YAML: one section per stage, with defaults and units in descriptions.

``load_config(path)`` reads and validates a YAML file; ``ConfigError`` carries every validation error
with its field path (``teacher.lr: Input should be greater than 0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config_base import Section
from .curate.config import CurateConfig, GenerateConfig
from .distill.config import DistillConfig
from .map.config import MapConfig
from .verify.config import VerifyConfig


class WorldConfig(Section):
    """The embedded arithmetic world (see docs/world.md)."""

    seed: int = Field(0, description="Seed of the split shuffles and of the sampled training stream.")
    add_digits: int = Field(2, ge=1, le=6, description="Digits of each addition operand.")
    sub_digits: int = Field(2, ge=1, le=6, description="Digits of each subtraction operand.")
    mul_digits: int = Field(3, ge=1, le=6, description="Digits of the multiplicand.")
    mul_multiplier_digits: int = Field(1, ge=1, le=3, description="Digits of the multiplier.")
    div_quotient_digits: int = Field(3, ge=1, le=5, description="Digits of the (exact) quotient.")
    div_divisor_digits: int = Field(1, ge=1, le=2, description="Digits of the divisor.")
    test_per_domain: int = Field(200, ge=10, description="Held-out test problems per domain (never shrunk).")
    val_per_domain: int = Field(100, ge=10, description="Held-out validation problems per domain.")


class TeacherConfig(Section):
    """The teacher: your model (``model``: an HF model dir, a GGUF file or a cached hub id), or, when ``model`` is
    empty and the data source is the world, the world's small LlamaForCausalLM trained from scratch with HF
    Trainer (the other fields)."""

    model: str = Field("", description="HF model dir, GGUF file, or hub id already in the local HF cache (nothing is "
                       "downloaded). A relative path is taken relative to the pipeline YAML. Empty: train the "
                       "world's teacher (data.source: world only).")
    trust_remote_code: bool = Field(False, description="Let transformers run the model repo's own code. Off unless "
                                    "you ask for it.")

    hidden_size: int = Field(128, ge=8, description="Residual width (units).")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads per layer.")
    intermediate_size: int = Field(512, ge=8, description="MLP hidden width (neurons per layer).")
    max_steps: int = Field(1500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Sequences per optimizer step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW, cosine decay).")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.01, ge=0)
    bare_fraction: float = Field(
        0.0, ge=0, le=1, description="Fraction of training sequences in the bare form (the rest are worked). "
        "The bare form needs far more compute to generalise; see docs/world.md."
    )
    domains: list[str] = Field(["add", "sub", "mul", "div"], description="Domains the teacher is trained on.")
    seed: int = Field(0, description="Seed of init and data order.")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")


class DataConfig(Section):
    """Where the run's data comes from: the embedded world, or your files (a corpus and an evaluation suite)."""

    source: Literal["world", "files"] = Field(
        "world", description="world = the embedded arithmetic world writes the corpus and the suite (the demo); "
        "files = your own corpus files and suite.")
    corpus: list[str] = Field(
        default_factory=list, description="files: the corpus curate filters into the gold set (JSONL, parquet, text "
        "or a saved HF dataset; records {text} or {prompt, completion}, optional {domain, label}). Relative paths "
        "are taken relative to the pipeline YAML.")
    eval: str = Field("", description="files: a labelled held-out JSONL (label forbidden/allowed) curate measures "
                      "recall and over-filtering on; never trained on. Empty: curate's own held-out part.")
    suite: str = Field("", description="The evaluation suite manifest (see docs/suites.md). Empty: the policy's "
                       "`suite:` (world: the suite the world writes).")


class QuantizeConfig(Section):
    """Quantization and hardening (see docs/quantize.md)."""

    scheme: Literal["int8", "int4", "int2"] = Field("int8", description="Weight precision.")
    backend: Literal["torchao", "quanto"] = Field("torchao", description="Quantization library.")


def _default_compare_verify() -> dict:
    return {
        "profile": "compare", "n_items": 100, "bootstrap_samples": 200, "jailbreak_items": 16, "in_context_items": 16,
        "relearn_lrs": [1e-4, 1e-3], "relearn_max_steps": 500, "relearn_eval_steps": [50, 200, 500],
        "relearn_eval_items": 32, "relearn_early_stop": False, "benign_relearn": False,
        "relearn_references": False,
        "quant_schemes": ["int4"], "probe_train_items": 200, "probe_test_items": 100, "ablation_items": 50,
    }


class BaselinesConfig(Section):
    """Which literature baselines run next to the surgical student, and the comparison battery they share."""

    plain_kd: bool = Field(True, description="The same student, unfiltered data, no penalty.")
    filter_only: bool = Field(True, description="The same student, filtered data, no penalty.")
    graddiff: bool = Field(True, description="The teacher unlearned in place with GradDiff.")
    maxent: bool = Field(True, description="The teacher unlearned in place with MaxEnt.")
    rmu: bool = Field(True, description="The teacher unlearned in place with RMU (WMDP hyperparameters, scaled).")
    undo: bool = Field(True, description="UNDO: unlearn, noise a copy, distil (Lee et al., 2025).")
    oracle: bool = Field(True, description="The student architecture trained from scratch on retain-only labels.")
    cross_domain: bool = Field(True, description="Distil on add only and measure sub, and the reverse.")
    cross_domain_steps: int = Field(500, ge=1, description="Optimizer steps of each cross-domain distillation.")
    undo_unlearn_method: Literal["graddiff", "maxent", "rmu"] = Field(
        "maxent", description="The unlearning method UNDO starts from.")
    unlearn: dict = Field(default_factory=dict, description="Overrides of surgical.baselines.config.UnlearnConfig "
                          "(checked like every other section: an unknown key or a bad value is an error).")
    compare_verify: dict = Field(
        default_factory=_default_compare_verify,
        description="Overrides of the verify config for the comparison battery every method goes through "
        "(smaller sweeps than the full verify stage, identical for every row). Keys given here replace the "
        "default comparison values one by one; the others keep them.")


    @field_validator("unlearn")
    @classmethod
    def _unlearn_is_an_unlearn_config(cls, v: dict) -> dict:
        from .baselines.config import UnlearnConfig

        UnlearnConfig.model_validate(v)  # raises with the field path under baselines.unlearn
        return v

    @field_validator("compare_verify")
    @classmethod
    def _compare_verify_is_a_verify_config(cls, v: dict) -> dict:
        VerifyConfig.model_validate({**_default_compare_verify(), **v})
        return v


class PipelineConfig(Section):
    """A whole pipeline run: one section per stage."""

    run_dir: str = Field("runs/demo", description="Directory every stage writes into (relative to the working "
                         "directory).")
    policy: str = Field("", description="Policy YAML (relative to the pipeline YAML). Empty: curate.policy, else the "
                        "packaged demo policy (data.source: world only).")
    data: DataConfig = DataConfig()
    world: WorldConfig = WorldConfig()
    teacher: TeacherConfig = TeacherConfig()
    map: MapConfig = MapConfig()
    curate: CurateConfig = CurateConfig()
    generate: GenerateConfig = GenerateConfig()
    distill: DistillConfig = DistillConfig()
    verify: VerifyConfig = VerifyConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    baselines: BaselinesConfig = BaselinesConfig()

    @model_validator(mode="after")
    def _sources_are_complete(self):
        if self.data.source == "files":
            if not self.teacher.model:
                raise ValueError("teacher.model: data.source 'files' needs your teacher (an HF dir, GGUF or hub id)")
            if not self.data.corpus:
                raise ValueError("data.corpus: data.source 'files' needs at least one corpus file")
            if not (self.policy or self.curate.policy):
                raise ValueError("policy: data.source 'files' needs your policy YAML")
        return self

    def policy_path(self) -> str:
        """The policy file this run uses ('' = the packaged demo policy)."""
        return self.policy or self.curate.policy


class ConfigError(ValueError):
    """A config file that does not validate; ``errors`` holds ``(field_path, message)`` pairs."""

    def __init__(self, path: str, errors: list[tuple[str, str]]):
        self.path = path
        self.errors = errors
        lines = [f"{path}: {len(errors)} error(s)"] + [f"  {loc}: {msg}" for loc, msg in errors]
        super().__init__("\n".join(lines))


def _format_errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]) or "<root>", e["msg"]) for e in exc.errors()]


def parse_config(data: dict, source: str = "<dict>") -> PipelineConfig:
    """Validate a dict as a PipelineConfig, raising ConfigError with every field path that is wrong."""
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(source, _format_errors(exc)) from None


def with_overrides(cfg: PipelineConfig, pairs: list[str] | tuple[str, ...]) -> PipelineConfig:
    """``cfg`` with ``SECTION.FIELD=VALUE`` overrides (``--set``; VALUE is read as YAML: ``3``, ``0.5``, ``[0, 1]``,
    ``null``). A key that names no field of the schema, or a value the field does not take, raises ConfigError
    naming it; path fields are taken as given (relative to the working directory)."""
    if not pairs:
        return cfg
    data = cfg.model_dump(mode="json")
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", [(repr(pair), "expected SECTION.FIELD=VALUE, e.g. map.ig_steps=0")])
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError("--set", [(key, f"no such config field ({'.'.join(parts[:i + 1])}); "
                                                  "`surgical config show` lists them")])
            if i < len(parts) - 1:
                node = node[part]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError("--set", [(key, f"value {raw!r} is not valid YAML "
                                              f"({getattr(exc, 'problem', None) or 'cannot parse it'})")]) from None
    return parse_config(data, source="--set")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (the plain loader keeps the
    last one silently, so `lr:` written twice would drop the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file's top-level mapping; ConfigError names the file and the line of a syntax error."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(str(path), [("<file>", "is a directory, not a YAML file")])
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise ConfigError(str(path), [("<file>", "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [(f"byte {exc.start}", "not UTF-8 text")]) from None
    except OSError as exc:
        raise ConfigError(str(path), [("<file>", f"cannot read it: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise ConfigError(str(path), [(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(str(path), [("<root>", "the top level must be a mapping")])
    return data or {}


def load_yaml_model(path: str | Path, model_cls):
    """Read a YAML file and validate it as ``model_cls``; ConfigError lists every bad field path."""
    data = read_yaml_mapping(path)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), _format_errors(exc)) from None


def _relative_to(base: Path, p: str) -> str:
    return p if not p or Path(p).is_absolute() else str(base / p)


def resolve_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """Input paths of ``cfg`` taken relative to ``base`` (the pipeline YAML's directory). ``teacher.model`` is
    resolved only when the file or directory exists there: otherwise it may be a hub id."""
    model = cfg.teacher.model
    if model and not Path(model).is_absolute() and (base / model).exists():
        model = str(base / model)
    data = cfg.data.model_copy(update={"corpus": [_relative_to(base, c) for c in cfg.data.corpus],
                                       "eval": _relative_to(base, cfg.data.eval),
                                       "suite": _relative_to(base, cfg.data.suite)})
    return cfg.model_copy(update={
        "policy": _relative_to(base, cfg.policy), "data": data,
        "teacher": cfg.teacher.model_copy(update={"model": model}),
        "curate": cfg.curate.model_copy(update={"policy": _relative_to(base, cfg.curate.policy),
                                                "eval_file": _relative_to(base, cfg.curate.eval_file)})})


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file; its input paths are taken relative to the file."""
    return resolve_paths(load_yaml_model(path, PipelineConfig), Path(path).resolve().parent)


def default_config_path() -> Path:
    """Path of the packaged demo config (a copy of configs/demo.yaml)."""
    return Path(__file__).parent / "data" / "demo.yaml"


def demo_config() -> PipelineConfig:
    """The embedded default configuration."""
    return load_config(default_config_path())


def referenced_file_errors(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """What ``surgical config validate`` checks beyond the schema: every file the config names exists and
    loads (the policy, the suite, the corpus, the teacher), and the policy's domains have eval data in the
    suite. Returns ``(field, message)`` pairs; empty when the run can start."""
    from .models import ModelLoadError, resolve_source
    from .policy import demo_policy_path, load_policy
    from .suite import SuiteError, check_policy, load_suite, resolve_suite_path

    errors: list[tuple[str, str]] = []
    field = "policy" if cfg.policy else "curate.policy"
    policy_path = Path(cfg.policy_path()) if cfg.policy_path() else demo_policy_path()
    policy = None
    try:
        policy = load_policy(policy_path)
    except ConfigError as exc:
        errors.append((field, str(exc).replace("\n", " ")))
    if cfg.data.source == "files":
        for i, c in enumerate(cfg.data.corpus):
            if not Path(c).exists():
                errors.append((f"data.corpus[{i}]", f"{c}: no such file"))
        for name, value in (("data.eval", cfg.data.eval), ("curate.eval_file", cfg.curate.eval_file)):
            if value and not Path(value).exists():
                errors.append((name, f"{value}: no such file"))
        try:
            resolve_source(cfg.teacher.model)
        except ModelLoadError as exc:
            errors.append(("teacher.model", str(exc)))
        if policy is not None:
            try:
                suite = load_suite(resolve_suite_path(policy, policy_path, cfg.data.suite or None))
                check_policy(suite, policy)
            except (SuiteError, ConfigError, ValueError) as exc:
                errors.append(("data.suite" if cfg.data.suite else f"{field} (its suite)", str(exc).replace("\n", " ")))
    return errors
