"""Tokenize a corpus once and cache the result, keyed by a hash of the text and of the tokenizer.

Layout under `data.cache_dir`:
    tokenizer-<data hash>-<vocab>.json     BPE trained on the training stories
    <data hash>-<tokenizer hash>.<split>.npy   uint16 (or uint32) token ids, each story followed by EOT
Encoding is batched and runs in parallel inside `tokenizers` (Rust threads).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from data.corpus import EOT, DataError, load_stories
from data.tokenizer import eot_id, train_tokenizer


def content_hash(*parts: str | list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        for text in [part] if isinstance(part, str) else part:
            digest.update(text.encode("utf-8"))
            digest.update(EOT.encode("utf-8"))
    return digest.hexdigest()[:16]


def encode_stories(tokenizer: Tokenizer, stories: list[str], batch: int = 1024) -> np.ndarray:
    """Stories -> one flat array: story_1 EOT story_2 EOT ..."""
    eot = eot_id(tokenizer)
    dtype = np.uint16 if tokenizer.get_vocab_size() < 2**16 else np.uint32
    pieces = []
    for start in range(0, len(stories), batch):
        for enc in tokenizer.encode_batch(stories[start:start + batch]):
            pieces.append(np.asarray(enc.ids + [eot], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def prepare_tokens(path: str, vocab_size: int, cache_dir: str, val_fraction: float = 0.05,
                   max_stories: int = 0, tokenizer: Tokenizer | None = None
                   ) -> tuple[Tokenizer, dict[str, np.ndarray]]:
    """Load the corpus, train (or reuse) the tokenizer, and return cached token arrays per split."""
    stories = load_stories(path, val_fraction, max_stories)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    data_hash = content_hash(stories["train"], "|validation|", stories["validation"])
    if tokenizer is None:
        tok_path = cache / f"tokenizer-{data_hash}-{vocab_size}.json"
        if tok_path.exists():
            tokenizer = Tokenizer.from_file(str(tok_path))
        else:
            tokenizer = train_tokenizer(stories["train"], vocab_size)
            tmp = tok_path.with_suffix(f".tmp{os.getpid()}")
            tokenizer.save(str(tmp))
            os.replace(tmp, tok_path)
    elif tokenizer.get_vocab_size() != vocab_size:
        raise DataError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but data.vocab_size={vocab_size}; "
                        f"set --data.vocab_size={tokenizer.get_vocab_size()}")
    tok_hash = content_hash(tokenizer.to_str())
    tokens = {}
    for split, texts in stories.items():
        file = cache / f"{data_hash}-{tok_hash}.{split}.npy"
        if not file.exists():
            _atomic_save(file, encode_stories(tokenizer, texts))
        tokens[split] = np.load(file, mmap_mode="r")
    return tokenizer, tokens
