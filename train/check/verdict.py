"""A run's curve against its band, one verdict per metric.

The band at a step is its envelope: from the lower of min and mean - 2 sd to the higher of max and mean + 2 sd,
so a point outside it is outside both what every seed did and the seeds' spread. Compared at the steps both
logged; the verdict, first that applies:

    diverged                    a non-finite value
    stuck at the unigram plateau  a loss that has never gone below 0.95x the run's `baseline/unigram` (a model that
                                ignores context) at the steps the band holds, while the band ends below it (only
                                when the run logged the baseline)
    diverged                    a loss-like metric that ends far above the band: above anything the band reached
                                and above 1.5x its upper edge at that step, 5% above its own lowest point (a run
                                still coming down from far above is worse, or stuck)
    worse / better from step N  the run's last STREAK points (all, when it has fewer) are outside the band on one
                                side, where it has stayed since step N (worse for a loss, KL or bpb above it, or a
                                reward, margin or accuracy below it): one noisy batch is no verdict
    above / below from step N   the same for a metric with no better side
    inside                      otherwise (how many points left the band on the way is counted)

`Leaving` is the live form used during training: it says once when a metric has been outside its band at
`patience` consecutive logged points.
"""

from __future__ import annotations

import math

LOWER_IS_BETTER = ("loss", "bpb", "kl", "nll")
HIGHER_IS_BETTER = ("reward", "accurac", "margin")
STUCK_SHARE = 0.95  # a loss within 5% of the unigram baseline (or above it) sits on the unigram plateau
FAR = 1.5  # a loss above the band's highest value and 1.5x its upper edge has diverged ...
RISE = 1.05  # ... when it ends 5% above its own lowest point: a run still coming down from far above is worse
STREAK = 3  # logged points in a row outside the band (all of them when fewer) before a run counts as outside


def direction(name: str) -> int:
    """-1 lower is better (loss, bpb, KL), +1 higher is better (reward, margin, accuracy), 0 neither."""
    if any(word in name for word in LOWER_IS_BETTER):
        return -1
    return 1 if any(word in name for word in HIGHER_IS_BETTER) and "rejected" not in name else 0


def per_token(name: str, stage: str) -> bool:
    """A loss in nats per token (a language-modelling loss), which depends on the tokenizer; an alignment loss
    compares completions and bits per byte is the text's own unit."""
    return stage in ("pretrain", "finetune") and name.endswith("/loss")


def envelope(stats: dict, i: int) -> tuple[float, float]:
    """(low, high) edge of the band at its i-th step."""
    return min(stats["min"][i], stats["lo"][i]), max(stats["max"][i], stats["hi"][i])


def side(value: float, low: float, high: float) -> int:
    """+1 above the band, -1 below, 0 inside."""
    return 1 if value > high else -1 if value < low else 0


def side_word(name: str, sign: int) -> str:
    way = direction(name) * sign
    return "better" if way > 0 else "worse" if way < 0 else "above" if sign > 0 else "below"


def judge(name: str, run: dict[int, float], stats: dict, unigram: float | None = None) -> str | None:
    """The verdict line for one metric (without its name), or None when the run and band share no step."""
    bad = next((s for s in sorted(run) if not math.isfinite(run[s])), None)
    if bad is not None:
        return f"diverged: {run[bad]} at step {bad}"
    index = {s: i for i, s in enumerate(stats["step"])}
    steps = [s for s in sorted(run) if s in index]
    if not steps:
        return None
    last, i = steps[-1], index[steps[-1]]
    value, (low, high) = run[last], envelope(stats, i)
    band_text = f"band {low:.4g}..{high:.4g}, mean {stats['mean'][i]:.4g} at step {last}"
    plateau = STUCK_SHARE * unigram if unigram is not None and name.endswith("loss") else None
    if plateau is not None and min(run[s] for s in steps) >= plateau > high:
        return f"stuck at the unigram plateau: ends at {value:.4g}, unigram baseline {unigram:.4g} ({band_text})"
    rose = value > RISE * min(run[s] for s in steps)  # it had come down and went back up
    if direction(name) < 0 and rose and value > max(max(stats["hi"]), FAR * high):
        return f"diverged: ends at {value:.4g}, far above the band ({band_text})"
    signs = [side(run[s], *envelope(stats, index[s])) for s in steps]
    start = len(signs)
    while start > 0 and signs[start - 1] == signs[-1] != 0:
        start -= 1
    if len(signs) - start < min(STREAK, len(signs)):
        outside, last = sum(1 for sign in signs if sign), len(signs) - start
        tail = f", the last {last} in a row" if last else ""
        return f"inside the band: ends at {value:.4g} ({band_text}; {outside} of {len(steps)} points outside{tail})"
    return f"{side_word(name, signs[-1])} from step {steps[start]}: ends at {value:.4g} ({band_text})"


def unigram_baseline(curves: dict[str, dict[int, float]]) -> float | None:
    """The run's logged unigram baseline loss (its last value), if it logged one."""
    points = curves.get("baseline/unigram") or {}
    return points[max(points)] if points else None


class Leaving:
    """Live comparison: `see(name, step, value)` -> a warning line the first time `name` has been outside its band
    at `patience` consecutive logged points (fewer when the band has fewer steps; a non-finite value counts as
    outside), else None."""

    def __init__(self, metrics: dict[str, dict], patience: int = 3):
        self.metrics = metrics
        self.index = {name: {s: i for i, s in enumerate(stats["step"])} for name, stats in metrics.items()}
        self.patience = {name: min(patience, len(stats["step"])) for name, stats in metrics.items()}
        self.streak: dict[str, int] = {}
        self.warned: set[str] = set()

    def see(self, name: str, step: int, value: float) -> str | None:
        i = self.index.get(name, {}).get(step)
        if i is None or name in self.warned:
            return None
        low, high = envelope(self.metrics[name], i)
        outside = not math.isfinite(value) or side(value, low, high) != 0
        self.streak[name] = self.streak.get(name, 0) + 1 if outside else 0
        if self.streak[name] < self.patience[name]:
            return None
        self.warned.add(name)
        where = "non-finite" if not math.isfinite(value) else side_word(name, side(value, low, high))
        return (f"{name} left its band at step {step}: {value:.4g} ({where}; band {low:.4g}..{high:.4g}, "
                f"{self.patience[name]} logged points in a row outside)")
