"""The JSON and JSON Lines reader: metadata files (a Hugging Face config.json, adapter_config.json, a weights index,
ablate.json), preference pairs and JSONL corpora.

Python's json module is lenient where a boundary must not be: it reads `NaN`, `Infinity` and `1e999` as floats, a
lone surrogate escape (`"\\ud800"`) as a string that cannot be written back as UTF-8, and recurses once per
nesting level. Here a value must be finite (unless `finite=False`), its strings valid text, its nesting at most
MAX_DEPTH levels (deeper input, even past the recursion limit, is one InputError), and its bytes strict UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from inputs.errors import InputError, clip
from inputs.files import JSON_BYTES, LINE_BYTES, decode, read_text
from inputs.tree import MAX_DEPTH, check_tree


def _constant(name: str):
    raise InputError(f"{name} is not a JSON number", fix="write a finite number")


def parse_json(text: str, where: object, *, finite: bool = True):
    """One JSON value from `text`; InputError (naming `where`) for invalid JSON or any rule above."""
    try:
        value = json.loads(text, parse_constant=_constant if finite else None)
    except InputError as err:
        raise InputError(err.what, where, fix=err.fix) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})", where,
                         fix="fix the JSON syntax there") from None
    except RecursionError:
        raise InputError(f"nested deeper than {MAX_DEPTH} levels", where, fix="flatten the value") from None
    except ValueError as err:  # an integer too long to convert
        raise InputError(f"a value that cannot be read ({clip(str(err).split(';')[0], 120)})", where,
                         fix="write a plainer value") from None
    return check_tree(value, where, finite=finite)


def read_json(path: str | Path, what: str = "JSON file", top: type = dict, limit: int = JSON_BYTES):
    """A JSON file whose top-level value is a `top` (an object: dict); InputError naming the file otherwise."""
    value = parse_json(read_text(path, limit, what), path)
    if not isinstance(value, top):
        expected = {dict: "an object {...}", list: "a list [...]"}.get(top, top.__name__)
        raise InputError(f"{what} holds {type(value).__name__}, not {expected}", path,
                         fix=f"give a {what} with {expected} at the top")
    return value


def json_lines(f: BinaryIO, where: object, line_limit: int = LINE_BYTES) -> Iterator[tuple[int, int, object]]:
    """(line number, bytes read, value or None for a blank line) for each line of a JSONL file opened in binary
    mode; a line is strict UTF-8 and at most `line_limit` bytes (a file with no newline is not read whole)."""
    number, offset = 0, 0
    while True:
        raw = f.readline(line_limit + 1)
        if not raw:
            return
        number += 1
        at = f"{where}:{number}"
        if len(raw) > line_limit:
            raise InputError(f"a line longer than {line_limit} bytes", at, fix="one JSON value per line")
        text = decode(raw, at, "line", offset)
        offset += len(raw)
        yield number, len(raw), parse_json(text, at) if text.strip() else None
