"""The plots of an ablation sweep (train/ablate/report.py writes them):

    val_loss.png              validation loss vs step, mean over seeds, min-max band
    val_loss_vs_compute.png   the same against training tokens, training seconds (the logged throughput summed
                              over the logged intervals: validation and data preparation left out) and
                              training FLOPs (tokens x the variant's FLOPs per token, train/ablate/param_match.py)
    lr_grid.png               with `lrs:`: selection-split loss vs learning rate per variant (mean over seeds,
                              min-max bars), the chosen learning rate circled
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs, x_of) -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, mean, min, max) over the runs' common validation steps; x_of(run, step) gives the x value."""
    steps = sorted(set.intersection(*(set(r.curve) for r in runs)))
    xs = [statistics.fmean(x_of(r, s) for r in runs) for s in steps]
    values = [[r.curve[s] for r in runs] for s in steps]  # (steps, seeds)
    return xs, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _draw(ax, results, x_of) -> None:
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]
        xs, mean, low, high = _mean_curve(runs, x_of)
        if not xs:
            continue
        line, = ax.plot(xs, mean, marker="o", markersize=3, label=variant)
        if len(runs) > 1:
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.grid(alpha=0.3)


def plot_curves(results, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _draw(ax, results, lambda r, s: s)
    ax.set(xlabel="step", ylabel="validation loss (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_compute(results, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    axes_x = (("training tokens", lambda r, s: s * r.tokens_per_step),
              ("training seconds", lambda r, s: r.elapsed.get(s, math.nan)),
              ("training FLOPs", lambda r, s: s * r.tokens_per_step * r.flops_per_token))
    for ax, (label, x_of) in zip(axes, axes_x):
        _draw(ax, results, x_of)
        ax.set_xlabel(label)
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[0].legend()
    fig.suptitle(f"{title} (mean over seeds, min-max band)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr_grid(grid, chosen, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    picked = {r.variant: r.lr for r in chosen}
    for variant in dict.fromkeys(r.variant for r in grid):
        lrs = sorted({r.lr for r in grid if r.variant == variant})
        losses = [[r.selection_loss for r in grid if r.variant == variant and r.lr == lr] for lr in lrs]
        mean = [statistics.fmean(v) for v in losses]
        err = [[m - min(v) for m, v in zip(mean, losses)], [max(v) - m for m, v in zip(mean, losses)]]
        line = ax.errorbar(lrs, mean, yerr=err, marker="o", markersize=4, capsize=3, label=variant)
        best = lrs.index(picked[variant])
        ax.plot([lrs[best]], [mean[best]], "o", markersize=12, fillstyle="none", color=line[0].get_color())
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="selection-split loss (nats/token)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
