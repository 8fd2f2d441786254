"""The results of an alignment sweep (align/ablate/sweep.py): one row per variant, aggregated over its seeds.

    <sweep>/results.csv   variant, stage, seeds, reward_mean, reward_std, <term>_mean for each reward term,
                          all_words_mean, kl_mean, kl_std, kl_per_token_mean, wall_s, and against the reference
                          (the first variant; its row has verdict "reference" and the rest empty): paired_seeds,
                          reward_diff_mean, reward_diff_ci_low, reward_diff_ci_high, reward_p, verdict, excluded_seeds
    <sweep>/results.md    the same as a Markdown table (printed at the end of the sweep), a caption and warnings

Per run: the scores of its ablate.json (align/ablate/scores.py). Means and sample standard deviations are over
seeds; the paired differences, intervals and p-values are train/ablate/stats.py's (paired t-test over seeds,
two-sided), formatted as train/ablate/report.py formats them. A reward is better higher: the verdict is
stats.verdict's read on -Δ (it reads a loss, lower is better), so "better" means a higher reward than the reference.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from pathlib import Path

from inputs.json import read_json
from train.ablate.report import _diff, _mean_std, _p
from train.ablate.stats import MIN_SEEDS, Paired, paired, verdict, warnings


def reward_verdict(diff: Paired) -> str:
    """better / worse / no detectable difference for a difference of rewards (higher is better)."""
    return verdict(dataclasses.replace(diff, mean=-diff.mean, ci_low=-diff.ci_high, ci_high=-diff.ci_low))


def read_scores(run_dir: Path) -> dict:
    """A finished run's scores and wall time: {"wall_s", "reward", each term, ...}; NaN scores for a halted run."""
    info = read_json(run_dir / "ablate.json", "ablate.json")
    scores = info.get("scores") if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("wall_s"), (int, float)) or (
            scores is not None and not isinstance(scores.get("reward"), (int, float))):
        from train.config import ConfigError

        raise ConfigError(f"{run_dir}/ablate.json is damaged; delete {run_dir} so that the sweep runs it again")
    return {"wall_s": info["wall_s"], **(scores or {"reward": math.nan})}


def aggregate(scores: dict[str, dict[int, dict]], stages: dict[str, str], terms: list[str]) -> list[dict]:
    """variant -> seed -> scores -> one row per variant (the first variant is the reference)."""
    names = list(scores)
    ref = {seed: s["reward"] for seed, s in scores[names[0]].items()}
    rows = []
    for name in names:
        runs = scores[name]
        reward, reward_std = _mean_std([s["reward"] for s in runs.values()])
        kl, kl_std = _mean_std([s.get("kl", math.nan) for s in runs.values()])
        row = {"variant": name, "stage": stages[name], "seeds": len(runs), "reward_mean": reward,
               "reward_std": reward_std,
               **{f"{t}_mean": _mean_std([s.get(t, math.nan) for s in runs.values()])[0]
                  for t in (*terms, "all_words")},
               "kl_mean": kl, "kl_std": kl_std,
               "kl_per_token_mean": _mean_std([s.get("kl_per_token", math.nan) for s in runs.values()])[0],
               "wall_s": statistics.fmean(s["wall_s"] for s in runs.values()), "paired_seeds": "",
               "reward_diff_mean": "", "reward_diff_ci_low": "", "reward_diff_ci_high": "", "reward_p": ""}
        mine = {seed: s["reward"] for seed, s in runs.items()}
        left_out = " ".join(str(seed) for seed in runs if not (math.isfinite(mine[seed])
                                                               and math.isfinite(ref.get(seed, math.nan))))
        if name == names[0]:
            rows.append({**row, "verdict": "reference", "excluded_seeds": left_out})
            continue
        d = paired(ref, mine)
        rows.append({**row, "paired_seeds": d.n, "reward_diff_mean": d.mean, "reward_diff_ci_low": d.ci_low,
                     "reward_diff_ci_high": d.ci_high, "reward_p": d.p, "verdict": reward_verdict(d),
                     "excluded_seeds": left_out})
    return rows


def notes(rows: list[dict], scores: dict[str, dict[int, dict]], seeds: int) -> list[str]:
    """The lines under the table: the test and the scores used, runs left out, and the warnings."""
    lines = [f"Δ reward = variant − reference (`{rows[0]['variant']}`), paired by seed: mean [95% CI, t "
             "distribution with n−1 df]; p: paired t-test over seeds, two-sided; verdict as train/ablate/stats.py "
             "grades it, higher reward is better. Reward: mean combined reward of the sampled completions on "
             "held-out prompts (the same prompts, weights and sampling seed for every run); KL: mean per-completion "
             "log-ratio sum_t log π/π_ref to the SFT run on those completions (KL/token: per completion token)."]
    halted = [f"{name}-s{seed}" for name, runs in scores.items() for seed, s in runs.items()
              if not math.isfinite(s["reward"])]
    if halted:
        lines.append(f"Excluded from pairing (halted or NaN reward): {', '.join(halted)}.")
    lines += [f"**Warning:** {w}." for w in warnings(seeds, [], [])] if seeds < MIN_SEEDS else []
    diffs = [abs(r["reward_diff_mean"]) for r in rows[1:] if r["paired_seeds"] and math.isfinite(r["reward_diff_mean"])]
    if diffs and math.isfinite(rows[0]["reward_std"]) and rows[0]["reward_std"] > min(diffs):
        lines.append(f"**Warning:** seed noise exceeds the smallest difference: more seeds, prompts or steps needed "
                     f"(reference reward std over seeds {rows[0]['reward_std']:.4f} > smallest |mean difference| "
                     f"{min(diffs):.4f}).")
    return lines


def markdown(rows: list[dict], terms: list[str], title: str, lines: list[str], start: dict | None = None) -> str:
    """The table; `start`, the SFT run's scores, is its first row (what every method starts from, KL 0)."""
    head = ["variant", "stage", "reward", "Δ reward [95% CI]", "p", "seeds paired", "verdict", *terms, "all words",
            "KL", "KL/token", "wall (s)"]
    align = ["---"] * 2 + ["---:"] * 4 + ["---"] + ["---:"] * (len(head) - 7)  # text left, numbers right
    out = [title, "", "| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    if start is not None:
        cells = ["start (SFT)", "-", f"{start['reward']:.4f}", "-", "-", "-", "-",
                 *(f"{start[t]:.3f}" for t in terms), f"{start['all_words']:.3f}", "0", "0", "-"]
        out.append("| " + " | ".join(cells) + " |")
    for r in rows:
        cells = [r["variant"], r["stage"], f"{r['reward_mean']:.4f} ± {r['reward_std']:.4f}", _diff(r, "reward"),
                 _p(r, "reward"), "-" if r["paired_seeds"] == "" else str(r["paired_seeds"]), r["verdict"],
                 *(f"{r[f'{t}_mean']:.3f}" for t in terms), f"{r['all_words_mean']:.3f}",
                 f"{r['kl_mean']:.3f} ± {r['kl_std']:.3f}", f"{r['kl_per_token_mean']:.4f}", f"{r['wall_s']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    for line in lines:
        out += ["", line]
    return "\n".join(out) + "\n"


def write_results(sweep_dir: Path, sweep: dict, runs: dict[str, dict[int, Path]], stages: dict[str, str],
                  terms: list[str], start: dict | None = None) -> str:
    """results.csv and results.md from every run's ablate.json (variant -> seed -> run folder); returns the table."""
    scores = {name: {seed: read_scores(run_dir) for seed, run_dir in seeds.items()} for name, seeds in runs.items()}
    rows = aggregate(scores, stages, terms)
    with (sweep_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    title = (f"### Alignment ablation `{sweep['name']}` (base `{sweep['base']}`, seeds "
             f"{', '.join(map(str, sweep['seeds']))}; reward, its terms and KL: mean over seeds)")
    text = markdown(rows, terms, title, notes(rows, scores, len(sweep["seeds"])), start)
    (sweep_dir / "results.md").write_text(text)
    return text
