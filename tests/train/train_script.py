"""`python -m train` as a subprocess for the fault and multi-process tests, plus test-only callbacks.

    python tests/train/train_script.py --section.key=value ...

Like `python -m train` (same CLI, exit codes, and Lightning re-executes this file for ranks > 0), with:
- TEST_BATCH_DELAY=S: sleep S seconds after every batch, so a test can signal the process mid-run;
- TEST_STAGE=pretrain|sft|dpo|grpo: which stage's command it is (default pretrain);
- TEST_NAN=RANK:STEP: the loss of rank RANK at optimizer step STEP becomes NaN (that rank only);
- every rank writes the run directory it trained in to `<out_dir>/.rank<r>` (the run-dir agreement check), and
  a hash of every sample it trained on, per step, to `<out_dir>/.rank<r>.batches` (the data-sharding check), and
the sum of its trainable parameters at the end to `<out_dir>/.rank<r>.params` (the ranks-in-lockstep check).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning as L  # noqa: E402

from train.cli import run_cli  # noqa: E402


class Hooks(L.Callback):
    def __init__(self, delay: float):
        self.delay = delay

    def on_train_start(self, trainer, pl_module):
        run_dir = Path(trainer.default_root_dir)
        (run_dir.parent / f".rank{trainer.global_rank}").write_text(str(run_dir))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rows = " ".join(str(hash(tuple(row.tolist()))) for row in batch[0])  # the samples this rank trained on
        with (Path(trainer.default_root_dir).parent / f".rank{trainer.global_rank}.batches").open("a") as f:
            f.write(f"{trainer.global_step} {rows}\n")
        time.sleep(self.delay)

    def on_train_end(self, trainer, pl_module):
        total = sum(float(p.detach().double().sum()) for p in pl_module.parameters() if p.requires_grad)
        (Path(trainer.default_root_dir).parent / f".rank{trainer.global_rank}.params").write_text(repr(total))


class InjectNaN(L.Callback):
    """Makes the loss of one rank at one optimizer step NaN (through the module's compute_loss)."""

    def __init__(self, spec: str):
        self.rank, self.step = map(int, spec.split(":"))

    def on_train_start(self, trainer, pl_module):
        compute_loss = pl_module.compute_loss

        def poisoned(batch):
            loss, logs = compute_loss(batch)
            if trainer.global_rank == self.rank and trainer.global_step == self.step:
                loss = loss * float("nan")
            return loss, logs

        pl_module.compute_loss = poisoned


def stage():
    """TEST_STAGE -> (train function, config loader)."""
    name = os.environ.get("TEST_STAGE", "pretrain")
    if name == "pretrain":
        from train.config import load_config
        from train.run import pretrain

        return pretrain, load_config
    if name == "sft":
        from finetune.config import finetune_config
        from finetune.sft import finetune

        return finetune, finetune_config
    from align.policy import align_config

    if name == "dpo":
        from align.dpo import train_dpo

        return train_dpo, align_config
    from align.grpo import train_grpo

    return train_grpo, align_config


def main(cfg) -> None:
    callbacks = [Hooks(float(os.environ.get("TEST_BATCH_DELAY", "0")))]
    if os.environ.get("TEST_NAN"):
        callbacks.append(InjectNaN(os.environ["TEST_NAN"]))
    stage()[0](cfg, callbacks)


def as_argv(overrides: dict, prefix: str = "--") -> list[str]:
    """{'train': {'lr': 1e-3}} -> ['--train.lr=0.001']."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += as_argv(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


if __name__ == "__main__":
    run_cli(main, load=stage()[1])
