"""Silence the known harmless messages of our dependencies, each by its logger or warning category and its text,
so that every other message, a real warning included, still shows. Every entry point calls `quiet()` first (the
CLI plumbing in train/cli.py, the ablation runner and its workers, the `tinystack` command).

    Lightning's adverts        "💡 Tip: For seamless cloud ..." (litlogger, litmodels)   logger ...utilities.rank_zero
    Lightning's device summary "GPU available: ...", "TPU available: ..."                 the same logger (INFO)
    torch's pytree notice      FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised inside
                               Lightning's own pytree helper, not by our code
    Lightning's resume warning UserWarning "You're resuming from a checkpoint that ended before the epoch ended
                               ... unreliable results": our sampler restarts exactly at the checkpoint's step
                               (data/blocks.py; tests/train/test_pretrain.py resumes to the same losses)
    Lightning's folder warning UserWarning "Checkpoint directory ... exists and is not empty": a resumed run's own
                               checkpoints (a run folder is never another run's, train/rundir/claim.py)
    Lightning's val-loop note  UserWarning "You defined a `validation_step` but have no `val_dataloader`": GRPO
                               trains without validation on purpose (its module shares the validation step)

(Lightning's "`weights_only` was not set" note is avoided where it starts: our `save_checkpoint` calls say
weights_only=False, and every load is weights-only, train/rundir/checkpoint.py.)
"""

from __future__ import annotations

import logging
import re
import warnings

LOG_MESSAGES = {  # logger -> pattern of the harmless messages it emits
    "lightning.pytorch.utilities.rank_zero": r"💡 Tip: |GPU available: |TPU available: ",
    "lightning.fabric.utilities.rank_zero": r"💡 Tip: |GPU available: |TPU available: ",
}
WARNINGS = (  # (category, pattern of the message)
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (UserWarning, r"You're resuming from a checkpoint that ended before the epoch ended"),
    (UserWarning, r"Checkpoint directory .* exists and is not empty"),
    (UserWarning, r"You defined a `validation_step` but have no `val_dataloader`"),
)


class DropMessages(logging.Filter):
    """Drops the records whose message matches `pattern` (from its start); passes the rest."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet() -> None:
    """Install the filters (once per process; calling again changes nothing)."""
    for name, pattern in LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(pattern))
    for category, pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
