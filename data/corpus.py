"""A corpus: a hub id, a local directory (or file) or `tinystories-sample`, opened as streaming readers per split.

`tinystories-sample` is the sample shipped with the package, or $TINYSTORIES_DIR when set (data/sources.py
`resolve_path`, applied by `open_corpus`, so every command that reads a corpus follows the same rule).

A local directory may hold `.txt` files (stories separated by `<|endoftext|>`, as TinyStories V2 ships),
`.jsonl`/`.json` or `.parquet` files with a `text` column (as the hub's parquet has, one story per row); see
data/readers.py for how each is streamed. Files whose name contains `valid`/`val`/`test` form the validation
split; without one, the last `val_fraction` of the training stories is held out. Only the top level is read.

`Corpus.key` identifies the data without reading it: per local file its resolved path, size, mtime and a hash
of its first and last MiB (data/cache.py `file_fingerprint`); per hub split the `datasets` fingerprint. A full
content hash would read 2 GB on every warm start (seconds of I/O); an edit that keeps size and mtime and
touches only the middle of a file is the one change this misses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data.cache import file_fingerprint
from data.readers import EOT, READERS, DataError, HubReader, split_stories
from data.sources import resolve_path
from inputs.files import regular_file

__all__ = ["EOT", "DataError", "split_stories", "Corpus", "open_corpus", "load_stories", "held_out",
           "sample_stories"]
VALID_NAMES = ("valid", "val.", "val_", "validation", "test")


def _hint(path: str) -> str:
    return (f"point data.path at a local directory of .txt (stories separated by {EOT}), .jsonl or .parquet "
            f"files, or use --data.path=tinystories-sample (the sample shipped with the package; got '{path}')")


class Corpus:
    """Readers per split ("train", and "validation" when the data has one) and the identity that keys caches."""

    def __init__(self, path: str, splits: dict[str, list], identity: list):
        self.path, self.splits = path, splits
        self.key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
        self.has_validation = bool(splits.get("validation"))

    def batches(self, split: str) -> Iterator[tuple[list[str], int]]:
        for reader in self.splits.get(split, []):
            yield from reader.batches()

    def total(self, splits: tuple[str, ...] = ("train", "validation")) -> tuple[int, str]:
        """Progress total and its unit (bytes of local files, stories of a hub split)."""
        readers = [r for s in splits for r in self.splits.get(s, [])]
        return sum(r.total for r in readers), readers[0].unit if readers else "B"


def _open_local(path: str, local: Path) -> Corpus:
    files = sorted(p for p in local.iterdir() if p.is_file()) if local.is_dir() else [regular_file(local, "data.path")]
    files = [p for p in files if p.suffix in READERS]
    if not files:
        raise DataError(f"no .txt, .jsonl or .parquet files at {local}; " + _hint(path))
    splits: dict[str, list] = {"train": [], "validation": []}
    identity = []
    for file in files:
        split = "validation" if any(tag in file.name.lower() for tag in VALID_NAMES) else "train"
        splits[split].append(READERS[file.suffix](file))
        stat = file.stat()
        identity.append([split, str(file.resolve()), stat.st_size, stat.st_mtime_ns, file_fingerprint(file)])
    return Corpus(path, splits, identity)


def _open_hub(name: str) -> Corpus:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name)
    except Exception as err:  # no network, unknown id, ...: the fix is the same
        raise DataError(f"could not load '{name}' from the Hugging Face hub ({type(err).__name__}); "
                        + _hint(name)) from None
    splits = {s: [HubReader(dataset[s], f"{name}:{s}")] for s in ("train", "validation") if s in dataset}
    return Corpus(name, splits, [[s, name, dataset[s]._fingerprint] for s in splits])


def open_corpus(path: str) -> Corpus:
    path = resolve_path(path)
    local = Path(path).expanduser()
    if local.exists():
        return _open_local(path, local)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise DataError(f"data path not found: {path}; " + _hint(path))
    return _open_hub(path)


def held_out(n_stories: int, val_fraction: float) -> int:
    """How many of the last training stories form the validation split when the corpus has none."""
    return max(1, int(n_stories * val_fraction))


def sample_stories(batches: Iterator[tuple[list[str], int]], k: int, seed: int = 0, limit: int = 0
                   ) -> tuple[list[str], int]:
    """A uniform seeded sample of k stories in one pass (reservoir sampling, Algorithm R, vectorised per batch)
    and the number of stories seen; `limit` stops after that many stories, k=0 only counts. Memory: the sample."""
    rng, sample, seen = np.random.default_rng(seed), [], 0
    for stories, _ in batches:
        if limit:
            stories = stories[:limit - seen]
        fill = min(len(stories), k - len(sample))
        sample += stories[:fill]
        rest = len(stories) - fill
        if rest and k:
            slots = rng.integers(0, np.arange(seen + fill, seen + len(stories)) + 1)  # story t: slot in [0, t]
            for i in np.flatnonzero(slots < k):
                sample[slots[i]] = stories[fill + i]
        seen += len(stories)
        if limit and seen >= limit:
            break
    return sample, seen


def load_stories(path: str, val_fraction: float = 0.05, max_stories: int = 0) -> dict[str, list[str]]:
    """-> {"train": [...], "validation": [...]} lists of story strings, all in memory: for small corpora and
    stages that need the strings (fine-tuning); pretraining streams through data/tokens.py instead."""
    corpus = open_corpus(path)
    train = [s for stories, _ in corpus.batches("train") for s in stories]
    valid = [s for stories, _ in corpus.batches("validation") for s in stories]
    if not train:
        raise DataError(f"no training stories found in {path}; " + _hint(path))
    if not valid:
        n_val = held_out(len(train), val_fraction)
        train, valid = train[:-n_val], train[-n_val:]
    if max_stories:
        train = train[:max_stories]
    return {"train": train, "validation": valid}
