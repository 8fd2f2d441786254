"""The report of a scaling ladder (train/ablate/ladder.py), in the sweep folder:

    ladder.md    per rung the sweep table (paired differences, 95% CIs, p, graded verdicts: train/ablate/report.py),
                 then per variant the fit L(C) = E + A C^-alpha (train/ablate/scaling.py): alpha with its bootstrap
                 interval over seeds, the extrapolated loss at 10x and 100x the largest rung's compute, and the
                 compute where its fit crosses the reference's; the caveats (too few rungs, a parameter at a
                 bound, extrapolation is a guess) in words
    ladder.csv   one row per rung and variant: shape, steps, tokens, parameters, FLOPs per token, training FLOPs,
                 seeds, test loss mean and std, lr, verdict
    ladder.json  the fits and intervals (scaling.analyse), with the reason when there is no fit
    ladder.png   test loss against training FLOPs, log-log: per variant the mean over seeds, the min-max seed
                 band and the fit, dashed beyond the largest rung up to 100x
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np

from train.ablate.report import aggregate
from train.ablate.scaling import EXTRAPOLATE, MIN_RUNGS, REACH, Fit, analyse


def _curves(rungs, results) -> tuple[dict, dict, list[dict]]:
    """variant -> (R,) training FLOPs and (R, S) test losses, and the CSV rows."""
    compute, losses, rows = {}, {}, []
    for rung in rungs:
        verdicts = {r["variant"]: r["verdict"] for r in aggregate(results[rung.index])}
        for name in rung.configs:
            runs = [r for r in results[rung.index] if r.variant == name]
            tokens = rung.shape["steps"] * runs[0].tokens_per_step
            flops = runs[0].flops_per_token * tokens
            compute.setdefault(name, []).append(flops)
            losses.setdefault(name, []).append([r.test_loss for r in runs])
            finite = [r.test_loss for r in runs if math.isfinite(r.test_loss)]
            rows.append({"rung": rung.index, **rung.shape, "variant": name, "width": rung.widths[name],
                         "tokens": tokens, "params": runs[0].params,
                         "non_embedding_params": runs[0].non_embedding_params,
                         "flops_per_token": runs[0].flops_per_token, "training_flops": flops, "seeds": len(finite),
                         "test_loss_mean": statistics.fmean(finite) if finite else math.nan,
                         "test_loss_std": statistics.stdev(finite) if len(finite) > 1 else math.nan,
                         "lr": runs[0].lr, "verdict": verdicts[name]})
    return ({k: np.array(v) for k, v in compute.items()}, {k: np.array(v, dtype=float) for k, v in losses.items()},
            rows)


def _ci(values: list[float], fmt: str) -> str:
    return "-" if not all(map(math.isfinite, values)) else f"[{fmt.format(values[0])}, {fmt.format(values[1])}]"


def fit_section(fits: dict[str, dict], n_rungs: int) -> list[str]:
    """The Markdown of the fits: a table and the caveats in words."""
    if not fits:
        return [f"**No fit: {n_rungs} rungs are too few** to fit L(C) = E + A C^-alpha (3 parameters; {MIN_RUNGS} "
                "or more rungs for a fit that means anything). The per-rung tables above are the result."]
    names = list(fits)
    lines = ["| variant | E | A | alpha [95% CI] | " + " | ".join(f"loss at {k:g}x [95% CI]" for k in EXTRAPOLATE)
             + f" | crosses `{names[0]}` at FLOPs [95% CI] | caveats |", "| --- " + "| ---: " * 6 + "| --- |"]
    for name, f in fits.items():
        caveats = [f"{f['rungs']} rungs: too few to mean anything"] if f["too_few_rungs"] else []
        caveats += [f"{p} at its bound" for p in f["at_bounds"]]
        caveats += [] if math.isfinite(f["alpha"]) else ["no decreasing power law fits"]
        if name == names[0]:
            cross = "reference"
        elif math.isfinite(f["crossing_flops"]):
            cross = f"{f['crossing_flops']:.3g} {_ci(f['crossing_flops_ci'], '{:.3g}')} " \
                    f"({f['crossing_share']:.0%} of replicates cross)"
        else:
            cross = f"no crossing within {REACH:g}x ({f['crossing_share']:.0%} of replicates cross)"
        lines.append(f"| {name} | {f['E']:.4f} | {f['A']:.4g} | {f['alpha']:.3f} {_ci(f['alpha_ci'], '{:.3f}')} | "
                     + " | ".join(f"{f[f'loss_at_{k:g}x']:.4f} {_ci(f[f'loss_at_{k:g}x_ci'], '{:.4f}')}"
                                  for k in EXTRAPOLATE) + f" | {cross} | {'; '.join(caveats) or '-'} |")
    lines += ["", "Fit: L(C) = E + A C^-alpha (Kaplan et al. 2020; E as in Hoffmann et al. 2022) to each variant's "
              "mean test loss per rung, least squares in ln C; intervals: 95% percentile bootstrap over seeds "
              "(train/ablate/scaling.py). **The losses at 10x and 100x and any crossing beyond the largest rung are "
              "extrapolations: they assume the form holds where nothing was measured, so they are a guess.**"]
    if any(f["too_few_rungs"] for f in fits.values()):
        lines.append(f"**Warning:** {n_rungs} rungs (fewer than {MIN_RUNGS}): three parameters fit to so few "
                     "points leave nothing to test the form against; the fit means nothing yet.")
    if any(f["at_bounds"] for f in fits.values()):
        lines.append("**Warning:** a parameter at its bound (E at 0 or at the lowest loss, A at 0, alpha at "
                     "0.01 or 2): the data do not pin that fit down.")
    return lines


def plot_ladder(compute: dict, losses: dict, fits: dict, path: Path, title: str) -> None:
    from train.ablate.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, c in compute.items():
        line, = ax.plot(c, np.nanmean(losses[name], 1), "o", label=name)
        ax.fill_between(c, np.nanmin(losses[name], 1), np.nanmax(losses[name], 1), color=line.get_color(),
                        alpha=0.2, linewidth=0)
        if name in fits and math.isfinite(fits[name]["alpha"]):
            f = fits[name]
            curve = Fit(f["E"], f["A"] / f["c_max"] ** f["alpha"], f["alpha"], f["c_max"])
            inside, beyond = np.geomspace(c.min(), f["c_max"], 50), np.geomspace(f["c_max"], REACH * f["c_max"], 50)
            ax.plot(inside, curve(inside), "-", color=line.get_color())
            ax.plot(beyond, curve(beyond), "--", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="training FLOPs", ylabel="test loss (nats/token)", title=title)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_ladder(folder: Path, sweep: dict, rungs, results: dict, tables: list[str]) -> str:
    """Writes ladder.{md,csv,json,png} into folder (module docstring); returns the Markdown."""
    compute, losses, rows = _curves(rungs, results)
    fits = analyse(compute, losses) if len(rungs) >= 3 else {}
    with (folder / "ladder.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "ladder.json").write_text(json.dumps(
        {"rungs": [rung.shape for rung in rungs], "fits": fits,
         "no_fit": "" if fits else f"{len(rungs)} rungs: too few to fit 3 parameters"}, indent=1))
    tokens = sweep.get("tokens") or {"train.max_steps": "at every rung"}
    lr = "chosen per rung on the selection split" if sweep.get("lrs") else sweep.get("lr_rule", "fixed")
    title = f"ablation ladder: {sweep['name']}"
    plot_ladder(compute, losses, fits, folder / "ladder.png", f"{title} (min-max seed band)")
    lines = [f"## Ladder `{sweep['name']}` (base `{sweep['base']}`, {len(rungs)} rungs, seeds "
             f"{', '.join(map(str, sweep['seeds']))}, match: {sweep.get('match') or 'none'} per rung, tokens: "
             f"{', '.join(f'{k} {v}' for k, v in tokens.items())}, lr: {lr})", ""]
    for rung, table in zip(rungs, tables):
        lines += [f"### Rung {rung.index}: {rung.label}", "", table.split("\n", 2)[2].rstrip(), ""]
    lines += ["### Loss against training compute", "", *fit_section(fits, len(rungs)), "",
              "![loss against training FLOPs](ladder.png)"]
    text = "\n".join(lines) + "\n"
    (folder / "ladder.md").write_text(text)
    return text
