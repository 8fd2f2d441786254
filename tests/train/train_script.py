"""`python -m train` as a subprocess for the fault and multi-process tests, plus test-only callbacks.

    python tests/train/train_script.py --section.key=value ...

Like `python -m train` (same CLI, exit codes, and Lightning re-executes this file for ranks > 0), with:
- TEST_BATCH_DELAY=S: sleep S seconds after every batch, so a test can signal the process mid-run;
- every rank writes the run directory it trained in to `<out_dir>/.rank<r>` (the run-dir agreement check), and
  a hash of every sample it trained on, per step, to `<out_dir>/.rank<r>.batches` (the data-sharding check).
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


def main(cfg) -> None:
    from train.run import pretrain

    pretrain(cfg, [Hooks(float(os.environ.get("TEST_BATCH_DELAY", "0")))])


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
    run_cli(main)
