"""The results of an ablation sweep (`train/ablate.py`): one row per variant, aggregated over its seeds.

    <sweep>/results.csv   variant, width, params, non_embedding_params, seeds, val_loss_mean, val_loss_std,
                          val_bpb_mean, val_bpb_std, tokens_per_s, wall_s
    <sweep>/results.md    the same as a Markdown table (printed at the end of the sweep)
    <sweep>/val_loss.png  validation loss vs step, one line per variant (mean over seeds), min-max band

Per run: the last `val/loss` and `val/bpb` (the end-of-training validation), the median of the logged
`perf/tokens_per_s` (median: the intervals with a validation in them are slower), and the wall time of
`pretrain()` (data preparation included). Means and sample standard deviations are over seeds; metrics are
read with `train.report.read_metrics`.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from train.report import read_metrics, series


@dataclass
class RunResult:
    variant: str
    seed: int
    width: str  # the matched knob, e.g. "d_ff=347" ("" when not resized)
    params: int
    non_embedding_params: int
    val_loss: float
    val_bpb: float
    tokens_per_s: float
    wall_s: float
    curve: dict[int, float]  # step -> val/loss

    @classmethod
    def read(cls, variant: str, seed: int, run_dir: Path, width: str) -> RunResult:
        rows = read_metrics(run_dir)
        info = json.loads((run_dir / "ablate.json").read_text())
        steps, losses = series(rows, "val/loss")
        _, bpb = series(rows, "val/bpb")
        _, tok_s = series(rows, "perf/tokens_per_s")
        nan = math.nan
        finished = losses and not info.get("halted")  # a halted run's last validation is not its result
        return cls(variant, seed, width, info["params"], info["non_embedding_params"],
                   losses[-1] if finished else nan, bpb[-1] if finished else nan,
                   statistics.median(tok_s) if tok_s else nan, info["wall_s"], dict(zip(steps, losses)))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # a halted seed: no result (statistics.stdev rejects NaN)
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(results: list[RunResult]) -> list[dict]:
    rows = []
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]
        loss, loss_std = _mean_std([r.val_loss for r in runs])
        bpb, bpb_std = _mean_std([r.val_bpb for r in runs])
        rows.append({"variant": variant, "width": runs[0].width, "params": runs[0].params,
                     "non_embedding_params": runs[0].non_embedding_params, "seeds": len(runs),
                     "val_loss_mean": loss, "val_loss_std": loss_std, "val_bpb_mean": bpb, "val_bpb_std": bpb_std,
                     "tokens_per_s": statistics.fmean(r.tokens_per_s for r in runs),
                     "wall_s": statistics.fmean(r.wall_s for r in runs)})
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [title, "", "| variant | params | non-emb. params | width | val loss | val bpb | tokens/s | wall (s) |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['params']:,} | {r['non_embedding_params']:,} | {r['width'] or '-'} | "
                     f"{r['val_loss_mean']:.4f} ± {r['val_loss_std']:.4f} | {r['val_bpb_mean']:.4f} ± "
                     f"{r['val_bpb_std']:.4f} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_curves(results: list[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for variant in dict.fromkeys(r.variant for r in results):
        curves = [r.curve for r in results if r.variant == variant]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        values = [[c[s] for c in curves] for s in steps]  # (steps, seeds)
        line, = ax.plot(steps, [statistics.fmean(v) for v in values], marker="o", markersize=3, label=variant)
        if len(curves) > 1:
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(sweep_dir: Path, sweep: dict, results: list[RunResult]) -> str:
    """Writes results.csv, results.md and val_loss.png into sweep_dir; returns the Markdown."""
    rows = aggregate(results)
    with (sweep_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seeds = ", ".join(str(s) for s in sweep["seeds"])
    title = (f"### Ablation `{sweep['name']}` (base `{sweep['base']}`, seeds {seeds}, match: "
             f"{sweep.get('match') or 'none'}; val loss/bpb: mean ± std over seeds at the last step)")
    text = markdown(rows, title)
    (sweep_dir / "results.md").write_text(text)
    plot_curves(results, sweep_dir / "val_loss.png", f"ablation: {sweep['name']} (mean over seeds, min-max band)")
    return text
