"""Atomic file writes: write a temporary file beside the target, then rename it into place.

A rename within one folder is atomic on POSIX, so a reader (or a resumed run) sees the old file or the complete
new one, never half of one. The temporary name `.<name>.tmp<PID>` is what `train.rundir.paths.remove_stale_tmp`
deletes when a SIGKILL left it behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """`with replacing(path) as tmp:` write `tmp`; on success it replaces `path`, on an error it is removed and
    `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)
