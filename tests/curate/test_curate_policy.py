"""The policy files: packaged copies, validation errors with field paths, the example real-category shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgical.config import ConfigError
from surgical.curate.constitution import demo_constitution_path, load_constitution
from surgical.policy import demo_policy_path, load_policy

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_copies_are_identical_to_configs():
    assert demo_policy_path().read_bytes() == (ROOT / "configs" / "policy-demo.yaml").read_bytes()
    assert demo_constitution_path().read_bytes() == (ROOT / "configs" / "constitution-demo.yaml").read_bytes()


def test_demo_policy_covers_the_world(demo_policy):
    assert demo_policy.world is True
    assert [d.name for d in demo_policy.forbidden] == ["mul", "div", "mixed"]
    assert [a.name for a in demo_policy.allowed] == ["add", "sub"]
    assert all(d.exemplars and d.keywords + d.regexes for d in demo_policy.forbidden)


def test_demo_exemplars_are_never_held_out(world, demo_policy):
    from surgical.config import demo_config
    from surgical.world import build_world

    held_out = set()
    for wb in (world, build_world(demo_config().world)):  # the default world and the demo config's
        held_out |= {p.worked_text for split in ("val", "test") for d in wb.splits[split] for p in wb.splits[split][d]}
    texts = {t for d in demo_policy.forbidden for t in d.exemplars + d.counter_exemplars}
    texts |= {t for a in demo_policy.allowed for t in a.exemplars}
    assert not texts & held_out


def test_example_real_policy_loads_and_names_categories_only():
    pol = load_policy(ROOT / "configs" / "policy-example-real.yaml")
    assert {d.name for d in pol.forbidden} == {"bio", "chem", "cyber"}
    assert all(k.startswith("<") for d in pol.forbidden for k in d.keywords)


@pytest.mark.parametrize("body, path", [
    ("forbidden:\n  - name: mul\n    escalate_at: 0\n", "forbidden.0.escalate_at"),
    ("forbidden:\n  - name: mul\n    regexes: ['(']\n", "forbidden.0.regexes"),
    ("forbidden:\n  - name: mul\n    classifier_threshold: 1.5\n", "forbidden.0.classifier_threshold"),
    ("forbidden:\n  - name: mul\n    keyword: ['*']\n", "forbidden.0.keyword"),
    ("thresholds:\n  retain_ratio_min: -1\n", "thresholds.retain_ratio_min"),
])
def test_malformed_policy_names_the_field_path(tmp_path, body, path):
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    assert path in str(err.value)
    assert str(f) in str(err.value)


def test_malformed_constitution_names_the_field_path(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rules:\n  - name: x\n    kind: telepathy\n")
    with pytest.raises(ConfigError, match=r"rules\.0\.kind"):
        load_constitution(f)


def test_invalid_yaml_names_the_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("forbidden:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_policy(f)
