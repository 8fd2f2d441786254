"""Paired statistics for ablation tables (`train/ablate/report.py`): each variant against the reference.

Every variant trains once per seed, and a seed gives every variant the same initialisation and data order,
so a variant and the reference are compared seed by seed. Over the n seeds where both finished (a halted
run has NaN losses and is left out of every pair it would be in):

    d_i   = x_i(variant) - x_i(ref)                       x: the final test loss (or bits per byte)
    mean  = (1/n) sum_i d_i
    s_d   = sqrt( sum_i (d_i - mean)^2 / (n - 1) )        the sample standard deviation of the differences
    CI    = mean ± t_{0.975, n-1} s_d / sqrt(n)           95% confidence interval, Student's t with n-1 df
    t     = mean / (s_d / sqrt(n))
    p     = 2 P(T_{n-1} >= |t|)                           paired t-test over seeds, two-sided (scipy ttest_rel)

The verdict (on test loss; lower is better) is graded: "significant: better" / "significant: worse" when
p < 0.01, "suggestive: better" / "suggestive: worse" when p < 0.05, otherwise "no detectable difference"; with
fewer than 2 pairs there is no s_d and it is "n/a (1 seed)" (or "n/a (0 seeds)"). When all d_i are equal, s_d = 0:
p = 1 if they are all 0 (identical runs), else p = 0 (t is infinite).

A suggestive verdict comes with the seeds that would settle it (`seeds_needed`): the smallest n whose paired
t-test at level 0.01 (two-sided) has power 0.8 if the true mean difference and spread are the observed ones,

    power(n) = P(|T'| > t_{1-0.01/2, n-1}),   T' ~ noncentral t(df = n - 1, nc = sqrt(n) mean / s_d)

(the standard power of the one-sample t-test on the differences, e.g. Cohen 1988; scipy.stats.nct).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

ALPHA = 0.05  # the CI is the (1 - ALPHA) = 95% interval; below it a verdict is at least "suggestive"
SIGNIFICANT = 0.01  # below it "significant"; the level the power calculation plans for
POWER = 0.8  # the power `seeds_needed` plans for
MIN_SEEDS = 3  # fewer seeds than this ran: a warning under the table


@dataclass
class Paired:
    n: int  # seeds in the pairing
    mean: float  # mean difference (NaN with no pair)
    ci_low: float  # NaN with fewer than 2 pairs
    ci_high: float
    p: float  # NaN with fewer than 2 pairs
    sd: float = math.nan  # s_d, the sample standard deviation of the differences (NaN with fewer than 2 pairs)


def paired(ref: dict[int, float], variant: dict[int, float]) -> Paired:
    """seed -> value for the reference and the variant; pairs the seeds where both are finite."""
    from scipy import stats

    seeds = [s for s in ref if s in variant and math.isfinite(ref[s]) and math.isfinite(variant[s])]
    d = [variant[s] - ref[s] for s in seeds]
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(d)
    if n == 1:
        return Paired(1, mean, math.nan, math.nan, math.nan)
    s_d = statistics.stdev(d)
    if s_d == 0:  # ttest_rel gives NaN (all 0) or p = 0 with a precision warning (all equal)
        return Paired(n, mean, mean, mean, 1.0 if mean == 0 else 0.0, 0.0)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * s_d / math.sqrt(n)
    p = float(stats.ttest_rel([variant[s] for s in seeds], [ref[s] for s in seeds]).pvalue)
    return Paired(n, mean, mean - half, mean + half, p, s_d)


def verdict(loss: Paired) -> str:
    if loss.n < 2:
        return f"n/a ({loss.n} seed{'' if loss.n == 1 else 's'})"
    direction = "better" if loss.mean < 0 else "worse"
    if loss.p < SIGNIFICANT:
        return f"significant: {direction}"
    if loss.p < ALPHA:
        return f"suggestive: {direction}"
    return "no detectable difference"


def seeds_needed(mean: float, sd: float, alpha: float = SIGNIFICANT, power: float = POWER) -> int | None:
    """The smallest number of seeds n >= 2 at which a two-sided paired t-test at level `alpha` has `power` against
    a true mean difference `mean` with spread `sd` (module docstring); None when there is no effect to detect
    (mean 0, sd NaN), 2 when the differences do not vary (sd 0). The search starts just below the normal
    approximation ((z_{1-alpha/2} + z_power) sd / mean)^2, which the t-test needs at least as many seeds as."""
    import numpy as np
    from scipy import stats

    if not (math.isfinite(mean) and math.isfinite(sd)) or mean == 0:
        return None
    if sd == 0:
        return 2
    effect = abs(mean) / sd
    guess = ((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / effect) ** 2
    start = max(2, int(guess) - 2)
    while True:
        n = np.arange(start, start + 64, dtype=float)
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        reach = stats.nct.sf(crit, n - 1, np.sqrt(n) * effect) + stats.nct.cdf(-crit, n - 1, np.sqrt(n) * effect)
        if (reach >= power).any():
            return int(n[np.argmax(reach >= power)])
        start += 64


def warnings(seeds_ran: int, ref_losses: list[float], loss_diffs: list[float]) -> list[str]:
    """The lines under the table: too few seeds; the reference's seed spread above the smallest |mean diff|."""
    lines = []
    if seeds_ran < MIN_SEEDS:
        lines.append(f"only {seeds_ran} seed{'' if seeds_ran == 1 else 's'} ran (fewer than {MIN_SEEDS}): the "
                     "intervals are wide and the t-test has little power")
    ref = [x for x in ref_losses if math.isfinite(x)]
    diffs = [abs(x) for x in loss_diffs if math.isfinite(x)]
    if len(ref) > 1 and diffs and statistics.stdev(ref) > min(diffs):
        lines.append(f"seed noise exceeds the smallest difference: more seeds or a longer budget needed "
                     f"(reference test loss std over seeds {statistics.stdev(ref):.4f} > smallest |mean "
                     f"difference| {min(diffs):.4f})")
    return lines
