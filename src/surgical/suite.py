"""The evaluation suite: what every stage measures a model on, per knowledge domain.

A suite is a YAML manifest (schema below; every error carries its field path) that names, per domain, its
role (``forget`` or ``retain``) and its data files, in formats other tools already use:

* ``mc``: multiple choice ``{question, choices, gold}`` (lm-evaluation-harness's shape), scored by
  log-likelihood as lm-eval does (``acc`` summed, ``acc_norm`` per byte; ``target_delimiter`` joins them);
* ``qa``: short-answer QA ``{prompt, answers: [...]}`` (optional ``target``: a reference completion;
  optional ``context``: facts that answer it, for the in-context-use probe), scored by greedy generation of
  up to ``max_new_tokens`` with the domain's ``scorer``: ``exact``, ``normalized`` (case, whitespace,
  punctuation, Unicode NFKC), ``regex`` (the last match of ``answer_regex``, its first group if it has one,
  compared normalised with each answer) or ``contains`` (an answer appears, as whole words, normalised);
* ``perplexity``: texts ``{text}`` or ``{prompt, completion}``;
* ``attack``: attacker/shot records ``{prompt, completion}`` for the relearning attack and the few-/many-shot
  jailbreaks: never the eval items;
* ``probe`` (optional): latent-probe records ``{text, label}``; without it the latent probe's label is the MC
  gold choice (question + gold choice vs question + a wrong one), which exists for any MC data.

An eval entry is a file (the ``test`` split) or a mapping ``{test: FILE, val: FILE}``; paths are relative to
the manifest. ``chat: true`` wraps every prompt in the model's chat template (instruct models). Nothing in
this module knows the arithmetic world: the world writes a suite like any user (``surgical world``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .config_base import Section
from .io import JsonlError, iter_jsonl, sha256_file, sha256_json

SPLITS = ("test", "val")
Scorer = Literal["exact", "normalized", "regex", "contains"]


class SuiteError(ValueError):
    """A suite (manifest or data file) that cannot be used; the message names the file, line and field."""


class DomainSpec(Section):
    """One domain of a suite: its role, data files and scoring."""

    name: str = Field(..., min_length=1, description="Domain name; the policy's domain names refer to it.")
    role: Literal["forget", "retain"] = Field(..., description="forget: must not be known; retain: must be kept.")
    gate: bool = Field(True, description="Whether the domain enters the verdict (false: measured and reported "
                       "only, e.g. a cross-domain set).")
    description: str = ""
    mc: str | dict[str, str] | None = Field(None, description="MC JSONL {question, choices, gold}: a file (the "
                                            "test split) or {test: FILE, val: FILE}.")
    qa: str | dict[str, str] | None = Field(None, description="QA JSONL {prompt, answers, [target], [context]}.")
    perplexity: str | dict[str, str] | None = Field(None, description="JSONL {text} or {prompt, completion}.")
    attack: str | None = Field(None, description="JSONL {prompt, completion}: attacker fine-tuning data and "
                               "jailbreak shots (never eval items).")
    probe: dict[str, str] | None = Field(None, description="JSONL {text, label} for the latent probes: "
                                         "{train: FILE, test: FILE} (without it, the MC gold choice is the label).")
    scorer: Scorer = Field("normalized", description="How a QA generation is scored against its answers.")
    answer_regex: str | None = Field(None, description="With scorer: regex, the pattern whose last match (its "
                                     "first group if it has one) is the model's answer.")
    max_new_tokens: int = Field(32, ge=1, description="Generation budget of a QA item (tokens).")
    stop_at_newline: bool = Field(True, description="A QA answer is one line: generation stops at a newline.")
    target_delimiter: str = Field(" ", description="Joins an MC question and a choice (lm-eval's default ' ').")
    chat: bool | None = Field(None, description="Override of the suite's `chat` for this domain.")

    @field_validator("probe")
    @classmethod
    def _probe_splits(cls, v):
        if v is not None and set(v) != {"train", "test"}:
            raise ValueError("probe needs exactly {train: FILE, test: FILE}")
        return v

    @field_validator("mc", "qa", "perplexity")
    @classmethod
    def _splits_known(cls, v):
        if isinstance(v, dict):
            unknown = sorted(set(v) - set(SPLITS))
            if unknown:
                raise ValueError(f"unknown split(s) {unknown}; known: {list(SPLITS)}")
            if "test" not in v:
                raise ValueError("a split mapping needs a `test` file")
        return v

    @model_validator(mode="after")
    def _usable(self):
        if self.mc is None and self.qa is None:
            raise ValueError(f"domain {self.name!r} has no eval data: give `mc` or `qa` (or both)")
        if self.scorer == "regex":
            if not self.answer_regex:
                raise ValueError("scorer: regex needs `answer_regex`")
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                raise ValueError(f"answer_regex {self.answer_regex!r} does not compile: {exc}") from None
        return self


class SuiteSpec(Section):
    """A suite manifest."""

    name: str = "suite"
    description: str = ""
    chat: bool = Field(False, description="Wrap prompts in the model's chat template (instruct models).")
    domains: list[DomainSpec] = Field(..., min_length=1)

    @field_validator("domains")
    @classmethod
    def _unique(cls, v: list[DomainSpec]):
        seen: set[str] = set()
        for i, d in enumerate(v):
            if d.name in seen:
                raise ValueError(f"domains[{i}]: duplicate domain name {d.name!r}")
            seen.add(d.name)
        return v


# ---------------------------------------------------------------- records


def _need(rec: dict, key: str, kind, where: str):
    if key not in rec:
        raise SuiteError(f"{where}: missing field `{key}`")
    if not isinstance(rec[key], kind) or isinstance(rec[key], bool) and kind is not bool:
        raise SuiteError(f"{where}: field `{key}` must be {getattr(kind, '__name__', kind)}")
    return rec[key]


def _mc_record(rec: dict, where: str) -> dict:
    q = _need(rec, "question", str, where)
    choices = _need(rec, "choices", list, where)
    if len(choices) < 2 or not all(isinstance(c, str | int | float) and not isinstance(c, bool) for c in choices):
        raise SuiteError(f"{where}: field `choices` must list at least 2 strings")
    gold = _need(rec, "gold", int, where)
    if not 0 <= gold < len(choices):
        raise SuiteError(f"{where}: field `gold` = {gold} is not an index of `choices` (0..{len(choices) - 1})")
    return {**rec, "question": q, "choices": [str(c) for c in choices], "gold": gold}


def _qa_record(rec: dict, where: str) -> dict:
    prompt = _need(rec, "prompt", str, where)
    answers = _need(rec, "answers", list, where)
    if not answers or not all(isinstance(a, str | int) and not isinstance(a, bool) for a in answers):
        raise SuiteError(f"{where}: field `answers` must list at least one string")
    for opt in ("target", "context"):
        if opt in rec and not isinstance(rec[opt], str):
            raise SuiteError(f"{where}: field `{opt}` must be a string")
    return {**rec, "prompt": prompt, "answers": [str(a) for a in answers]}


def _pair_record(rec: dict, where: str) -> dict:
    if "text" in rec and "prompt" not in rec:
        return {"prompt": "", "completion": _need(rec, "text", str, where)}
    return {"prompt": _need(rec, "prompt", str, where), "completion": _need(rec, "completion", str, where)}


def _probe_record(rec: dict, where: str) -> dict:
    return {"text": _need(rec, "text", str, where), "label": _need(rec, "label", int, where)}


def read_records(path: Path, parse) -> list[dict]:
    """Every record of a JSONL data file, checked by ``parse``; SuiteError names the file, line and field."""
    if not path.is_file():
        raise SuiteError(f"{path}: no such data file")
    out = []
    try:
        for line_no, rec in iter_jsonl(path, strict=True):
            out.append(parse(rec, f"{path}:{line_no}"))
    except JsonlError as exc:
        raise SuiteError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not out:
        raise SuiteError(f"{path}: no records")
    return out


# ---------------------------------------------------------------- the loaded suite


@dataclass
class DomainData:
    """One domain's records, loaded and checked. ``mc``/``qa``/``perplexity``/``probe`` map split -> records."""

    spec: DomainSpec
    chat: bool
    mc: dict[str, list[dict]] = field(default_factory=dict)
    qa: dict[str, list[dict]] = field(default_factory=dict)
    perplexity: dict[str, list[dict]] = field(default_factory=dict)
    attack: list[dict] = field(default_factory=list)
    probe: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def split_of(self, kind: str, split: str) -> list[dict]:
        """The records of ``kind`` in ``split``; the test split stands in for a missing val split."""
        sets = getattr(self, kind)
        return sets.get(split) or sets.get("test") or []

    def has_val(self, kind: str) -> bool:
        return "val" in getattr(self, kind)


@dataclass
class Suite:
    """A loaded suite: its spec, its domains' records and the hash of every file it read."""

    spec: SuiteSpec
    path: Path | None
    domains: dict[str, DomainData]
    file_hashes: dict[str, str]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def data_hash(self) -> str:
        return sha256_json({"spec": self.spec.model_dump(), "files": self.file_hashes})[:16]

    def role(self, role: str, gated_only: bool = False) -> list[str]:
        return [n for n, d in self.domains.items() if d.spec.role == role and (d.spec.gate or not gated_only)]

    def __getitem__(self, name: str) -> DomainData:
        return self.domains[name]


def _as_splits(entry, base: Path) -> dict[str, Path]:
    if entry is None:
        return {}
    if isinstance(entry, str):
        entry = {"test": entry}
    return {s: (base / p) for s, p in entry.items()}


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite manifest and every data file it names; SuiteError (or ConfigError for the
    manifest's fields) says what is wrong and where."""
    from .config import load_yaml_model

    path = Path(path)
    spec: SuiteSpec = load_yaml_model(path, SuiteSpec)
    base = path.parent
    domains, hashes = {}, {}
    parsers = {"mc": _mc_record, "qa": _qa_record, "perplexity": _pair_record, "probe": _probe_record}
    for d in spec.domains:
        data = DomainData(d, d.chat if d.chat is not None else spec.chat)
        for kind, parse in parsers.items():
            for split, f in _as_splits(getattr(d, kind), base).items():
                getattr(data, kind)[split] = read_records(f, parse)
                hashes[str(f.relative_to(base)) if f.is_relative_to(base) else str(f)] = sha256_file(f)
        if d.attack:
            f = base / d.attack
            data.attack = read_records(f, _pair_record)
            hashes[d.attack] = sha256_file(f)
        domains[d.name] = data
    return Suite(spec, path, domains, hashes)


def check_policy(suite: Suite, policy) -> tuple[list[str], list[str]]:
    """(forget, retain) domains for a policy: every forbidden domain must be a forget domain of the suite and
    every allowed domain a retain domain; the suite's other retain domains are kept too (its forget domains that
the policy does not name are not used). A policy domain the
    suite has no data for is an error naming it, never a silent substitution."""
    errors = []
    for f in policy.forbidden:
        if f.name not in suite.domains:
            errors.append(f"forbidden domain {f.name!r} has no eval data in suite {suite.name!r}")
        elif suite[f.name].spec.role != "forget":
            errors.append(f"forbidden domain {f.name!r} is a retain domain in suite {suite.name!r}")
    for a in policy.allowed:
        if a.name not in suite.domains:
            errors.append(f"allowed domain {a.name!r} has no eval data in suite {suite.name!r}")
        elif suite[a.name].spec.role != "retain":
            errors.append(f"allowed domain {a.name!r} is a forget domain in suite {suite.name!r}")
    if errors:
        raise SuiteError("; ".join(errors))
    forget = [f.name for f in policy.forbidden]
    retain = [a.name for a in policy.allowed]
    retain += [n for n in suite.role("retain") if n not in retain]
    if not [n for n in forget if suite[n].spec.gate]:
        raise SuiteError(f"policy {policy.name!r} forbids no domain that suite {suite.name!r} gates on")
    return forget, retain


def resolve_suite_path(policy, policy_path: str | Path | None, override: str | Path | None = None) -> Path:
    """The suite a run uses: ``override`` (--suite / the pipeline's data.suite) or the policy's ``suite``
    (relative to the policy file)."""
    if override:
        return Path(override)
    if getattr(policy, "suite", None):
        base = Path(policy_path).parent if policy_path else Path(".")
        return base / policy.suite
    raise SuiteError(f"policy {policy.name!r} names no suite: set `suite:` in the policy or pass --suite FILE")


# ---------------------------------------------------------------- prompts and scorers (pure)


def format_prompt(tokenizer, text: str, chat: bool) -> str:
    """``text`` as the model sees it: as a user turn of its chat template (with the generation prompt) when
    ``chat``, else unchanged. A tokenizer without a chat template is an error, not a silent fallback."""
    if not chat:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise SuiteError("the suite asks for chat: true but the model's tokenizer has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation dropped, whitespace collapsed (SQuAD-style answer normalisation)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def extract_answer(generation: str, scorer: str, answer_regex: str | None = None) -> str | None:
    """The part of a generation the scorer compares: the whole (stripped) text, or the regex's last match."""
    if scorer != "regex":
        return generation.strip()
    found = list(re.finditer(answer_regex or "", generation))
    if not found:
        return None
    m = found[-1]
    return m.group(1) if m.re.groups else m.group(0)


def score_answer(generation: str, answers, scorer: str, answer_regex: str | None = None) -> bool:
    """Whether a generation answers correctly under ``scorer`` (see the module docstring)."""
    got = extract_answer(generation, scorer, answer_regex)
    if got is None:
        return False
    if scorer in ("exact", "regex"):  # a regex extracts a token such as a number: "-5" must not match "5"
        return any(got.strip() == str(a).strip() for a in answers)
    g = normalize(got)
    if scorer == "normalized":
        return any(g == normalize(str(a)) for a in answers)
    if scorer == "contains":
        padded = f" {g} "
        return any(normalize(str(a)) and f" {normalize(str(a))} " in padded for a in answers)
    raise ValueError(f"unknown scorer {scorer!r}")


# ---------------------------------------------------------------- lm-eval export

LM_EVAL_TASK = """\
# lm-evaluation-harness task exported by `surgical suite lm-eval` (suite {suite}, domain {domain}, {split}).
# Run: HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL_DIR --device cpu \\
#        --include_path {task_dir} --tasks {task}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files: {data_file}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: {delimiter}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def task_name(suite_name: str, domain: str) -> str:
    return "surgical_" + re.sub(r"[^A-Za-z0-9_]", "_", f"{suite_name}_{domain}")


def write_lm_eval_tasks(suite: Suite, out_dir: str | Path, split: str = "test") -> dict[str, Path]:
    """One lm-eval task YAML per MC set of ``split`` (chat domains included: lm-eval's
    ``--apply_chat_template`` is the matching flag). Returns {task name: yaml path}."""
    import json

    from .io import write_text

    out_dir = Path(out_dir).resolve()
    written = {}
    for name, d in suite.domains.items():
        if split not in d.mc:
            continue
        task = task_name(suite.name, name)
        data_file = out_dir / f"{task}.jsonl"
        write_text(data_file, "".join(json.dumps({"question": r["question"], "choices": r["choices"],
                                                  "gold": r["gold"]}) + "\n" for r in d.mc[split]))
        f = out_dir / f"{task}.yaml"
        write_text(f, LM_EVAL_TASK.format(suite=suite.name, domain=name, split=split, task=task, task_dir=out_dir,
                                          data_file=data_file, delimiter=json.dumps(d.spec.target_delimiter)))
        written[task] = f
    return written


def summary(suite: Suite) -> list[dict]:
    """Per domain: role, gate, record counts per kind and split (what `surgical suite validate` prints)."""
    rows = []
    for name, d in suite.domains.items():
        counts = {k: {s: len(v) for s, v in getattr(d, k).items()} for k in ("mc", "qa", "perplexity", "probe")}
        rows.append({"domain": name, "role": d.spec.role, "gate": d.spec.gate, "chat": d.chat,
                     "scorer": d.spec.scorer if d.qa else None, "attack": len(d.attack),
                     **{k: v for k, v in counts.items() if v}})
    return rows
