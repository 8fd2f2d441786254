"""Tokenize a corpus once, streaming, into memory-mapped token files cached by corpus identity and tokenizer.

Layout under `data.cache_dir` (each file published atomically with a checked sidecar, data/cache.py):
    tokenizer-<corpus key>-<vocab>-<sample>-<max stories>.json     BPE trained on a seeded story sample
    <corpus key>-<tokenizer hash>-<split settings>.<split>.bin     raw uint16 (uint32 if vocab > 65535)
                                                                   ids, each story followed by EOT
The corpus key comes from file identities (data/corpus.py), so a warm start stats and hashes the ends of
the files and maps the token files: no story is read. A cold start makes at most two passes over the text:
one samples `tokenizer_sample` stories for the BPE (reservoir, seeded; the vocabulary needs a few percent of
TinyStories, as llama2.c trains its vocabulary on a share of the shards) and counts them (the held-out split
needs the count), one encodes batches with `encode_batch_fast` (Rust threads, all cores) and appends them to
the token files. Memory stays at one batch plus the sample, whatever the corpus size.

Splits: a validation file is used as is; otherwise story i of N goes to validation when i >= N - n_val
(`held_out`). `max_stories` keeps the first N training stories, as data/corpus.py `load_stories` does. The
tokenizer sample is drawn before the count is known, so without a validation file it may include held-out
stories: they shape the vocabulary (a few merges), never the model's weights.
"""

from __future__ import annotations

import hashlib
import sys
import time
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from data.cache import build_lock, checked, clean_stale, publish, temp_path
from data.corpus import EOT, Corpus, DataError, held_out, open_corpus, sample_stories
from data.tokenizer import eot_id, train_tokenizer

ENCODE_BATCH = 4096  # stories per encode_batch_fast call: enough to keep every core busy


def content_hash(*parts: str | list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        for text in [part] if isinstance(part, str) else part:
            digest.update(text.encode("utf-8"))
            digest.update(EOT.encode("utf-8"))
    return digest.hexdigest()[:16]


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(corpus: Corpus, what: str, splits: tuple[str, ...] = ("train", "validation")) -> tqdm:
    total, unit = corpus.total(splits)
    return tqdm(total=total, unit=unit, unit_scale=True, desc=what, mininterval=2.0, file=sys.stderr)


def _tokenizer(corpus: Corpus, vocab_size: int, cache: Path, sample: int, max_stories: int
               ) -> tuple[Tokenizer, int]:
    """The cached or newly trained tokenizer, and the number of training stories read to sample it."""
    path = cache / f"tokenizer-{corpus.key}-{vocab_size}-{sample}-{max_stories}.json"
    meta = checked(path)
    if meta is not None:
        return Tokenizer.from_file(str(path)), meta["stories"]
    what = f"sampling {sample:,} stories for the tokenizer" if sample else "reading stories for the tokenizer"
    with _progress(corpus, what, ("train",)) as bar:
        stories, n = sample_stories(((b, bar.update(p)) for b, p in corpus.batches("train")),
                                    sample or sys.maxsize, limit=max_stories)
    if not stories:
        raise DataError(f"no training stories found in {corpus.path}; the files hold no text")
    start = time.time()
    _log(f"training a {vocab_size}-token BPE on {len(stories):,} of {n:,} stories "
         f"({sum(map(len, stories)) / 1e6:.0f} MB of text) ...")
    tokenizer = train_tokenizer(stories, vocab_size)
    _log(f"tokenizer trained in {time.time() - start:.0f}s")
    tmp = temp_path(path)
    tokenizer.save(str(tmp))
    publish(tmp, path, stories=n)
    return tokenizer, n


class TokenWriter:
    """Appends encoded batches to a temp file; `close` publishes it with its token and story counts."""

    def __init__(self, path: Path, dtype: type):
        self.path, self.tmp, self.dtype, self.tokens, self.stories = path, temp_path(path), dtype, 0, 0
        self.file = self.tmp.open("wb")

    def write(self, tokenizer: Tokenizer, stories: list[str], eot: int) -> None:
        for start in range(0, len(stories), ENCODE_BATCH):  # bounds the Encoding objects alive at once
            encodings = tokenizer.encode_batch_fast(stories[start:start + ENCODE_BATCH])
            ids = np.fromiter(chain.from_iterable(e.ids + [eot] for e in encodings), dtype=self.dtype)
            self.file.write(ids.tobytes())
            self.tokens, self.stories = self.tokens + len(ids), self.stories + len(encodings)

    def close(self) -> None:
        self.file.close()
        publish(self.tmp, self.path, tokens=self.tokens, stories=self.stories, dtype=np.dtype(self.dtype).name)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _encode(corpus: Corpus, tokenizer: Tokenizer, files: dict[str, Path], n_train: int, n_val_from: int) -> None:
    """One pass: training stories [0, n_train) -> train, [n_val_from, end) -> validation (held out), and the
    validation files -> validation. Stops early when nothing more can be kept."""
    eot, dtype = eot_id(tokenizer), token_dtype(tokenizer.get_vocab_size())
    writers = {split: TokenWriter(path, dtype) for split, path in files.items()}
    try:
        with _progress(corpus, "encoding") as bar:
            seen = 0
            for stories, step in corpus.batches("train"):
                writers["train"].write(tokenizer, stories[:max(0, n_train - seen)], eot)
                if not corpus.has_validation:
                    writers["validation"].write(tokenizer, stories[max(0, n_val_from - seen):], eot)
                seen += len(stories)
                bar.update(step)
                if corpus.has_validation and seen >= n_train:
                    break
            for stories, step in corpus.batches("validation"):
                writers["validation"].write(tokenizer, stories, eot)
                bar.update(step)
    except BaseException:  # a data error or Ctrl-C: leave no temp file behind
        for writer in writers.values():
            writer.discard()
        raise
    for writer in writers.values():
        writer.close()


def _map(path: Path) -> np.ndarray:
    meta = checked(path)
    if meta["tokens"] == 0:  # an empty file cannot be memory-mapped
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))


def prepare_tokens(path: str, vocab_size: int, cache_dir: str, val_fraction: float = 0.05,
                   max_stories: int = 0, tokenizer: Tokenizer | None = None, tokenizer_sample: int = 100_000
                   ) -> tuple[Tokenizer, dict[str, np.ndarray]]:
    """Open the corpus, train (or reuse) the tokenizer, and return memory-mapped token arrays per split.
    `tokenizer_sample`: stories the BPE is trained on (0 = all)."""
    corpus = open_corpus(path)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    clean_stale(cache)
    if tokenizer is not None and tokenizer.get_vocab_size() != vocab_size:
        raise DataError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but data.vocab_size={vocab_size}; "
                        f"set --data.vocab_size={tokenizer.get_vocab_size()}")
    with build_lock(cache, corpus.key):
        n = 0  # training stories, when known without a pass (a sample read them all)
        if tokenizer is None:
            tokenizer, n = _tokenizer(corpus, vocab_size, cache, tokenizer_sample, max_stories)
            n = 0 if max_stories else n
        split_key = f"{max_stories}" if corpus.has_validation else f"{max_stories}-{val_fraction}"
        stem = f"{corpus.key}-{content_hash(tokenizer.to_str())}-{split_key}"
        files = {split: cache / f"{stem}.{split}.bin" for split in ("train", "validation")}
        if any(checked(f) is None for f in files.values()):
            if corpus.has_validation:
                n_train, n_val_from = max_stories or sys.maxsize, sys.maxsize
            else:
                n = n or sample_stories(corpus.batches("train"), 0)[1]  # count only
                n_val_from = n - held_out(n, val_fraction)
                n_train = min(max_stories or n_val_from, n_val_from)
            _encode(corpus, tokenizer, files, n_train, n_val_from)
            if checked(files["train"])["stories"] == 0:
                raise DataError(f"no training stories found in {path}; the files hold no text")
    return tokenizer, {split: _map(f) for split, f in files.items()}
