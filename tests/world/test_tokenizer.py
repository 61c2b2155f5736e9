from transformers import AutoTokenizer


def test_roundtrip_every_training_text(world_tokenizer, world):
    tok = world_tokenizer
    for _d, problems in world.splits.test.items():
        for p in problems[:50]:
            for text in (p.bare_text, p.worked_text):
                ids = tok(text)["input_ids"]
                assert ids[0] == tok.bos_token_id
                assert tok.unk_token_id not in ids
                assert tok.decode(ids, skip_special_tokens=True) == text


def test_digits_are_single_tokens(world_tokenizer):
    ids = world_tokenizer("0123456789", add_special_tokens=False)["input_ids"]
    assert len(ids) == 10 and len(set(ids)) == 10


def test_saved_tokenizer_reloads_with_autotokenizer(world_tokenizer, tmp_path):
    world_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("47+85=231")["input_ids"] == world_tokenizer("47+85=231")["input_ids"]
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"
