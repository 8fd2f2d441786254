"""The results of an ablation sweep (`train/ablate.py`): one row per variant, aggregated over its seeds.

    <sweep>/results.csv   variant, width, params, non_embedding_params, flops_per_token, seeds, val_loss_mean,
                          val_loss_std, val_bpb_mean, val_bpb_std, tokens_per_s, wall_s, and against the reference
                          (the first variant; its row has verdict "reference" and the rest empty): paired_seeds,
                          val_loss_diff_mean, val_loss_diff_ci_low, val_loss_diff_ci_high, val_loss_p,
                          val_bpb_diff_mean, val_bpb_diff_ci_low, val_bpb_diff_ci_high, val_bpb_p, verdict,
                          excluded_seeds (the variant's seeds left out of the pairing: halted/NaN here or in
                          the reference; space-separated)
    <sweep>/results.md    the same as a Markdown table (printed at the end of the sweep), with a caption and
                          warnings (fewer than 3 seeds; seed noise above the smallest difference) under it
    <sweep>/val_loss.png  validation loss vs step, one line per variant (mean over seeds), min-max band

Per run: the last `val/loss` and `val/bpb` (the end-of-training validation), the median of the logged
`perf/tokens_per_s` (median: the intervals with a validation in them are slower), and the wall time of
`pretrain()` (data preparation included). Means and sample standard deviations are over seeds; metrics are
read with `train.report.read_metrics`. The paired differences, intervals, p-values (paired t-test over
seeds, two-sided) and verdicts are those of `train/ablate_stats.py` (the formulas are in its docstring).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from train.ablate_stats import paired, verdict, warnings
from train.report import read_metrics, series

STATS = ("paired_seeds", "val_loss_diff_mean", "val_loss_diff_ci_low", "val_loss_diff_ci_high", "val_loss_p",
         "val_bpb_diff_mean", "val_bpb_diff_ci_low", "val_bpb_diff_ci_high", "val_bpb_p", "verdict",
         "excluded_seeds")


@dataclass
class RunResult:
    variant: str
    seed: int
    width: str  # the matched knob, e.g. "d_ff=347" ("" when not resized)
    params: int
    non_embedding_params: int
    flops_per_token: float  # training FLOPs per token (NaN for runs recorded before it was kept)
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
                   info.get("flops_per_token", nan), losses[-1] if finished else nan, bpb[-1] if finished else nan,
                   statistics.median(tok_s) if tok_s else nan, info["wall_s"], dict(zip(steps, losses)))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # a halted seed: no result (statistics.stdev rejects NaN)
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _finished(r: RunResult) -> bool:  # a halted run (NaN losses) is in no pair
    return math.isfinite(r.val_loss) and math.isfinite(r.val_bpb)


def aggregate(results: list[RunResult]) -> list[dict]:
    rows = []
    variants = list(dict.fromkeys(r.variant for r in results))
    ref = [r for r in results if r.variant == variants[0]]
    ref_loss = {r.seed: r.val_loss for r in ref if _finished(r)}
    ref_bpb = {r.seed: r.val_bpb for r in ref if _finished(r)}
    for variant in variants:
        runs = [r for r in results if r.variant == variant]
        loss, loss_std = _mean_std([r.val_loss for r in runs])
        bpb, bpb_std = _mean_std([r.val_bpb for r in runs])
        rows.append({"variant": variant, "width": runs[0].width, "params": runs[0].params,
                     "non_embedding_params": runs[0].non_embedding_params,
                     "flops_per_token": runs[0].flops_per_token, "seeds": len(runs),
                     "val_loss_mean": loss, "val_loss_std": loss_std, "val_bpb_mean": bpb, "val_bpb_std": bpb_std,
                     "tokens_per_s": statistics.fmean(r.tokens_per_s for r in runs),
                     "wall_s": statistics.fmean(r.wall_s for r in runs), **dict.fromkeys(STATS, "")})
        if variant == variants[0]:
            rows[-1].update(verdict="reference", excluded_seeds=" ".join(str(r.seed) for r in runs
                                                                         if r.seed not in ref_loss))
            continue
        d_loss = paired(ref_loss, {r.seed: r.val_loss for r in runs if _finished(r)})
        d_bpb = paired(ref_bpb, {r.seed: r.val_bpb for r in runs if _finished(r)})
        rows[-1].update(paired_seeds=d_loss.n, val_loss_diff_mean=d_loss.mean, val_loss_diff_ci_low=d_loss.ci_low,
                        val_loss_diff_ci_high=d_loss.ci_high, val_loss_p=d_loss.p, val_bpb_diff_mean=d_bpb.mean,
                        val_bpb_diff_ci_low=d_bpb.ci_low, val_bpb_diff_ci_high=d_bpb.ci_high, val_bpb_p=d_bpb.p,
                        verdict=verdict(d_loss), excluded_seeds=" ".join(
                            str(r.seed) for r in runs if not (_finished(r) and r.seed in ref_loss)))
    return rows


def table_notes(results: list[RunResult], rows: list[dict]) -> list[str]:
    """The lines under the table: the test used, runs left out of the pairing, and the warnings."""
    lines = [f"Δ = variant − reference (`{rows[0]['variant']}`), paired by seed (a seed gives both the same "
             "initialisation and data order): mean [95% CI, t distribution with n−1 df]; p: paired t-test over "
             "seeds, two-sided; verdict on val loss (lower is better) at p < 0.05."]
    halted = [f"{r.variant}-s{r.seed}" for r in results if not _finished(r)]
    if halted:
        lines.append(f"Excluded from pairing (halted or NaN loss): {', '.join(halted)}"
                     + (" (a reference seed that halted is left out of every pair)."
                        if any(not _finished(r) for r in results if r.variant == rows[0]["variant"]) else "."))
    diffs = [r["val_loss_diff_mean"] for r in rows[1:] if r["paired_seeds"]]
    ref_losses = [r.val_loss for r in results if r.variant == rows[0]["variant"] and _finished(r)]
    return lines + [f"**Warning:** {w}." for w in warnings(len({r.seed for r in results}), ref_losses, diffs)]


def _diff(r: dict, key: str) -> str:
    if r["verdict"] == "reference":
        return "reference"
    if not r["paired_seeds"]:
        return "-"
    mean = f"{r[key + '_diff_mean']:+.4f}"
    if r["paired_seeds"] == 1:
        return f"{mean} (1 seed)"
    return f"{mean} [{r[key + '_diff_ci_low']:+.4f}, {r[key + '_diff_ci_high']:+.4f}]"


def _p(r: dict, key: str) -> str:
    p = r[key + "_p"]
    if p == "" or math.isnan(p):
        return "-"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def markdown(rows: list[dict], title: str, notes: list[str] = ()) -> str:
    lines = [title, "", "| variant | params | non-emb. params | MFLOPs/token | width | val loss | val bpb | "
             "Δ val loss [95% CI] | p (loss) | Δ val bpb [95% CI] | p (bpb) | seeds paired | verdict | tokens/s | "
             "wall (s) |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        paired_seeds = "-" if r["paired_seeds"] == "" else r["paired_seeds"]
        lines.append(f"| {r['variant']} | {r['params']:,} | {r['non_embedding_params']:,} | "
                     f"{r['flops_per_token'] / 1e6:,.2f} | {r['width'] or '-'} | "
                     f"{r['val_loss_mean']:.4f} ± {r['val_loss_std']:.4f} | {r['val_bpb_mean']:.4f} ± "
                     f"{r['val_bpb_std']:.4f} | {_diff(r, 'val_loss')} | {_p(r, 'val_loss')} | "
                     f"{_diff(r, 'val_bpb')} | {_p(r, 'val_bpb')} | {paired_seeds} | {r['verdict']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |")
    for line in notes:  # one paragraph each
        lines += ["", line]
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
    text = markdown(rows, title, table_notes(results, rows))
    (sweep_dir / "results.md").write_text(text)
    plot_curves(results, sweep_dir / "val_loss.png", f"ablation: {sweep['name']} (mean over seeds, min-max band)")
    return text
