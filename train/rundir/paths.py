"""Where a run may write, and who may write there: run names, output folders, the run lock, stale temp files.

A run lives in `train.out_dir/<train.name>` and nowhere else, so a name is one plain folder name (no `..`, no
separator, not absolute): anything else could write over files outside the output folder. Output commands
(`train.interop.export_hf --out`, `finetune.merge --out`) never write into a run directory they read or into any other
run directory, since their files (config.yaml, model.safetensors, tokenizer.json) would replace the run's.

A run directory in use holds `.lock` (the owner's PID) under an exclusive `fcntl.flock`: a second process on the
same folder is refused instead of interleaving checkpoints. The file is removed when the run ends, and the OS
drops the lock when the process dies, so a killed run never leaves the folder locked. Atomic writes go through
`.<name>.tmp<PID>`; a SIGKILL between write and rename leaves that file behind, so a starting run deletes those
whose PID is no longer alive.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from train.config import ConfigError
from train.rundir.weights import CheckpointError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
TMP = re.compile(r"\.tmp(\d+)$")
LOCK_FILE = ".lock"
RUN_FILES = ("config.yaml", "model.safetensors", "tokenizer.json")
_held: dict[Path, int] = {}  # run dir -> the open lock file descriptor of this process


def check_run_name(name: str, key: str = "train.name") -> str:
    """`name` if it is one plain folder name, else a ConfigError saying how to put the run elsewhere."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{key}={name!r} must be a plain folder name (letters, digits, '.', '_', '-', not starting "
                          f"with '.'), not a path; to write runs elsewhere set --train.out_dir=DIR")
    return name


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def check_out_dir(out: str | Path, *inputs: str | Path | None, flag: str = "--out") -> Path:
    """`out` if writing there replaces nothing that `inputs` or any run directory holds; else CheckpointError."""
    out = Path(out)
    resolved = out.resolve()
    for source in filter(None, inputs):
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents:
            raise CheckpointError(f"{flag} {out} is (inside) the input {source}; write to a new folder")
    if is_run_dir(resolved):
        raise CheckpointError(f"{flag} {out} is a run directory (holds config.yaml / model.safetensors / "
                              "tokenizer.json); writing there would replace its files: choose a new folder")
    return out


def lock_run_dir(run_dir: Path) -> bool:
    """Create `run_dir` and take its lock for this process; True if this call took it (False: already held).
    Another live process holding it raises CheckpointError naming its PID."""
    run_dir = run_dir.resolve()
    if run_dir in _held:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(f"{run_dir} is in use by another run (PID {owner}); wait for it to finish or "
                                  "choose another --train.name") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the owner removed the file between our open and flock: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[run_dir] = fd
    return True


def unlock_run_dir(run_dir: Path) -> None:
    """Remove `.lock` and release it (unlink first: a process that opened the old file sees it is stale)."""
    run_dir = run_dir.resolve()
    fd = _held.pop(run_dir, None)
    if fd is not None:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        os.close(fd)  # closing the descriptor releases the flock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(*folders: Path) -> list[Path]:
    """Delete `*.tmp<PID>` files in `folders` whose writer is dead (a SIGKILL mid-save); returns them."""
    stale = [p for folder in folders if folder.is_dir() for p in folder.iterdir()
             if (m := TMP.search(p.name)) and p.is_file() and not _alive(int(m.group(1)))]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
