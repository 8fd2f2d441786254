"""Byte-level BPE tokenizer trained on the corpus with Hugging Face `tokenizers` (as GPT-2 does).

Byte-level: text is first mapped to bytes, so every string is encodable and decode(encode(s)) == s.
`<|endoftext|>` is a special token (id 0), never split, that ends every story.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.corpus import EOT, DataError


def train_tokenizer(stories: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(stories, trainer=trainer, length=len(stories))
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}; a run directory must hold tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for truncated or invalid JSON
        raise DataError(f"{path}: not a valid tokenizer file ({str(err)[:120]})") from None


def eot_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(EOT)


def token_byte_lengths(tokenizer: Tokenizer) -> list[int]:
    """Bytes of text each token id stands for (byte-level: one alphabet char = one byte); EOT counts 1."""
    lengths = [0] * tokenizer.get_vocab_size()
    for token, idx in tokenizer.get_vocab().items():
        lengths[idx] = 1 if token == EOT else len(token)
    return lengths
