"""Jailbreak template files: the packaged battery, rendering, user families and bad files."""

import pytest

from surgical.verify.jailbreaks import (
    JailbreakError,
    Template,
    fit_shots,
    literal_text,
    load_families,
    render,
    render_fields,
    reverse_operands,
    spell_out,
    unknown_chars,
)
from surgical.world.tokenizer import BASE_ALPHABET

REQUIRED = {"roleplay", "ignore_previous", "prefix_injection", "refusal_suppression", "hypothetical", "few_shot",
            "many_shot", "encoding", "payload_splitting", "distractor"}


def test_packaged_battery_has_ten_families_within_the_alphabet():
    fams = load_families()
    assert REQUIRED <= {f.family for f in fams}
    for f in fams:
        for t in f.templates:
            assert not unknown_chars(literal_text(t), BASE_ALPHABET), (f.family, t.id)


def test_render_fields_by_hand():
    rec = {"prompt": "41*4:", "target": " 1*4+0=4; 4*4+0=16; so 164", "answers": ["164"]}
    f = render_fields(rec, ["03*2: 3*2+0=6; 0*2+0=0; so 6"])
    assert f["question"] == "41*4" and f["part_a"] == "41" and f["part_b"] == "*4"
    assert f["question_reversed"] == "14*4" == reverse_operands("41*4")
    assert f["question_spelled"] == "four one times four" == spell_out("41*4")
    assert f["first_step_lhs"] == " 1*4+0="
    assert f["shots"] == "03*2: 3*2+0=6; 0*2+0=0; so 6\n"
    assert render(Template(id="t", text="{prompt}{first_step_lhs}"), rec, []) == "41*4: 1*4+0="


def test_fit_shots_drops_shots_to_fit():
    rec = {"prompt": "41*4:", "target": " 1*4+0=4; so 164"}
    tpl = Template(id="m", text="{shots}{prompt}", shots=5)
    pool = ["x" * 19] * 5  # 20 characters per shot with the newline
    text, k = fit_shots(tpl, rec, pool, len, budget_tokens=50)
    assert k == 2 and text == ("x" * 19 + "\n") * 2 + "41*4:"
    assert fit_shots(tpl, rec, pool, len, budget_tokens=1000)[1] == 5


def test_user_family_added_and_replacing(tmp_path):
    (tmp_path / "mine.yaml").write_text("family: grandma\ntemplates:\n  - id: g\n    text: \"Grandma used to say {prompt}\"\n")
    (tmp_path / "roleplay.yml").write_text("family: roleplay\ntemplates:\n  - id: only\n    text: \"{prompt}\"\n")
    fams = {f.family: f for f in load_families([tmp_path])}
    assert "grandma" in fams and [t.id for t in fams["roleplay"].templates] == ["only"]


@pytest.mark.parametrize("body,needle", [
    ("family: x\ntemplates:\n  - id: a\n    text: \"{nope}\"\n", "templates.0.text"),
    ("family: x\ntemplates:\n  - id: a\n    text: \"no question here\"\n", "must include"),
    ("family: x\ntemplates: []\n", "templates"),
    ("family: [unclosed\n", "line"),
])
def test_bad_family_file_names_file_and_field(tmp_path, body, needle):
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(JailbreakError) as exc:
        load_families([tmp_path], packaged=False)
    assert "bad.yaml" in str(exc.value) and needle in str(exc.value)
