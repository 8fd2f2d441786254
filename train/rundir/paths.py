"""Where a run may write, and who may write there: run names, output folders, the run lock, stale temp files.

A run lives in `train.out_dir/<train.name>` and nowhere else, so a name is one plain folder name (no `..`, no
separator, not absolute, at most 100 characters): anything else could write over files outside the output folder.
Every command with `--out` checks it with `check_output` before it computes or writes anything: no output lands in
an input or in any run folder (it would replace config.yaml, model.safetensors or tokenizer.json), whatever --force
says; a folder output must be new or empty (never replaced); `--force` replaces only a file of the command's own
kind (`FileKind`: GGUF's magic bytes, a pairs JSONL, a report's title).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inputs.json import read_json
from train.config import ConfigError
from train.rundir.weights import CheckpointError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
MAX_NAME = 100  # characters of a run name: one folder name, with room for "-N" and temp-file suffixes
TMP = re.compile(r"\.tmp(\d+)$")
LOCK_FILE = ".lock"
WEIGHTS = "model.safetensors"
FINISHED = "finished.json"  # written last, when a run's final files are all in place (train/rundir/claim.py)
RUN_MARKS = ("tokenizer.json", "checkpoints", "metrics.csv", FINISHED, LOCK_FILE)  # beside a config.yaml
_held: dict[Path, int] = {}  # run dir -> the open lock file descriptor of this process


def check_run_name(name: str, key: str = "train.name") -> str:
    """`name` if it is one plain folder name, else a ConfigError saying how to put the run elsewhere."""
    if len(name) > MAX_NAME:
        raise ConfigError(f"{key}: a run name of {len(name)} characters; give at most {MAX_NAME}")
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{key}={name!r} must be a plain folder name (letters, digits, '.', '_', '-', not starting "
                          f"with '.'), not a path; to write runs elsewhere set --train.out_dir=DIR")
    return name


def is_run_dir(path: Path) -> bool:
    """A folder a run (or an export of one) wrote: it holds model weights, or a config.yaml beside a run's other
    files. A config.yaml alone (a project folder, a folder of configs) is not a run."""
    if (path / WEIGHTS).is_file():
        return True
    return (path / "config.yaml").is_file() and any((path / name).exists() for name in RUN_MARKS)


@dataclass(frozen=True)
class FileKind:
    """What an output file is, so `--force` replaces only a file of that kind: `name` for messages, `recognize(path)`
    True for an existing file of the kind (its magic bytes, its first line)."""

    name: str
    recognize: Callable[[Path], bool]


def starts_with(prefix: bytes) -> Callable[[Path], bool]:
    """A recognizer: the file begins with `prefix` (GGUF's magic, a report's title)."""
    def recognize(path: Path) -> bool:
        with path.open("rb") as f:
            return f.read(len(prefix)) == prefix
    return recognize


def json_object(test: Callable[[dict], bool]) -> Callable[[Path], bool]:
    """A recognizer: the file is a JSON object that passes `test` (a report's details, lm-eval's results)."""
    def recognize(path: Path) -> bool:
        try:
            return test(read_json(path, "output file"))
        except ValueError:  # not JSON, not an object: not of the kind
            return False
    return recognize


def check_output(out: str | Path, kind: FileKind | None, force: bool = False, inputs=(), own: Path | None = None,
                 flag: str = "--out") -> Path:
    """`out` if a command may write there, else CheckpointError; call it before anything is computed or written.

    `kind` None: a folder the command creates (a run, an export); it must be new or empty, whatever --force says.
    A `FileKind`: a file; an existing one is replaced only with `force` and only if it is of that kind. Either way
    `out` is not, and is not inside, any of `inputs` or any run folder (`is_run_dir`) other than `own` (the folder
    of the run this command is writing), and its folder is not a file."""
    out = Path(out)
    resolved = out.resolve()
    for source in filter(None, inputs):
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise CheckpointError(f"{flag} {out} is, holds or is inside the input {source}; write to a new "
                                  f"{'folder' if kind is None else 'file'}")
    own = own.resolve() if own is not None else None
    for folder in (resolved, *resolved.parents):
        if folder != own and folder.is_dir() and is_run_dir(folder):
            where = "is" if folder == resolved else f"is inside {folder}, which is"
            raise CheckpointError(f"{flag} {out} {where} a run folder (config.yaml / model.safetensors / "
                                  "tokenizer.json); writing there would replace that run's files: choose another path")
    parent = next((p for p in resolved.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CheckpointError(f"{flag} {out}: {parent} is a file, not a folder")
    if kind is None:
        if out.is_symlink() or out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise CheckpointError(f"{flag} {out} exists and is not an empty folder; choose a new folder (an existing "
                                  "folder is never replaced)")
        return out
    if out.is_dir():
        raise CheckpointError(f"{flag} {out} is a folder; give a file name inside it")
    if out.exists() and not force:
        raise CheckpointError(f"{flag} {out} already exists; pass --force to replace it")
    if out.exists() and not (out.is_file() and kind.recognize(out)):
        raise CheckpointError(f"{flag} {out} is not {kind.name}; --force replaces only {kind.name}")
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
