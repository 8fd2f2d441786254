"""Quiet commands (train/quiet.py): a training run and its resume print none of the known harmless third-party
messages, and the filters drop only those: another warning or log line of the same kind still shows."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import tiny_train_overrides
from train_script import as_argv

from train.quiet import quiet

ROOT = Path(__file__).resolve().parents[2]
HARMLESS = ["💡", "litlogger", "GPU available", "TPU available", "LeafSpec", "weights_only", "unreliable results",
            "exists and is not empty"]


def train(corpus: Path, out: Path, **extra) -> str:
    args = as_argv(tiny_train_overrides(corpus, out, **{"train.max_steps": 5, "train.ckpt_every": 2,
                                                        "train.val_every": 5, **extra}))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_a_run_and_its_resume_print_none_of_the_harmless_messages(tiny_corpus, tmp_path):
    first = train(tiny_corpus, tmp_path)  # 5 steps, checkpoints at 2 and 4: the final save is Lightning's own
    again = train(tiny_corpus, tmp_path, **{"train.resume": True, "train.max_steps": 7})  # resumed mid-epoch
    assert "Restoring states from the checkpoint" in again  # it did resume: the warnings would show here
    for text in HARMLESS:
        assert text not in first and text not in again, text


def test_only_the_known_messages_are_dropped():
    quiet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet()  # after simplefilter: its filters come first again
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        warnings.warn("You're resuming from a checkpoint that ended before the epoch ended", UserWarning, stacklevel=1)
        warnings.warn(leaf, FutureWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
        warnings.warn(leaf, UserWarning, stacklevel=1)  # the same text in another category
    assert [str(w.message) for w in caught] == ["a real problem", leaf]
    logger, seen = logging.getLogger("lightning.pytorch.utilities.rank_zero"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for message in ("💡 Tip: For seamless cloud logging ...", "GPU available: False, used: False",
                        "Restoring states from the checkpoint path at x.ckpt", "a GPU available but unused: ..."):
            logger.info(message)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert seen == ["Restoring states from the checkpoint path at x.ckpt", "a GPU available but unused: ..."]
