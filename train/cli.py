"""Command-line plumbing shared by every entry point: `--config FILE` plus dotted overrides, and user
errors (bad config, data or checkpoint) printed as one line with exit code 2 instead of a traceback.
A run halted by non-finite losses (`TrainingHalted`) prints one line and exits with code 1; a run stopped by
Ctrl-C or SIGTERM saves a checkpoint, prints the command that resumes and exits with code 130 / 143
(`train/faults.py`); Ctrl-C outside training exits with 130 and one line. Harmless third-party messages are
silenced first (`train/quiet.py`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from data.corpus import DataError
from inputs.environment import refusal
from inputs.errors import LINE_CHARS, InputError, clip
from train.config import Config, ConfigError, load_config
from train.distributed import launch_rank
from train.errors import TrainingHalted
from train.quiet import quiet
from train.rundir.weights import CheckpointError

USER_ERRORS = (ConfigError, DataError, CheckpointError, InputError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the entry points' flags, whose usage errors (an unknown flag, a missing or malformed value) are
    one line and exit code 2, like every other refusal, instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {clip(message, LINE_CHARS)}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


@contextmanager
def user_errors_exit_2(*more: type[BaseException]) -> Iterator[None]:
    """`with user_errors_exit_2():` a user error (USER_ERRORS, or `more`) inside, or a refusal of the environment
    (permission, read-only file system, disk full, name too long, a missing path, text that is not UTF-8, nesting
    past the recursion limit: inputs/environment.py), prints `error: <message>` on one line and exits with code 2;
    a closed stdout (`| head`) exits with code 1 quietly; anything else propagates."""
    try:
        yield
    except (*USER_ERRORS, *more) as err:
        print(f"error: {clip(err, LINE_CHARS)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # the reader of stdout left (`... | head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(1)
    except Exception as err:
        message = refusal(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    config, rest, i = None, [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return config, rest


def run_cli(main: Callable[[Config], object], argv: list[str] | None = None, usage: str = "",
            load: Callable[[str | None, list[str]], Config] = load_config) -> None:
    """Parse `--config FILE` and overrides with `load` (a stage may merge in other configs), run `main`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage or "usage: --config FILE [--section.key=value ...]")
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    quiet()
    try:
        with user_errors_exit_2():
            config, overrides = parse_args(argv)
            main(load(config, overrides))
    except KeyboardInterrupt:  # outside training (reading data, evaluating): nothing more to save
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except TrainingHalted as err:
        if launch_rank() == 0:  # every rank halts together; one line is enough
            print(f"error: training halted: {err}", file=sys.stderr)
        sys.exit(1)
