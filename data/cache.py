"""Cache files that are either complete or absent: atomic writes, checked sidecars, stale temps, a build lock.

Every cached file `F` (a tokenizer, a token file) is written as `F.tmp-<host>-<pid>` and renamed onto `F`
(os.replace is atomic), then its sidecar `F.meta.json` is written the same way, last. The sidecar holds the
file's size and fingerprint (sha256 of its size, first and last MiB) plus what the reader needs (token count,
dtype). A file is used only if its sidecar exists and both still match, so a run killed mid-write, a truncated
copy or a damaged tokenizer (smaller than 2 MiB, so hashed whole) is rebuilt instead of failing every start.
Checking only the ends keeps a warm start from reading a 1 GB token file; damage inside a large file that
keeps its size is not detected.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path

MIB = 1 << 20
STALE_AFTER_S = 6 * 3600  # a temp file untouched this long belongs to a dead writer (any host)


def file_fingerprint(path: Path) -> str:
    """sha256 of (size, first MiB, last MiB): cheap at any size, changes when a file is cut or replaced."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(MIB))
        if size > MIB:
            f.seek(max(MIB, size - MIB))
            digest.update(f.read(MIB))
    return digest.hexdigest()[:32]


def temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def publish(tmp: Path, path: Path, **meta) -> None:
    """Move a finished temp file onto `path`, then write its sidecar (last, so it vouches for a whole file)."""
    _sidecar(path).unlink(missing_ok=True)
    os.replace(tmp, path)
    side, side_tmp = _sidecar(path), temp_path(_sidecar(path))
    side_tmp.write_text(json.dumps({"bytes": path.stat().st_size, "fingerprint": file_fingerprint(path), **meta}))
    os.replace(side_tmp, side)


def checked(path: Path) -> dict | None:
    """The sidecar's metadata if `path` is complete and unchanged since it was published, else None."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        if meta["bytes"] == path.stat().st_size and meta["fingerprint"] == file_fingerprint(path):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(cache: Path) -> None:
    """Delete temp files left by writers that died: same host and no such process, or untouched for hours."""
    host = socket.gethostname()
    for tmp in cache.glob("*.tmp-*"):
        owner, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")
        with contextlib.suppress(OSError, ValueError):
            if (owner == host and not _alive(int(pid))) or time.time() - tmp.stat().st_mtime > STALE_AFTER_S:
                tmp.unlink()


@contextlib.contextmanager
def build_lock(cache: Path, key: str):
    """One builder per cache entry: other processes (DDP ranks) wait, then find the finished files."""
    with (cache / f"{key}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
