"""The numeric flags of the sampling and evaluation commands, checked by name in one place before anything loads.

    check_flags(args, "num_samples", "max_new_tokens", "temperature", "top_k", "top_p", "seed")

A count (`--n`, `--k`, `--num_samples`, `--max_new_tokens`, ...) is at least 1; a seed is in [0, 2**32 - 1] (what
numpy, Lightning and every generator here accept alike); the sampling settings are model/generate.py's
`check_sampling`. A refusal is a ConfigError, `--flag=value: why`, that the command prints as one line (exit 2).
`note_capped` is the note a command prints when the model's context caps `--max_new_tokens`.
"""

from __future__ import annotations

import sys

from model.generate import check_sampling
from train.config import ConfigError

SEED_MAX = 2**32 - 1
COUNTS = ("n", "k", "num_samples", "max_new_tokens", "samples", "batch_size", "candidates")
SEEDS = ("seed", "prompt_seed")


def check_flags(args, *names: str) -> None:
    """ConfigError for the first of `names` (attributes of the parsed `args`) holding a value out of its range."""
    for name in names:
        value = getattr(args, name)
        if name in COUNTS and value < 1:
            raise ConfigError(f"--{name}={value}: must be at least 1")
        if name in SEEDS and value is not None and not 0 <= value <= SEED_MAX:
            raise ConfigError(f"--{name}={value}: a seed is in [0, {SEED_MAX}]")
    sampling = {k: getattr(args, k, None) for k in ("temperature", "top_k", "top_p") if k in names}
    try:
        check_sampling(sampling.get("temperature", 0.0), sampling.get("top_k"), sampling.get("top_p"))
    except ValueError as err:
        raise ConfigError(f"--{err}") from None


def note_capped(requested: int, room: int | None, prompt_tokens: int) -> None:
    """Tell the user on stderr when `room` (model/generate.py `context_room`) caps `--max_new_tokens`."""
    if room is not None and requested > room:
        print(f"note: --max_new_tokens={requested} capped at {room}: the model's context holds {room + prompt_tokens} "
              f"tokens and the prompt takes {prompt_tokens}", file=sys.stderr)
