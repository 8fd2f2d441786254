"""Opening a file a user names: it must be a regular file (a FIFO, device, socket or folder is refused from its
`stat`, before any open that could block), at most `limit` bytes, and strict UTF-8 text without NUL characters or
lone surrogates.

    text = read_text("configs/pretrain/demo.yaml", CONFIG_BYTES, "config file")

A UTF-16 file (with a byte-order mark) or a stray Latin-1 byte is one InputError naming the file, the byte offset
and "save it as UTF-8", never a UnicodeDecodeError traceback. `check_text` applies the same rule to strings that
come from elsewhere (a command-line argument: an undecodable byte there arrives as a lone surrogate).
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path

from inputs.errors import InputError

KIB, MIB = 1 << 10, 1 << 20
CONFIG_BYTES = 256 * KIB  # a YAML config, sweep or stage file, a run's config.yaml (ours are a few KiB)
JSON_BYTES = 64 * MIB  # a JSON metadata file: config.json, adapter_config.json, a weights index
LINE_BYTES = 64 * MIB  # one line of a JSONL file (a preference pair, a story)

SAVE_AS_UTF8 = "save it as UTF-8"
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int, path: Path, what: str) -> InputError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return InputError(f"{what} is {kind}, not a regular file", path, fix="give the path of a regular file")


def regular_file(path: str | Path, what: str = "file") -> Path:
    """`path`, refused unless it names a regular file; only `stat` is called, so a FIFO never blocks."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{what} not found", path, fix="check the path") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(mode, path, what)
    return path


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n / KIB:g} KiB"


def read_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    path = regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO swapped in after the stat: no wait
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode, path, what)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{what} is larger than {_size(limit)}", path,
                         fix=f"is this the right file? it may be at most {_size(limit)}")
    return data


def decode(data: bytes, where: object, what: str = "file", offset: int = 0) -> str:
    """Strict UTF-8 (a leading UTF-8 byte-order mark is dropped); `offset`: where `data` starts in its file."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise InputError(f"{what} is {name} text, not UTF-8", where, fix=SAVE_AS_UTF8)
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start
        raise InputError(f"{what} is not UTF-8: byte 0x{data[at]:02x} at byte offset {offset + at}", where,
                         fix=SAVE_AS_UTF8) from None


def check_text(text: str, where: object, key: str | None = None) -> str:
    """`text`, refused if it holds a NUL character or a lone surrogate (no UTF-8 encoding: an undecodable byte of
    a command-line argument, or a JSON/YAML escape such as \\ud800)."""
    match = _NOT_TEXT.search(text)
    if match is None:
        return text
    code = ord(match.group())
    if code == 0:
        problem = "a NUL character"
    elif 0xDC80 <= code <= 0xDCFF:
        problem = f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8,"
    else:
        problem = f"a lone surrogate (U+{code:04X}), which is not text,"
    raise InputError(f"{problem} at character {match.start()}", where, key,
                     fix=f"remove it ({SAVE_AS_UTF8} if it came from a file)")


def read_text(path: str | Path, limit: int, what: str = "file") -> str:
    """A regular file of at most `limit` bytes as strict UTF-8 text (see `decode` and `check_text`)."""
    return check_text(decode(read_bytes(path, limit, what), path, what), path)
