"""Load TinyStories-style corpora with `datasets`: a hub id, or a local directory of files.

A local directory may hold `.txt` files (stories separated by `<|endoftext|>`, as TinyStories V2 ships),
`.jsonl` or `.parquet` files with a `text` column (as the hub's parquet has, one story per row). Files
whose name contains `valid`/`val`/`test` form the validation split; without one, the last
`val_fraction` of the training stories is held out. Only the directory's top level is read.
"""

from __future__ import annotations

from pathlib import Path

EOT = "<|endoftext|>"
VALID_NAMES = ("valid", "val.", "val_", "validation", "test")
FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A data problem the user can fix (missing corpus, vocabulary mismatch); the CLI exits with code 2."""


def split_stories(text: str) -> list[str]:
    return [s.strip() for s in text.split(EOT) if s.strip()]


def _hint(path: str) -> str:
    return (f"point data.path at a local directory of .txt (stories separated by {EOT}), .jsonl or .parquet "
            f"files, e.g. --data.path=../shared/data/tinystories (got '{path}')")


def _rows_to_stories(dataset, fmt: str) -> list[str]:
    if fmt == "text":  # sample_by="document": one row per file
        return [story for row in dataset["text"] for story in split_stories(row)]
    if "text" not in dataset.column_names:
        raise DataError(f"the data has no 'text' column (columns: {dataset.column_names})")
    return [s.strip() for s in dataset["text"] if s and s.strip()]


def _load_files(files: list[Path]) -> dict[str, list[str]]:
    from datasets import load_dataset

    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for path in files:
        fmt = FORMATS[path.suffix]
        kwargs = {"sample_by": "document"} if fmt == "text" else {}
        dataset = load_dataset(fmt, data_files=str(path), split="train", **kwargs)
        split = "validation" if any(tag in path.name.lower() for tag in VALID_NAMES) else "train"
        splits[split] += _rows_to_stories(dataset, fmt)
    return splits


def _load_hub(name: str) -> dict[str, list[str]]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name)
    except Exception as err:  # no network, unknown id, ...: the fix is the same
        raise DataError(f"could not load '{name}' from the Hugging Face hub ({type(err).__name__}); "
                        + _hint(name)) from None
    return {split: _rows_to_stories(dataset[split], "parquet") for split in dataset
            if split in ("train", "validation")}


def load_stories(path: str, val_fraction: float = 0.05, max_stories: int = 0) -> dict[str, list[str]]:
    """-> {"train": [...], "validation": [...]} lists of story strings."""
    local = Path(path).expanduser()
    if local.exists():
        files = sorted(p for p in local.iterdir() if p.is_file()) if local.is_dir() else [local]
        files = [p for p in files if p.suffix in FORMATS]
        if not files:
            raise DataError(f"no .txt, .jsonl or .parquet files at {local}; " + _hint(path))
        splits = _load_files(files)
    elif path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise DataError(f"data path not found: {path}; " + _hint(path))
    else:
        splits = _load_hub(path)
    train, valid = splits.get("train", []), splits.get("validation", [])
    if not train:
        raise DataError(f"no training stories found in {path}; " + _hint(path))
    if not valid:
        n_val = max(1, int(len(train) * val_fraction))
        train, valid = train[:-n_val], train[-n_val:]
    if max_stories:
        train = train[:max_stories]
    return {"train": train, "validation": valid}
