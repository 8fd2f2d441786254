"""The check's picture: one panel per metric, the band (mean, min..max, mean -+ 2 sd) and the run over it (or the
band alone: `python -m train.check.draw`)."""

from __future__ import annotations

import math
from pathlib import Path

from train.check.verdict import envelope
from train.rundir.paths import FileKind, starts_with

PNG = FileKind("a PNG image", starts_with(b"\x89PNG"))  # what check_output lets a plot replace


def plot_check(title: str, curves: dict[str, dict[int, float]] | None, metrics: dict[str, dict], path: Path,
               dpi: int = 110) -> None:
    """Draw each band metric the run logged (every metric, with no run: curves None) into one PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in metrics if curves is None or curves.get(name)]
    cols = min(3, len(names)) or 1
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        stats, run = metrics[name], (curves or {}).get(name, {})
        steps = stats["step"]
        edges = [envelope(stats, i) for i in range(len(steps))]
        ax.fill_between(steps, [e[0] for e in edges], [e[1] for e in edges], color="tab:blue", alpha=0.15,
                        label="band (range, mean -+ 2 sd)")
        ax.fill_between(steps, stats["min"], stats["max"], color="tab:blue", alpha=0.25, label="seed range")
        ax.plot(steps, stats["mean"], color="tab:blue", linewidth=1, label="seed mean")
        shown = sorted(run)
        if shown:
            ax.plot(shown, [run[s] for s in shown], color="tab:red", linewidth=1.2,
                    marker="o" if len(shown) < 20 else None, markersize=3, label="this run")
        top = max(e[1] for e in edges)
        if top > 0 and any(v > 3 * top for v in run.values() if math.isfinite(v)):
            ax.set_ylim(top=3 * top)  # a diverged run would flatten the band into a line
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
