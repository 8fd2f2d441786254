"""Helpers for tests of refused commands: the one line a refusal prints, and the bytes it must leave alone."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest


def snapshot(*folders: Path) -> dict[str, str]:
    """Path -> sha256 of every file under `folders` (compare before and after a refused command)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused(main, argv: list, capsys) -> str:
    """Run a command's `main(argv)`, which must exit with code 2 after one `error: ...` line on stderr; that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def copy_run(src: Path, dst: Path) -> Path:
    """A run folder's copy without its checkpoints and logs (to edit without touching the original)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "logs", ".lock"))
    return dst
