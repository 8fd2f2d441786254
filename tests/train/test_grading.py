"""Graded verdicts (train/ablate/stats.py): significant at p < 0.01, suggestive at p < 0.05, how often each comes
out on synthetic sweeps with a known truth, the power calculation behind "seeds to settle", and that adding
seeds to a finished sweep reuses its runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from test_ablate_report import results
from test_ablate_runs import write_sweep

from train.ablate.report import aggregate, markdown
from train.ablate.stats import Paired, paired, seeds_needed, verdict
from train.ablate.sweep import main

REPS = 2000


def sweeps(n_seeds: int, effect: float, seed: int) -> np.ndarray:
    """(REPS, n_seeds, 2) final losses of a reference and a variant: loss = 3 + effect (variant only) + u_seed +
    e_run, u ~ N(0, 0.9^2) shared by both variants of a seed (same init and data order), e ~ N(0, 0.3^2): the
    seed sd of a variant's loss is sqrt(0.9^2 + 0.3^2) = 0.95, and `effect` is in those units."""
    rng = np.random.default_rng(seed)
    sd = math.hypot(0.9, 0.3)
    shared = rng.normal(0, 0.9, (REPS, n_seeds, 1))
    return 3 + shared + rng.normal(0, 0.3, (REPS, n_seeds, 2)) + np.array([0.0, effect * sd])


def grades(losses: np.ndarray) -> list[str]:
    """The verdict of every repetition, from the vectorised paired t-test (checked against `paired`)."""
    d = losses[..., 1] - losses[..., 0]
    n, mean, sd = d.shape[1], d.mean(1), d.std(1, ddof=1)
    p = sps.ttest_rel(losses[..., 1], losses[..., 0], axis=1).pvalue
    one = paired(dict(enumerate(losses[0, :, 0])), dict(enumerate(losses[0, :, 1])))
    assert (one.mean, one.p, one.sd) == pytest.approx((mean[0], p[0], sd[0]), rel=1e-9)
    return [verdict(Paired(n, m, math.nan, math.nan, q, s)) for m, q, s in zip(mean, p, sd)]


def test_a_difference_of_one_seed_sd_is_significant_at_10_seeds_and_rarely_at_3():
    at_10 = grades(sweeps(10, 1.0, seed=0))
    at_3 = grades(sweeps(3, 1.0, seed=1))
    assert at_10.count("significant: worse") / REPS > 0.95
    assert at_3.count("significant: worse") / REPS < 0.3
    assert not any(g.endswith("better") and g.startswith("significant") for g in at_10 + at_3)


@pytest.mark.parametrize("n_seeds", [3, 10])
def test_no_difference_is_significant_about_1_percent_of_the_time(n_seeds):
    graded = grades(sweeps(n_seeds, 0.0, seed=2 + n_seeds))
    low, high = sps.binom.interval(0.999, REPS, 0.01)  # the count a level-0.01 test gives, 99.9% of the time
    significant = sum(g.startswith("significant") for g in graded)
    assert low <= significant <= high
    low, high = sps.binom.interval(0.999, REPS, 0.04)  # 0.01 <= p < 0.05
    assert low <= sum(g.startswith("suggestive") for g in graded) <= high


def test_grades_and_directions():
    grade = lambda mean, p: verdict(Paired(3, mean, math.nan, math.nan, p, 0.1))  # noqa: E731
    assert [grade(-0.1, 0.005), grade(0.1, 0.005), grade(-0.1, 0.03), grade(0.1, 0.049), grade(0.1, 0.05)] == \
        ["significant: better", "significant: worse", "suggestive: better", "suggestive: worse",
         "no detectable difference"]


def test_seeds_needed_matches_known_values_and_its_power():
    assert seeds_needed(0.5, 1.0, alpha=0.05) == 34  # Cohen's d_z = 0.5, paired t, 80% power: 34 (G*Power)
    assert seeds_needed(1.0, 1.0, alpha=0.05) == 10
    n = seeds_needed(1.0, 1.0)  # at the default level 0.01: 16
    assert n == 16 and seeds_needed(-1.0, 1.0) == n
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(0.1, 0.0) == 2
    d = np.random.default_rng(3).normal(1.0, 1.0, (4000, n))  # simulated power at n and n - 1 seeds
    power = [(sps.ttest_1samp(d[:, :k], 0, axis=1).pvalue < 0.01).mean() for k in (n, n - 1)]
    assert power == pytest.approx([0.835, 0.797], abs=0.02)  # exact (noncentral t): 0.8346 and 0.7967


def test_suggestive_rows_say_how_many_seeds_would_settle_them():
    ref, variant = [3.00, 3.10, 2.90], [2.90, 3.05, 2.84]  # d = -0.10, -0.05, -0.06: p 0.044
    rows = aggregate(results({"ref": ref, "variant": variant}))
    d = np.subtract(variant, ref)
    assert rows[1]["verdict"] == "suggestive: better"
    assert rows[1]["seeds_to_settle"] == seeds_needed(d.mean(), d.std(ddof=1)) == 5
    assert "| suggestive: better | 5 |" in markdown(rows, "### t")


def test_adding_seeds_reuses_the_finished_runs(tiny_corpus, tmp_path, capsys):
    path = write_sweep(tmp_path, tiny_corpus, {"softmax": {}, "gelu": {"model.ffn": "gelu"}})
    main(["--config", str(path)])
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "ablate-sweep").glob("*/ablate.json")}
    assert len(finished) == 4
    capsys.readouterr()
    main(["--config", str(path), "--seeds=[0, 1, 2]"])
    assert "6 runs (4 finished before)" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # not trained again
    assert sorted(p.parent.name for p in (tmp_path / "ablate-sweep").glob("*/ablate.json")) == \
        [f"{v}-s{s}" for v in ("gelu", "softmax") for s in (0, 1, 2)]
