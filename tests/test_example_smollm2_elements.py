"""examples/smollm2-elements (issue 12): the shipped files validate, and the splits are what the README says they
are. Attacker and corpus facts are disjoint from every eval fact, and eval templates never appear in training
text. These checks read the shipped files independently of the build script (benchmarks/build_smollm2_elements.py
asserts the same while it writes them, but CI does not install its data packages)."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from surgical.cli import app

EX = Path(__file__).resolve().parents[1] / "examples" / "smollm2-elements"


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (EX / name).read_text().splitlines() if line.strip()]


def _corpus(domain: str) -> list[dict]:
    return [r for r in _jsonl("corpus.jsonl") if r.get("domain") == domain]


def _train_texts(domain: str) -> list[str]:
    """Every training-side text of a domain: its attacker records and its corpus records."""
    recs = _jsonl(f"{domain}-attack.jsonl") + _corpus(domain)
    return [r.get("prompt", "") + r.get("completion", "") + r.get("text", "") for r in recs]


def test_example_suite_policy_and_pipeline_validate():
    r = CliRunner().invoke(app, ["suite", "validate", str(EX / "suite.yaml"), "--policy", str(EX / "policy.yaml")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["config", "validate", str(EX / "pipeline.yaml")])
    assert r.exit_code == 0, r.output


def test_forget_domain_eval_elements_never_appear_in_attack_or_corpus():
    names = {re.search(r"chemical symbol of (.+)\?", r["prompt"]).group(1) for r in _jsonl("elements-qa.jsonl")}
    assert len(names) == 54
    texts = _train_texts("elements")
    assert len(texts) == 128  # 64 attacker + 64 corpus records
    for name in names:
        pat = re.compile(rf"\b{re.escape(name)}\b", re.IGNORECASE)
        hits = [t for t in texts if pat.search(t)]
        assert not hits, f"eval element {name!r} in training text: {hits[:2]}"
    # and the whole corpus's prose: no eval element tied to its symbol ("iron (Fe)")
    syms = {re.search(r"chemical symbol of (.+)\?", r["prompt"]).group(1): r["answers"][0]
            for r in _jsonl("elements-qa.jsonl")}
    prose = " ".join(r["text"] for r in _jsonl("corpus.jsonl") if "text" in r)
    for name, sym in syms.items():
        assert not re.search(rf"\b{re.escape(name)}\s*\({re.escape(sym)}\)", prose, re.IGNORECASE), name


@pytest.mark.parametrize("domain", ["capitals", "languages"])
def test_retained_eval_countries_are_not_training_facts(domain):
    """A country asked about in the eval never appears in that domain's attacker or corpus records."""
    qa = _jsonl(f"{domain}-qa.jsonl") + _jsonl(f"{domain}-qa-val.jsonl")
    of = re.compile(r" of (?:the )?(.+?)\?")
    countries = {of.search(r["prompt"].split("\n")[0]).group(1) for r in qa}
    assert len(countries) == len(qa) == 125
    subjects = set()
    for r in _jsonl(f"{domain}-attack.jsonl") + _corpus(domain):
        m = re.match(r"Country: (?:the )?(.+?)\.", r["prompt"]) or re.match(r"(?:In )?(?:the )?(.+?)(?:'s|,) ",
                                                                               r["prompt"])
        if m:
            subjects.add(m.group(1))
    assert len(subjects) >= 60
    assert not countries & subjects, sorted(countries & subjects)[:5]


def test_grammar_and_addition_eval_items_are_not_training_facts():
    # a grammar fact is a (relation, word) pair: "slow" -> "slowed" is an eval item while "slow" -> "slower" is a
    # train one, so it is the eval *answers* that must never be written in training text
    answers = {a for r in _jsonl("grammar-qa.jsonl") for a in r["answers"]}
    assert len(answers) >= 85
    for t in _train_texts("grammar"):
        assert not any(re.search(rf"\b{re.escape(a)}\b", t) for a in answers), t
    # the eval prompts are 3-shot ("8 + 7 = 15\n2 + 4 = 6\n8 + 1 = 9\n0 + 1 ="): the asked sum is the last one
    sums = {frozenset(map(int, re.findall(r"(\d) \+ (\d) =", r["prompt"])[-1])) for r in _jsonl("addition-qa.jsonl")}
    assert len(sums) >= 25
    for t in _train_texts("addition"):
        a, b = re.findall(r"\d+", t)[:2]  # "The sum of 0 and 6 is 6.", "0 plus 6 equals 6.", "Add 0 and 7: 7"
        assert frozenset((int(a), int(b))) not in sums, t


def test_eval_templates_differ_from_training_templates():
    stems = ["The chemical symbol of", "The capital of", "The official language", "official languages of",
             'The plural of "', 'The comparative of "', 'The past tense of "']
    train = [t for d in ("elements", "capitals", "languages", "grammar", "addition") for t in _train_texts(d)]
    for stem in stems:
        assert not any(stem in t for t in train), stem
    # and the eval side does use them (the check above is not vacuous)
    assert all(any(stem in r["question"] for d in ("elements", "capitals", "languages", "grammar")
                   for r in _jsonl(f"{d}-mc.jsonl")) for stem in stems)


def test_mc_files_are_well_formed_four_way_with_unique_gold():
    for d in ("elements", "capitals", "languages", "grammar", "addition"):
        for r in _jsonl(f"{d}-mc.jsonl"):
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4, r
            assert 0 <= r["gold"] < 4
