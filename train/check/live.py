"""`BandWatch`: during training, each logged metric against the band of the run's recipe (when one matches exactly
and is measured), with one warning line per metric the first time it leaves its band (train/check/verdict.py
`Leaving`). The band is found at the first logged step, when the run's logged metric names are known (they tell
a GRPO run from a DPO one). A band folder that cannot be read never stops training: `python -m train.check` names
the bad file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L

from inputs.errors import InputError
from train.check.bands import BANDS, MEASURED, match, read_bands, recipe_keys
from train.check.verdict import Leaving


class BandWatch(L.Callback):
    """`values`: the run's config as a mapping (as config.yaml holds it); `folder`: the band files; `tokenizer`: the
    content hash of the run's tokenizer (a band of another tokenizer is no exact match)."""

    def __init__(self, values: dict, folder: Path = BANDS, tokenizer: str | None = None):
        self.values, self.folder, self.tokenizer = values, Path(folder), tokenizer
        self.leaving: Leaving | None = None
        self.band: Path | None = None
        self.resolved = False

    def resolve(self, columns) -> None:
        self.resolved = True
        try:
            bands = read_bands(self.folder)
        except (InputError, OSError):
            return
        found = match(recipe_keys(self.values, columns, self.tokenizer), bands)
        if found is not None and not found[2] and found[1]["status"] == MEASURED:
            self.band, self.leaving = found[0], Leaving(found[1]["metrics"])

    def see(self, trainer, step: int, prefix: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        if not self.resolved:
            self.resolve(metrics)
        if self.leaving is None or not trainer.is_global_zero:
            return
        for name, value in metrics.items():
            line = self.leaving.see(name, step, value)
            if line:
                print(f"warning: {line} ({self.band})", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1  # the step metrics.csv gives this optimizer step's training metrics
        every = trainer.log_every_n_steps
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and every and (step + 1) % every == 0:
            self.see(trainer, step, "train/")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.see(trainer, trainer.global_step - 1, "val/")  # metrics.csv's step of a validation
