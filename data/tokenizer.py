"""Byte-level BPE tokenizer trained on the corpus with Hugging Face `tokenizers` (as GPT-2 does).

Byte-level: text is first mapped to bytes, so every string is encodable and decode(encode(s)) == s.
`<|endoftext|>` is a special token (id 0), never split, that ends every story. A run imported from Hugging Face
(train/interop/import_hf.py) keeps its own tokenizer and end-of-text token (data.eos_token): `eot_id` is the run's.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.corpus import EOT, DataError
from inputs.files import JSON_BYTES, read_text


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


def load_tokenizer(path: str | Path, eos_token: str | None = None) -> Tokenizer:
    """The tokenizer in `path`; `eos_token` (a run's data.eos_token) is recorded as its end-of-text token."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"tokenizer not found: {path}; a run directory must hold tokenizer.json")
    text = read_text(path, JSON_BYTES, "tokenizer file")  # a regular file, bounded, strict UTF-8
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception for truncated or invalid JSON
        raise DataError(f"{path}: not a valid tokenizer file ({str(err)[:120]})") from None
    return tokenizer if eos_token is None else set_eot(tokenizer, eos_token, str(path))


def set_eot(tokenizer: Tokenizer, token: str, source: str = "the tokenizer") -> Tokenizer:
    """Record `token` as the tokenizer's end-of-text token (`eot_id`); a token it lacks raises DataError."""
    if tokenizer.token_to_id(token) is None:
        raise DataError(f"{source} has no end-of-text token {token!r} (data.eos_token); the run directory mixes "
                        "files from different runs")
    tokenizer.eot_token = token  # an instance attribute: eot_token / eot_id read it
    return tokenizer


def eot_token(tokenizer: Tokenizer) -> str:
    """The text of the end-of-text token: the run's data.eos_token (set by load_tokenizer), else <|endoftext|>."""
    return getattr(tokenizer, "eot_token", EOT)


def eot_id(tokenizer: Tokenizer) -> int:
    """The id that ends every story and completion, pads batches and stops generation."""
    idx = tokenizer.token_to_id(eot_token(tokenizer))
    if idx is None:
        raise DataError(f"the tokenizer has no end-of-text token {eot_token(tokenizer)!r}; load it with its run "
                        "(train.rundir.load.load_run), which records the run's data.eos_token")
    return idx


def token_byte_lengths(tokenizer: Tokenizer) -> list[int]:
    """Bytes of text each token id stands for (byte-level: one alphabet char = one byte); EOT counts 1."""
    lengths = [0] * tokenizer.get_vocab_size()
    for token, idx in tokenizer.get_vocab().items():
        lengths[idx] = 1 if token == EOT else len(token)
    return lengths
