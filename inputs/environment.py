"""The environment's refusals as one line: a file the process may not read or write, a read-only file system, a
full disk, a name too long, a missing path, text that is not UTF-8, input nested past the recursion limit, YAML a
library read on its own. The CLI handler (train/cli.py `user_errors_exit_2`) prints `error: <refusal(err)>` and
exits with code 2; anything `refusal` does not know (None) is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

import yaml

from inputs.errors import clip, one_line

WRITE_ELSEWHERE = "write somewhere else (--train.out_dir, --data.cache_dir, --out)"
OS_ERRORS = {
    errno.EACCES: ("permission denied", "fix the permissions, or use a path you may read and write"),
    errno.EPERM: ("operation not permitted", "fix the permissions, or use a path you may read and write"),
    errno.EROFS: ("read-only file system", WRITE_ELSEWHERE),
    errno.ENOSPC: ("no space left on device", "free some space, or " + WRITE_ELSEWHERE),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or " + WRITE_ELSEWHERE),
    errno.EFBIG: ("file too large for this file system", WRITE_ELSEWHERE),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter name (at most 255 bytes per folder or file name)"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("is a folder", "give the path of a file"),
    errno.ENOTDIR: ("not a folder", "a part of the path is a file: check the path"),
    errno.EEXIST: ("already exists (a file where a folder goes, or the reverse)", "choose another path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links in the path"),
    errno.EMLINK: ("too many links", WRITE_ELSEWHERE),
}
BY_CLASS = {PermissionError: errno.EACCES, FileNotFoundError: errno.ENOENT, IsADirectoryError: errno.EISDIR,
            NotADirectoryError: errno.ENOTDIR}  # raised by code with a message and no errno


def _os_error(err: OSError) -> str | None:
    code = err.errno or BY_CLASS.get(type(err))
    if code not in OS_ERRORS:
        return None
    what, fix = OS_ERRORS[code]
    if err.errno is None and err.args:  # raised with its own message: that message says what
        what = str(err)
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return one_line(what, " -> ".join(paths), fix)


def refusal(err: BaseException) -> str | None:
    """`<what> (<path>): <fix>` for an error of the environment or of input below the stack's own readers, else
    None."""
    if isinstance(err, OSError):
        return _os_error(err)
    if isinstance(err, UnicodeDecodeError):
        return one_line(f"text that is not UTF-8 (byte 0x{err.object[err.start]:02x} at byte offset {err.start})",
                        fix="save it as UTF-8")
    if isinstance(err, UnicodeError):
        return one_line(f"text that cannot be written as UTF-8 ({clip(err, 120)})",
                        fix="remove the character (a lone surrogate: a byte that was not UTF-8)")
    if isinstance(err, RecursionError):
        return one_line("input nested too deeply", fix="flatten it")
    if isinstance(err, yaml.YAMLError):
        return one_line(f"not valid YAML ({clip(err, 160)})", fix="fix the YAML syntax")
    return None
