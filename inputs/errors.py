"""The one exception every input reader raises, and the one-line form every refusal is printed in.

    raise InputError("duplicate key 'lr' (lines 3 and 9)", "configs/x.yaml", fix="keep one of them")
    str(err) == "duplicate key 'lr' (lines 3 and 9) (configs/x.yaml): keep one of them"

The CLI (train/cli.py `user_errors_exit_2`) prints `error: <message>` and exits with code 2. Every part is clipped
to a bounded length on one line, so a hostile input can never make the message itself large.
"""

from __future__ import annotations

import re

PART_CHARS = 240  # the most characters of one part (what, file, key, fix) that a message shows
LINE_CHARS = 1000  # the most characters of a whole message line

_BREAKS = re.compile(r"\s*[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+\s*")  # what str.splitlines splits on
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")  # other control characters (escapes)


def clip(text: object, limit: int = PART_CHARS) -> str:
    """`text` on one line, control characters shown as \\xNN, at most `limit` characters (the cut marked
    '...')."""
    line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", _BREAKS.sub(" ", str(text))).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def one_line(what: str, where: object = None, fix: str = "") -> str:
    """`<what> (<where>): <fix>`, each part clipped."""
    line = clip(what) + (f" ({clip(where)})" if where not in (None, "") else "") + (f": {clip(fix)}" if fix else "")
    return clip(line, LINE_CHARS)


class InputError(ValueError):
    """A file or value a user handed the stack that cannot be used as it is: `what` is wrong, in `file` (and at
    `key`, when there is one), and the `fix`."""

    def __init__(self, what: str, file: object = None, key: str | None = None, fix: str = ""):
        self.what, self.file, self.key, self.fix = clip(what), file, key, fix
        where = ", ".join(clip(part) for part in (file, key) if part not in (None, ""))
        super().__init__(one_line(self.what, where, fix))
