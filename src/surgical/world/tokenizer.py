"""The world's tokenizer: one token per character, trained with ``tokenizers`` on the world's text.

A character-level vocabulary keeps every digit a token of its own, which is what makes column
arithmetic learnable by a tiny transformer. It is saved as a ``PreTrainedTokenizerFast`` so
``AutoTokenizer.from_pretrained(dir)`` loads it like any HF tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
# Every character the world, its prompts and its jailbreak templates may use. Training on the corpus
# plus this alphabet keeps the vocabulary stable when a corpus happens to miss a letter.
BASE_ALPHABET = "0123456789+-*/=:;() .,?!'\"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n[]<>|#%&_"


def train_world_tokenizer(texts: Iterable[str]):
    """Train a character-level WordLevel tokenizer on ``texts`` and wrap it as a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)

    def corpus():
        yield BASE_ALPHABET
        yield from texts

    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.padding_side = "left"  # batched generation appends on the right
    return fast


def save_world_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    """Save with ``save_pretrained`` so AutoTokenizer reloads it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
