"""The results of an ablation sweep (`train/ablate.py`): one row per variant, aggregated over its seeds.

    <sweep>/results.csv   variant, lr, width, params, non_embedding_params, flops_per_token, seeds, test_loss_mean,
                          test_loss_std, test_bpb_mean, test_bpb_std, tokens_per_s, wall_s, and against the reference
                          (the first variant; its row has verdict "reference" and the rest empty): paired_seeds,
                          test_loss_diff_mean, test_loss_diff_ci_low, test_loss_diff_ci_high, test_loss_p,
                          test_bpb_diff_mean, test_bpb_diff_ci_low, test_bpb_diff_ci_high, test_bpb_p, verdict,
                          seeds_to_settle (a suggestive verdict's power calculation, train/ablate/stats.py),
                          excluded_seeds (the variant's seeds left out of the pairing: halted/NaN here or in the
                          reference; space-separated)
    <sweep>/results.md    the same as a Markdown table (printed at the end of the sweep), with a caption and
                          warnings (fewer than 3 seeds; seed noise above the smallest difference) under it
    <sweep>/val_loss.png  validation loss vs step, one line per variant (mean over seeds), min-max band
    <sweep>/val_loss_vs_compute.png   the same against training tokens, training seconds and training FLOPs
    <sweep>/lr_grid.csv, lr_grid.png  with `lrs:`: every variant at every learning rate (train/ablate/grid.py)

Per run: the test-split loss and bits per byte of the final weights (train/ablate/splits.py: every other validation
story, which no choice reads), the median of the logged `perf/tokens_per_s` (median: the
intervals with a validation in them are slower), and the wall time of the run (data preparation and the split
scoring included). Means and sample standard deviations are over seeds; metrics are
read with `train.report.read_metrics`. The paired differences, intervals, p-values (paired t-test over
seeds, two-sided) and verdicts are those of `train/ablate/stats.py` (the formulas are in its docstring).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from inputs.json import read_json
from inputs.schema import require_field, require_mapping
from train.ablate.stats import paired, seeds_needed, verdict, warnings
from train.report import read_metrics, series

STATS = ("paired_seeds", "test_loss_diff_mean", "test_loss_diff_ci_low", "test_loss_diff_ci_high", "test_loss_p",
         "test_bpb_diff_mean", "test_bpb_diff_ci_low", "test_bpb_diff_ci_high", "test_bpb_p", "verdict",
         "seeds_to_settle", "excluded_seeds")


@dataclass
class RunResult:
    variant: str
    seed: int
    width: str  # the matched knob, e.g. "d_ff=347" ("" when not resized)
    params: int
    non_embedding_params: int
    flops_per_token: float  # training FLOPs per token
    test_loss: float  # the test split (train/ablate/splits.py); NaN for a halted run
    test_bpb: float
    tokens_per_s: float
    wall_s: float
    curve: dict[int, float]  # step -> val/loss (logged during training)
    lr: float = math.nan  # train.lr of the run
    selection_loss: float = math.nan  # the selection split: what the choice of learning rate reads
    elapsed: dict[int, float] = field(default_factory=dict)  # step -> training seconds (from the throughput)
    tokens_per_step: int = 0

    @classmethod
    def read(cls, variant: str, seed: int, run_dir: Path, width: str, lr: float = math.nan) -> RunResult:
        rows = read_metrics(run_dir)
        info_file = run_dir / "ablate.json"
        info = _read_info(info_file)
        if not info.get("halted") and not info.get("splits"):  # a run finished before the splits existed
            from train.ablate.splits import split_scores

            info["splits"] = split_scores(run_dir)
            info_file.write_text(json.dumps(info))
        steps, losses = series(rows, "val/loss")
        nan = math.nan
        splits = {"selection": {"loss": nan}, "test": {"loss": nan, "bpb": nan}, **(info.get("splits") or {})}
        log_steps, tok_s = series(rows, "perf/tokens_per_s")
        per_step = info.get("tokens_per_step") or _tokens_per_step(run_dir)
        return cls(variant, seed, width, info["params"], info["non_embedding_params"], info["flops_per_token"],
                   splits["test"]["loss"], splits["test"]["bpb"], statistics.median(tok_s) if tok_s else nan,
                   info["wall_s"], dict(zip(steps, losses)), lr, splits["selection"]["loss"],
                   _elapsed(steps, log_steps, tok_s, per_step), per_step)


def _read_info(path: Path) -> dict:
    """A run's ablate.json, its fields checked (a damaged or edited file is one line naming the field, and the fix:
    delete the run's folder so the sweep trains it again)."""
    fix = f"delete {path.parent} so that the sweep trains that run again"
    info = dict(require_mapping(read_json(path, "ablate.json"), path, "ablate.json", fix))
    for key in ("params", "non_embedding_params"):
        require_field(info, key, int, path, fix, minimum=0)
    for key in ("flops_per_token", "wall_s"):
        require_field(info, key, (int, float), path, fix, minimum=0)
    require_field(info, "tokens_per_step", int, path, fix, required=False, minimum=0)
    splits = info.get("splits")  # None: a halted run
    for split, values in (require_field(info, "splits", dict, path, fix) if splits is not None else {}).items():
        for key, value in require_mapping(values, path, f"splits.{split}", fix).items():
            require_field({key: value}, key, (int, float), path, fix)
    return info


def _tokens_per_step(run_dir: Path) -> int:
    """Training tokens per optimizer step of one process, from the run's config.yaml (runs whose ablate.json
    predates `tokens_per_step`); 0 when there is none (a run halted before it started)."""
    from train.config import load_config

    if not (run_dir / "config.yaml").exists():
        return 0
    cfg = load_config(run_dir / "config.yaml", run_file=True)  # read and typed: a damaged file is one line
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len


def _elapsed(at: list[int], log_steps: list[int], tokens_per_s: list[float], tokens_per_step: int) -> dict:
    """step -> seconds of training up to it: the sum over logged intervals of their tokens / their throughput
    (validation and data preparation excluded), at the last logged step at or before each step in `at`."""
    if not tokens_per_step or not log_steps:
        return {}
    clock, last, cumulative = 0.0, 0, []
    for step, rate in zip(log_steps, tokens_per_s):
        clock += (step - last) * tokens_per_step / rate
        last = step
        cumulative.append((step, clock))
    return {s: max((c for step, c in cumulative if step <= s), default=0.0) for s in at}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # a halted seed: no result (statistics.stdev rejects NaN)
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _finished(r: RunResult) -> bool:  # a halted run (NaN losses) is in no pair
    return math.isfinite(r.test_loss) and math.isfinite(r.test_bpb)


def aggregate(results: list[RunResult]) -> list[dict]:
    rows = []
    variants = list(dict.fromkeys(r.variant for r in results))
    ref = [r for r in results if r.variant == variants[0]]
    ref_loss = {r.seed: r.test_loss for r in ref if _finished(r)}
    ref_bpb = {r.seed: r.test_bpb for r in ref if _finished(r)}
    for variant in variants:
        runs = [r for r in results if r.variant == variant]
        loss, loss_std = _mean_std([r.test_loss for r in runs])
        bpb, bpb_std = _mean_std([r.test_bpb for r in runs])
        rows.append({"variant": variant, "lr": runs[0].lr, "width": runs[0].width, "params": runs[0].params,
                     "non_embedding_params": runs[0].non_embedding_params,
                     "flops_per_token": runs[0].flops_per_token, "seeds": len(runs),
                     "test_loss_mean": loss, "test_loss_std": loss_std, "test_bpb_mean": bpb, "test_bpb_std": bpb_std,
                     "tokens_per_s": statistics.fmean(r.tokens_per_s for r in runs),
                     "wall_s": statistics.fmean(r.wall_s for r in runs), **dict.fromkeys(STATS, "")})
        if variant == variants[0]:
            rows[-1].update(verdict="reference", excluded_seeds=" ".join(str(r.seed) for r in runs
                                                                         if r.seed not in ref_loss))
            continue
        d_loss = paired(ref_loss, {r.seed: r.test_loss for r in runs if _finished(r)})
        d_bpb = paired(ref_bpb, {r.seed: r.test_bpb for r in runs if _finished(r)})
        grade = verdict(d_loss)
        rows[-1].update(paired_seeds=d_loss.n, test_loss_diff_mean=d_loss.mean, test_loss_diff_ci_low=d_loss.ci_low,
                        test_loss_diff_ci_high=d_loss.ci_high, test_loss_p=d_loss.p, test_bpb_diff_mean=d_bpb.mean,
                        test_bpb_diff_ci_low=d_bpb.ci_low, test_bpb_diff_ci_high=d_bpb.ci_high, test_bpb_p=d_bpb.p,
                        verdict=grade, seeds_to_settle=seeds_needed(d_loss.mean, d_loss.sd)
                        if grade.startswith("suggestive") else "", excluded_seeds=" ".join(
                            str(r.seed) for r in runs if not (_finished(r) and r.seed in ref_loss)))
    return rows


def table_notes(results: list[RunResult], rows: list[dict]) -> list[str]:
    """The lines under the table: the test used, runs left out of the pairing, and the warnings."""
    lines = [f"Δ = variant − reference (`{rows[0]['variant']}`), paired by seed (a seed gives both the same "
             "initialisation and data order): mean [95% CI, t distribution with n−1 df]; p: paired t-test over "
             "seeds, two-sided; verdict on test loss (lower is better): significant at p < 0.01, suggestive at "
             "p < 0.05; seeds to settle (suggestive only): the seeds at which a paired t-test at 0.01 has power "
             "0.8 if the observed mean difference and spread are the truth. Test split: every other "
             "validation story, used by no choice (learning rates are chosen on the other half)."]
    halted = [f"{r.variant}-s{r.seed}" for r in results if not _finished(r)]
    if halted:
        lines.append(f"Excluded from pairing (halted or NaN loss): {', '.join(halted)}"
                     + (" (a reference seed that halted is left out of every pair)."
                        if any(not _finished(r) for r in results if r.variant == rows[0]["variant"]) else "."))
    diffs = [r["test_loss_diff_mean"] for r in rows[1:] if r["paired_seeds"]]
    ref_losses = [r.test_loss for r in results if r.variant == rows[0]["variant"] and _finished(r)]
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
    lines = [title, "", "| variant | lr | params | non-emb. params | MFLOPs/token | width | test loss | test bpb | "
             "Δ test loss [95% CI] | p (loss) | Δ test bpb [95% CI] | p (bpb) | seeds paired | verdict | seeds to "
             "settle | tokens/s | wall (s) |",
             "| --- " + "| ---: " * 4 + "| --- " + "| ---: " * 7 + "| --- | ---: | ---: | ---: |"]
    for r in rows:
        paired_seeds = "-" if r["paired_seeds"] == "" else r["paired_seeds"]
        lines.append(f"| {r['variant']} | {r['lr']:g} | {r['params']:,} | {r['non_embedding_params']:,} | "
                     f"{r['flops_per_token'] / 1e6:,.2f} | {r['width'] or '-'} | "
                     f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f} | {r['test_bpb_mean']:.4f} ± "
                     f"{r['test_bpb_std']:.4f} | {_diff(r, 'test_loss')} | {_p(r, 'test_loss')} | "
                     f"{_diff(r, 'test_bpb')} | {_p(r, 'test_bpb')} | {paired_seeds} | {r['verdict']} | "
                     f"{r['seeds_to_settle'] or '-'} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |")
    for line in notes:  # one paragraph each
        lines += ["", line]
    return "\n".join(lines) + "\n"


def write_results(sweep_dir: Path, sweep: dict, results: list[RunResult], grid: list[RunResult] = ()) -> str:
    """Writes results.csv, results.md and the plots into sweep_dir (with a learning-rate grid, `grid` holds every
    run and `results` the chosen learning rate's: lr_grid.csv and lr_grid.png too); returns the Markdown."""
    from train.ablate.plots import plot_compute, plot_curves, plot_lr_grid

    rows = aggregate(results)
    with (sweep_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seeds = ", ".join(str(s) for s in sweep["seeds"])
    lrs = (f"; lr: each variant's best of {', '.join(f'{lr:g}' for lr in sweep['lrs'])} on the selection split "
           "(lr_grid.csv)") if sweep.get("lrs") else ""
    title = (f"### Ablation `{sweep['name']}` (base `{sweep['base']}`, seeds {seeds}, match: "
             f"{sweep.get('match') or 'none'}{lrs}; test loss/bpb: mean ± std over seeds on the test split)")
    notes = table_notes(results, rows)
    if grid:
        from train.ablate.grid import edge_warnings

        chosen = {r.variant: r.lr for r in results}
        notes += [f"**Warning:** {w}." for w in edge_warnings(chosen, [float(lr) for lr in sweep["lrs"]])]
    text = markdown(rows, title, notes)
    (sweep_dir / "results.md").write_text(text)
    name = sweep["name"]
    plot_curves(results, sweep_dir / "val_loss.png", f"ablation: {name} (mean over seeds, min-max band)")
    plot_compute(results, sweep_dir / "val_loss_vs_compute.png", f"ablation: {name}")
    if grid:
        from train.ablate.grid import write_grid

        write_grid(grid, results, sweep_dir / "lr_grid.csv")
        plot_lr_grid(grid, results, sweep_dir / "lr_grid.png", f"ablation: {name}, learning-rate grid")
    return text
