"""Surviving faults: Ctrl-C and pre-emption (SIGINT, SIGTERM) and the messages that say how to go on.

- A kill at any moment (SIGKILL, power loss) loses at most the steps since the last checkpoint: checkpoints
  are written atomically (`train/rundir/checkpoint.py`) and rerunning the command (`train.resume=auto`) takes the
  newest complete one.
- SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption, `kill PID`, `scancel`): `PreemptionCheckpoint` notes the
  signal, and at the end of the current micro-batch every rank agrees to stop (an any-reduce of the flag, so a
  signal that reached only rank 0 stops all ranks at the same point). At an optimizer-step boundary it saves
  `checkpoints/last.ckpt` and stops; in the middle of a gradient accumulation (a large `train.grad_accum`) it stops
  at once, discarding the partial gradient, and saves the state of the last boundary: the weights and optimizer have
  not moved since, and the loop's position is the one recorded there, so the resumed run redoes the step from its
  first micro-batch and gives the same losses as an uninterrupted one (before the first boundary of a launch there
  is nothing new to save: the newest checkpoint holds it). The run ends with `Preempted`: it prints the exact
  command that resumes and exits with 128 + the signal (130 for SIGINT, 143 for SIGTERM), like a shell's killed
  job. A second Ctrl-C quits at once without saving. These handlers replace Lightning's during `fit` (Lightning's
  SIGTERM handler raises on whichever rank got the signal and saves nothing); a signal before training starts
  ends the process at once.
- A non-finite loss skips its step; `train.max_bad_steps` in a row raise `TrainingHalted` (train/module.py)
  naming the step and `last_good_checkpoint`; the CLI prints it as one line and exits with code 1.
"""

from __future__ import annotations

import copy
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import lightning as L

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C, SIGINT", signal.SIGTERM: "SIGTERM"}


class Preempted(SystemExit):
    """Training stopped on SIGINT or SIGTERM (the message, already printed, says how to resume); exit code
    128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(128 + signum)
        self.message = message


class StopNow(Exception):
    """Raised inside `fit` to leave it in the middle of a gradient accumulation."""


class PreemptionCheckpoint(L.Callback):
    """On SIGINT or SIGTERM: stop at the end of the current micro-batch, saving `ckpt_dir/last.ckpt` (see above)."""

    def __init__(self, ckpt_dir: Path):
        self.path = Path(ckpt_dir) / "last.ckpt"
        self.signum: int | None = None  # the stop signal this process received
        self.stopped = False  # training was stopped by a signal (on any rank)
        self.saved_step: int | None = None  # the step of the checkpoint saved on the way out, if one was
        self.boundary: dict | None = None  # the loop's state at the last optimizer-step boundary of this launch
        self.rewind: dict | None = None  # that state, while a checkpoint is saved mid-accumulation
        self.announce = True  # print a line when the signal arrives (rank 0)

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum, self.stopped, self.saved_step, self.boundary = None, False, None, None
        self.announce = trainer.is_global_zero
        if threading.current_thread() is threading.main_thread():  # Lightning restores the handlers after fit
            for signum in SIGNAL_NAMES:
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            signal.default_int_handler(signum, frame)  # a second Ctrl-C: KeyboardInterrupt, nothing saved
        self.signum = signum  # the work happens at the end of the micro-batch; os.write is safe in a handler
        if self.announce:
            again = " (a second Ctrl-C quits without it)" if signum == signal.SIGINT else ""
            os.write(2, f"\nstopping after this micro-batch to save a checkpoint{again}\n".encode())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        boundary = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        stop = trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False)
        if boundary and not stop:
            if trainer.accumulate_grad_batches > 1:  # a few counters: what a checkpoint saved here would hold
                self.boundary = copy.deepcopy(trainer.fit_loop.state_dict())
            return
        if not stop:
            return
        self.stopped = True
        if boundary or self.boundary is not None:
            self.rewind = None if boundary else self.boundary
            trainer.save_checkpoint(self.path, weights_only=False)  # atomic; every rank calls it (FSDP gathers)
            self.rewind = None
            self.saved_step = trainer.global_step
        if boundary:
            trainer.should_stop = True
        else:
            raise StopNow  # the partial gradient is dropped; Lightning finalizes the loggers on its way out

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.rewind is not None:
            checkpoint["loops"]["fit_loop"] = self.rewind


def stopped_by_signal(trainer) -> PreemptionCheckpoint | None:
    """The trainer's PreemptionCheckpoint if a signal stopped its training, else None."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint) and cb.stopped), None)


def preemption_message(cb: PreemptionCheckpoint, resume: bool | str) -> str:
    name = SIGNAL_NAMES.get(cb.signum or signal.SIGTERM)
    saved = (f"saved {cb.path} (step {cb.saved_step})" if cb.saved_step is not None else
             "no optimizer step finished since the last checkpoint, nothing new to save")
    return f"stopped ({name}): {saved}; to resume, run: {resume_command(resume)}"


def resume_command(resume: bool | str, argv: list[str] | None = None) -> str:
    """The command line of this process, with `--train.resume=auto` in place of a resume setting that would not
    continue this run (false, a checkpoint path). `argv`: the interpreter's command line (`sys.orig_argv`)."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    if argv[1:2] == ["-c"] or not argv:  # a worker process (the ablation runner's): its driver says what to run
        return "the same command again"
    if len(argv) > 1 and Path(argv[1]).name == "tinystack":  # the console script: python .../bin/tinystack ...
        argv = ["tinystack", *argv[2:]]
    if resume in ("auto", True, "true"):
        return shlex.join(argv)
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--train.resume="):
            skip = False
            continue
        skip = arg == "--train.resume"  # its value is the next argument
        if not skip:
            out.append(arg)
    return shlex.join([*out, "--train.resume=auto"])


def last_good_checkpoint(trainer) -> str | None:
    """The newest checkpoint this run saved (or resumed from): what `train.resume=auto` would pick up."""
    cb = trainer.checkpoint_callback
    saved = cb and (getattr(cb, "best_model_path", "") or getattr(cb, "last_model_path", ""))
    return saved or trainer.ckpt_path or None
