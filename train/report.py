"""Results people look at: the run's merged `metrics.csv` and its plots (`loss.png` of training and validation
loss, with the n-gram baselines as dashed lines; a module may ask for others through its `plots()`, e.g. GRPO's
`reward.png`).

Lightning's CSVLogger writes one `logs/version_k/metrics.csv` per launch (a resumed run adds a version);
they are merged by step here, later launches winning for steps logged twice.
"""

from __future__ import annotations

import csv
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    rows: dict[tuple, dict] = {}
    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in files:
        with path.open() as f:
            for i, row in enumerate(csv.DictReader(f)):
                values = {k: float(v) for k, v in row.items() if v not in ("", None)}
                if "step" in values:
                    key = (int(values["step"]), tuple(sorted(k for k in values if k != "epoch")), i)
                    rows[key] = values
    return [rows[k] for k in sorted(rows)]


def series(rows: list[dict], name: str) -> tuple[list[float], list[float]]:
    points = {int(r["step"]): r[name] for r in rows if name in r}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


Plot = tuple[str, tuple[str, ...], int]  # y-axis label, metric names, moving-average window (1 = raw)
BASELINE = "baseline/"  # a metric drawn as a horizontal line at its last value (the n-gram baselines, data/ngram.py)
LOSS_PLOTS: dict[str, Plot] = {"loss.png": ("loss (nats/token)", ("train/loss", "val/loss", "baseline/unigram",
                                                                  "baseline/bigram", "baseline/trigram"), 1)}


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of each value and the (window - 1) before it (fewer at the start)."""
    return [sum(values[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def write_metrics_and_plot(run_dir: Path, plots: dict[str, Plot] = LOSS_PLOTS) -> None:
    """Merge the run's metrics into metrics.csv and draw each plot: {file name: (y label, names, window)}."""
    rows = read_metrics(run_dir)
    if not rows:
        return
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for file_name, (ylabel, names, window) in plots.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in names:
            steps, values = series(rows, name)
            if steps and name.startswith(BASELINE):
                ax.axhline(values[-1], linestyle="--", linewidth=1, color=f"C{len(ax.lines)}",
                           label=f"{name.removeprefix(BASELINE)} {values[-1]:.2f}")
            elif steps:
                label = name if window == 1 else f"{name} ({window}-step mean)"
                ax.plot(steps, moving_average(values, window), label=label,
                        marker="o" if name.startswith("val") else None)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(run_dir.name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / file_name, dpi=120)
        plt.close(fig)
