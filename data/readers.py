"""Streaming readers, one per corpus format: each yields batches of stories and never holds a whole file.

    .txt      TinyStories V2 layout: stories separated by `<|endoftext|>`. Read in 16 MiB binary chunks cut
              after the last separator in the chunk (the rest carries over), so a 2.2 GB file costs one chunk
              of memory (`datasets`' sample_by="document" makes the file one Arrow row and fails at 2 GB).
    .jsonl    one JSON object per line with a `text` string; read line by line. A `.json` file holding one
              JSON list of such objects (or of strings) is read whole: that layout is only used for small files.
    .parquet  a `text` string column (the hub's TinyStories layout, one story per row); read
              one row group at a time with pyarrow (one decoded row group in memory).
    hub       a `datasets` split (Arrow files memory-mapped from the local hub cache), iterated in batches.

`batches()` yields `(stories, progress)`: stripped non-empty stories and how far the reader moved (bytes of
the file; stories for a hub split), which feeds the progress bars. A problem with the data raises `DataError`
naming the file and the line (or row), so the user can look at it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from inputs.errors import InputError
from inputs.json import json_lines, read_json

EOT = "<|endoftext|>"
NL = b"\n"
CHUNK = 16 << 20  # bytes read per step from a .txt file
MAX_STORY = 64 << 20  # a .txt "story" longer than this means the file is not EOT-separated text
BATCH = 8192  # stories per batch from .jsonl / .parquet / hub
JSON_LIST_BYTES = 256 << 20  # a .json corpus holding one list is read whole: larger ones belong in .jsonl


class DataError(ValueError):
    """A data problem the user can fix (missing corpus, vocabulary mismatch); the CLI exits with code 2."""


def split_stories(text: str) -> list[str]:
    return [s.strip() for s in text.split(EOT) if s.strip()]


class TxtReader:
    unit = "B"

    def __init__(self, path: Path):
        self.path, self.total = path, path.stat().st_size

    def _decode(self, data: bytes, line: int) -> str:
        """Strict UTF-8; a NUL byte (never in text) or an invalid sequence names its line."""
        nul = data.find(b"\0")
        if nul >= 0:
            raise DataError(f"{self.path}:{line + data.count(NL, 0, nul)}: NUL byte: this looks like a binary "
                            "file, not UTF-8 text with stories separated by " + EOT)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}:{line + data.count(NL, 0, err.start)}: not UTF-8 text (byte "
                            f"0x{data[err.start]:02x}); re-encode the file as UTF-8") from None

    def batches(self) -> Iterator[tuple[list[str], int]]:
        sep, carry, line = EOT.encode(), b"", 1
        with self.path.open("rb") as f:
            while True:
                block = f.read(CHUNK)
                data = carry + block
                cut = len(data) if not block else data.rfind(sep)  # at the end of the file: all of it
                if cut < 0:
                    if len(data) > MAX_STORY:
                        raise DataError(f"{self.path}:{line}: no {EOT} in {MAX_STORY >> 20} MiB; a .txt corpus "
                                        f"holds stories separated by {EOT}")
                    carry = data
                    continue
                cut = cut + len(sep) if block else cut
                head, carry = data[:cut], data[cut:]
                text = self._decode(head, line)
                line += head.count(NL)
                yield split_stories(text), len(block)
                if not block:
                    return


class JsonlReader:
    unit = "B"

    def __init__(self, path: Path):
        self.path, self.total = path, path.stat().st_size

    def _text(self, row, where: str) -> str:
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            raise DataError(f"{where}: expected a JSON object with a 'text' string (or a string), "
                            f"got {json.dumps(row)[:80]}")
        return text

    def batches(self) -> Iterator[tuple[list[str], int]]:
        with self.path.open("rb") as f:
            if f.read(64).lstrip()[:1] == b"[":  # one JSON list: a small file, read whole
                try:
                    rows = read_json(self.path, "JSON corpus", top=list, limit=JSON_LIST_BYTES)
                except InputError as err:
                    raise DataError(f"{self.path}: not valid JSON ({err.what})") from None
                texts = (self._text(r, f"{self.path}: item {i}") for i, r in enumerate(rows))
                yield [t.strip() for t in texts if t.strip()], self.total
                return
            f.seek(0)
            batch, done = [], 0
            try:
                for lineno, size, row in json_lines(f, self.path):  # inputs/json.py: strict UTF-8, finite, bounded
                    done += size
                    text = "" if row is None else self._text(row, f"{self.path}:{lineno}").strip()
                    if text:
                        batch.append(text)
                    if len(batch) >= BATCH:
                        yield batch, done
                        batch, done = [], 0
            except InputError as err:
                raise DataError(f"{err.file}: bad JSON line ({err.what}); each line must be one object with a "
                                "'text' string") from None
            yield batch, done


class ParquetReader:
    unit = "B"

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.total = path, path.stat().st_size
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable parquet file ({err})") from None
        schema = self.file.schema_arrow
        if "text" not in schema.names:
            raise DataError(f"{path}: no 'text' column (columns: {schema.names})")
        kind = schema.field("text").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise DataError(f"{path}: column 'text' holds {kind}, not strings; the corpus needs one story per row")

    def batches(self) -> Iterator[tuple[list[str], int]]:
        """One row group at a time, as Python strings one slice at a time (`iter_batches` kept growing: +180 MB
        of RSS per 400k rows, where this stays flat)."""
        rows, read, done = max(1, self.file.metadata.num_rows), 0, 0
        for group in range(self.file.num_row_groups):
            column = self.file.read_row_group(group, columns=["text"]).column(0)
            for start in range(0, len(column), BATCH):
                texts = column.slice(start, BATCH).to_pylist()
                read += len(texts)
                step = self.total * read // rows - done  # bytes, pro rata by rows
                done += step
                yield [t.strip() for t in texts if t and t.strip()], step


class HubReader:
    """One split of a `datasets` DatasetDict; identity is the split's fingerprint (datasets' own hash of the
    cached Arrow data), so a warm start needs no pass over the stories."""

    unit = "story"

    def __init__(self, dataset, name: str):
        if "text" not in dataset.column_names:
            raise DataError(f"{name}: no 'text' column (columns: {dataset.column_names})")
        self.dataset, self.path, self.total = dataset, name, len(dataset)

    def batches(self) -> Iterator[tuple[list[str], int]]:
        for batch in self.dataset.iter(batch_size=BATCH):
            texts = batch["text"]
            yield [t.strip() for t in texts if isinstance(t, str) and t.strip()], len(texts)


READERS = {".txt": TxtReader, ".jsonl": JsonlReader, ".json": JsonlReader, ".parquet": ParquetReader}
