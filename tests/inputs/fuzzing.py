"""The fuzzing harness (GUIDE.md §9): run an entry point in-process on a mutated input and hold it to the contract

    success (exit 0), or exit code 2 with ONE line `error: ...` on stderr (the last; progress output of work done
    before the refusal may precede it);
    never a traceback (any other exception fails the example), never a hang (a deadline per example), and no byte
    changed in another run's folder (`tree_digest` before and after).

Examples run in a fresh working directory each (relative outputs land there), offline (no hub), with a cap on the
address space (a size that would allocate the machine fails the example instead of swapping it), and every input
tried is counted (`Tally`) so the run reports how many distinct inputs it saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import signal
import tempfile
import threading
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

EXAMPLE_SECONDS = 60  # per example; the slowest valid ones (a run set up to the training loop) take ~2 s
MEMORY_HEADROOM = 4 << 30  # address space an example may add to what the test process already maps


def fuzz_settings(examples: int) -> settings:
    """Reproducible (derandomized, no example database), no per-example deadline of hypothesis' own."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=list(HealthCheck))


class Hang(BaseException):
    """Raised by the deadline: a BaseException, so no `except Exception` in the code under test swallows it."""


SPECIAL = "special"  # the folder, in each example's working directory, of paths that are not regular files


def make_specials(work: Path) -> tuple[Path, ...]:
    """special/fifo.<ext> (FIFOs without a writer), special/dir.<ext> (folders), special/zero.<ext> (links to
    /dev/zero, which never ends), for ext in txt, yaml, jsonl, json, ckpt -> the FIFOs."""
    root = work / SPECIAL
    root.mkdir()
    exts = ("txt", "yaml", "jsonl", "json", "ckpt")
    fifos = tuple(root / f"fifo.{ext}" for ext in exts)
    for fifo in fifos:
        os.mkfifo(fifo)
    for ext in exts:
        (root / f"dir.{ext}").mkdir()
        (root / f"zero.{ext}").symlink_to("/dev/zero")
    return fifos


def _release(fifo: Path, fired: list) -> None:
    """Open the FIFO's write end and close it: a reader blocked in open() or read() gets end-of-file."""
    fired.append(fifo)
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def guarded(seconds: int = EXAMPLE_SECONDS):
    """A fresh working directory with its special files, a deadline (SIGALRM raises Hang; a reader blocked on one of
    the FIFOs is released and the hang recorded), an address-space cap, and no network."""
    fired: list = []

    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    old_cwd, old_env = os.getcwd(), {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as work:
        timers = [threading.Timer(seconds, _release, (fifo, fired)) for fifo in make_specials(Path(work))]
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        os.chdir(work)
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        cap = _mapped_bytes() + MEMORY_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        for timer in timers:
            timer.start()
        signal.alarm(seconds)
        try:
            yield Path(work)
        finally:
            signal.alarm(0)
            for timer in timers:
                timer.cancel()
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            signal.signal(signal.SIGALRM, old_handler)
            os.chdir(old_cwd)
            for key, value in old_env.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    assert not fired, f"blocked on {fired[0]} for {seconds} s (a FIFO was opened)"


def run_entry(call, seconds: int = EXAMPLE_SECONDS) -> tuple[int, str]:
    """(exit code, stderr) of `call(work)` under `guarded` (`work`: the example's working directory); an exception
    other than SystemExit propagates (a traceback is a failure)."""
    err = io.StringIO()
    with guarded(seconds) as work, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            call(work)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr`, progress bars aside (tqdm draws them after a carriage return)."""
    return [line for line in stderr.split("\n") if line.strip() and not line.startswith("\r")]


def check_outcome(code: int, stderr: str) -> str:
    """'ok' or 'refused'. A refusal is exit code 2 and one line `error: ...`, the last on stderr: before it only the
    progress of work the command did first (preparing data: progress bars and their notes), never another error or
    a traceback."""
    if code == 0:
        return "ok"
    lines = error_lines(stderr)
    assert code == 2, f"exit code {code}; stderr: {stderr[-2000:]}"
    assert lines and lines[-1].startswith("error: ") and len(lines[-1]) <= 2000, stderr[-2000:]
    assert not any(line.lstrip().startswith(("error", "Traceback", "File ")) or "Error" in line
                   for line in lines[:-1]), f"more than the error line on stderr: {stderr[-2000:]}"
    return "refused"


def tree_digest(root: Path) -> str:
    """sha256 over every path, kind and byte under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
        digest.update(b"d" if path.is_dir() else b"f")
    return digest.hexdigest()


class Blob(bytes):
    """Bytes whose repr is short (a failing example of a 1 MB file is reported by size and hash)."""

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:12]}, starts {bytes(self[:48])!r})"


class Tally:
    """Counts the examples, the distinct inputs among them and their outcomes, for the report line."""

    def __init__(self, name: str):
        self.name, self.inputs, self.outcomes, self.start = name, set(), {}, time.perf_counter()

    def add(self, outcome: str, *parts) -> None:
        self.inputs.add(hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest())
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def report(self, capsys) -> str:
        line = (f"fuzz {self.name}: {sum(self.outcomes.values())} examples, {len(self.inputs)} distinct inputs, "
                + ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
                + f", {time.perf_counter() - self.start:.1f} s")
        with capsys.disabled():
            print(f"\n{line}")
        return line
