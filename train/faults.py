"""Surviving faults: pre-emption (SIGTERM) and the messages that say how to go on.

- A kill at any moment (SIGKILL, power loss) loses at most the steps since the last checkpoint: checkpoints
  are written atomically (`train/rundir/checkpoint.py`) and `train.resume=auto` takes the newest complete one.
- SIGTERM (a scheduler's pre-emption, `kill PID`, `scancel`): `PreemptionCheckpoint` notes the signal, and at
  the next optimizer-step boundary every rank agrees to stop (an any-reduce of the flag, so a signal that
  reached only rank 0 stops all ranks at the same step), `checkpoints/last.ckpt` is written, and the run ends
  with `Preempted`: a one-line message on how to resume and exit code 0. It replaces Lightning's own SIGTERM
  handler during `fit` (which raises `SIGTERMException` on whichever rank got the signal, at slightly
  different steps, and saves nothing); a SIGTERM before training starts still ends the process at once.
- A non-finite loss skips its step; `train.max_bad_steps` in a row raise `TrainingHalted` (train/module.py)
  naming the step and `last_good_checkpoint`; the CLI prints it as one line and exits with code 1.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L


class Preempted(SystemExit):
    """Training stopped on SIGTERM after saving a checkpoint; exits with code 0 (the message is printed)."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM: save `ckpt_dir/last.ckpt` at the next optimizer-step boundary and stop training."""

    def __init__(self, ckpt_dir: Path):
        self.path = Path(ckpt_dir) / "last.ckpt"
        self.received = False
        self.saved_step: int | None = None  # the step of the pre-emption checkpoint, once written

    def on_train_start(self, trainer, pl_module) -> None:
        self.received, self.saved_step = False, None
        if threading.current_thread() is threading.main_thread():  # Lightning restores its handlers after fit
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.received = True  # no I/O in a signal handler: the work happens at the next step boundary

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: a checkpoint here would lose the partial gradient
        if trainer.strategy.reduce_boolean_decision(self.received, all=False):
            trainer.save_checkpoint(self.path)  # through AtomicCheckpointIO; every rank calls it (FSDP gathers)
            self.saved_step = trainer.global_step
            trainer.should_stop = True


def preempted_step(trainer) -> int | None:
    """The step a SIGTERM stopped this trainer at, or None if it was not pre-empted."""
    return next((cb.saved_step for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint)), None)


def preemption_message(trainer) -> str:
    cb = next(cb for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint))
    return (f"pre-empted (SIGTERM) at step {cb.saved_step}: saved {cb.path}; run the same command with "
            "--train.resume=auto to continue")


def last_good_checkpoint(trainer) -> str | None:
    """The newest checkpoint this run saved (or resumed from): what `train.resume=auto` would pick up."""
    cb = trainer.checkpoint_callback
    saved = cb and (getattr(cb, "best_model_path", "") or getattr(cb, "last_model_path", ""))
    return saved or trainer.ckpt_path or None
