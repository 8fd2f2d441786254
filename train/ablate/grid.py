"""A learning rate per variant: `lrs: [...]` trains every variant at each learning rate, and each variant's is
chosen on the *selection* split only (train/ablate/splits.py):

    lr*(v) = argmin_lr  mean_seeds  selection_loss(v, lr, seed)      (a halted or NaN run counts as +inf)

(mean over `lr_seeds` when the sweep names them). Ties go to the smaller learning rate. A choice at either end
of the grid is flagged under the table (`edge_warnings`): that variant's best may lie outside the grid, so its
comparison is not yet at its own best. The table compares the variants each at its lr*, on the *test* split,
which played no part in the choice. `lr_grid.csv` holds the whole grid: variant, lr, seeds, selection and test loss
(mean and sample std over seeds) and whether it was chosen.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values and all(math.isfinite(v) for v in values) else math.inf


def choose_lrs(grid) -> dict[str, float]:
    """variant -> the learning rate with the lowest mean selection loss over its seeds."""
    chosen = {}
    for variant in dict.fromkeys(r.variant for r in grid):
        lrs = sorted({r.lr for r in grid if r.variant == variant})
        scores = {lr: _mean([r.selection_loss for r in grid if r.variant == variant and r.lr == lr]) for lr in lrs}
        chosen[variant] = min(lrs, key=lambda lr: scores[lr])  # min keeps the first (smallest) of equal scores
    return chosen


def edge_warnings(chosen: dict[str, float], lrs: list[float]) -> list[str]:
    """One line per end of the grid that some variant's choice sits on (none for a grid of one lr)."""
    if len(set(lrs)) < 2:
        return []
    out = []
    for end, word, advice in ((max(lrs), "largest", "larger"), (min(lrs), "smallest", "smaller")):
        names = [v for v, lr in chosen.items() if lr == end]
        if names:
            out.append(f"{', '.join(names)} chose the {word} learning rate of the grid ({end:g}): "
                       f"its best may lie outside it; add a {advice} one to `lrs`")
    return out


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 and all(math.isfinite(v) for v in values) else math.nan


def write_grid(grid, chosen, path: Path) -> None:
    picked = {(r.variant, r.lr) for r in chosen}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "lr", "seeds", "selection_loss_mean", "selection_loss_std", "test_loss_mean",
                         "test_loss_std", "chosen"])
        for variant in dict.fromkeys(r.variant for r in grid):
            for lr in sorted({r.lr for r in grid if r.variant == variant}):
                runs = [r for r in grid if r.variant == variant and r.lr == lr]
                sel, test = [r.selection_loss for r in runs], [r.test_loss for r in runs]
                writer.writerow([variant, f"{lr:g}", len(runs), _mean(sel), _std(sel), _mean(test), _std(test),
                                 (variant, lr) in picked])
