"""Paired statistics in the ablation table, against numbers worked out by hand.

Three seeds give 2 degrees of freedom, where Student's t has a closed form: P(|T| >= t) = 1 - t / sqrt(t^2 + 2),
so t_{0.975, 2} = 0.95 sqrt(2 / (1 - 0.95^2)) = 4.30265; with 2 seeds (1 df, Cauchy) P(|T| >= t) =
1 - (2/pi) atan(t) and t_{0.975, 1} = tan(0.475 pi) = 12.7062.
"""

from __future__ import annotations

import csv
import math

import pytest

from train.ablate.report import STATS, RunResult, aggregate, markdown, table_notes, write_results
from train.ablate.stats import paired

REF = [3.00, 3.10, 2.90]  # reference val loss on seeds 0, 1, 2 (std over seeds: 0.1)
LOSSES = {"ref": REF,
          "better": [2.90, 2.98, 2.81],  # d = -0.10, -0.12, -0.09
          "worse": [3.05, 3.17, 2.96],  # d = +0.05, +0.07, +0.06
          "same": [3.02, 3.07, 2.92]}  # d = +0.02, -0.03, +0.02
BPB = 0.4  # val bpb = 0.4 * val loss: the bpb differences are 0.4 times those of the loss, with the same p


def results(losses: dict[str, list[float]], seeds=(0, 1, 2)) -> list[RunResult]:
    return [RunResult(variant, seed, "", 1000, 800, 2e6, loss, BPB * loss, 5000.0, 10.0, {1: loss + 1, 2: loss},
                      lr=3e-3)
            for variant, values in losses.items() for seed, loss in zip(seeds, values)]


def hand(d: list[float]) -> tuple[float, float, float, float]:
    """mean, CI low, CI high, p for 2 or 3 differences, from the formulas (no scipy)."""
    n = len(d)
    mean = sum(d) / n
    s_d = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (s_d / math.sqrt(n))
    t_crit, p = {3: (0.95 * math.sqrt(2 / (1 - 0.95 ** 2)), 1 - abs(t) / math.sqrt(t * t + 2)),
                 2: (math.tan(0.475 * math.pi), 1 - 2 / math.pi * math.atan(abs(t)))}[n]
    half = t_crit * s_d / math.sqrt(n)
    return mean, mean - half, mean + half, p


def test_paired_difference_matches_the_formulas():
    rows = {r["variant"]: r for r in aggregate(results(LOSSES))}
    better = rows["better"]
    assert better["paired_seeds"] == 3
    assert better["test_loss_diff_mean"] == pytest.approx(-0.103333, abs=1e-6)
    assert better["test_loss_diff_ci_low"] == pytest.approx(-0.141279, abs=1e-6)
    assert better["test_loss_diff_ci_high"] == pytest.approx(-0.065388, abs=1e-6)
    assert better["test_loss_p"] == pytest.approx(0.0072054, abs=1e-6)
    for name in ("better", "worse", "same"):
        d = [v - r for v, r in zip(LOSSES[name], REF)]
        row = rows[name]
        got = (row["test_loss_diff_mean"], row["test_loss_diff_ci_low"], row["test_loss_diff_ci_high"],
               row["test_loss_p"])
        assert got == pytest.approx(hand(d), rel=1e-9), name
        mean, low, high, p = hand(d)
        assert (row["test_bpb_diff_mean"], row["test_bpb_diff_ci_low"], row["test_bpb_diff_ci_high"]) == \
            pytest.approx((BPB * mean, BPB * low, BPB * high), rel=1e-9)
        assert row["test_bpb_p"] == pytest.approx(p, rel=1e-6)
    assert rows["worse"]["test_loss_p"] == pytest.approx(0.0091326, abs=1e-6)
    assert rows["same"]["test_loss_p"] == pytest.approx(0.8599720, abs=1e-6)


def test_verdicts_and_reference_row():
    rows = aggregate(results(LOSSES))
    assert [r["verdict"] for r in rows] == ["reference", "significant: better", "significant: worse",
                                            "no detectable difference"]  # p 0.007, 0.009, 0.86
    assert all(rows[0][key] == "" for key in STATS if key != "verdict")  # no difference against itself
    table = markdown(rows, "### t")
    assert "| better | 0.003 | 1,000 | 800 | 2.00 | - | 2.8967 ± 0.0850 | 1.1587 ± 0.0340 | " \
           "-0.1033 [-0.1413, -0.0654] | 0.007 | -0.0413 [-0.0565, -0.0262] | 0.007 | 3 | significant: better | - | " \
           "5,000 | 10 |" in table
    assert "| ref | 0.003 | 1,000 | 800 | 2.00 | - | 3.0000 ± 0.1000 | 1.2000 ± 0.0400 | reference | - | " \
           "reference | - | - | reference |" in table
    assert len(table.splitlines()) == 2 + 2 + len(rows)  # one row per variant


def test_identical_runs_are_no_difference():
    assert paired({0: 3.0, 1: 3.1}, {0: 3.0, 1: 3.1}).p == 1.0
    assert aggregate(results({"ref": REF, "copy": REF}))[1]["verdict"] == "no detectable difference"


def test_warnings_seed_noise_and_caption():
    res = results(LOSSES)
    lines = table_notes(res, aggregate(res))
    assert "paired t-test over seeds, two-sided" in lines[0]
    assert not any("seed ran" in line or "seeds ran" in line for line in lines)  # 3 seeds
    noise = [line for line in lines if "seed noise exceeds the smallest difference" in line]
    assert len(noise) == 1 and "0.1000 > smallest |mean difference| 0.0033" in noise[0]  # std 0.1 > |+0.0033|
    quiet = results({"ref": [3.00, 3.01, 2.99], "better": [2.90, 2.89, 2.90]})  # std 0.01 < 0.1033
    assert len(table_notes(quiet, aggregate(quiet))) == 1  # the caption only


def test_one_seed_is_not_tested():
    res = results({"ref": [3.0], "better": [2.9]}, seeds=(0,))
    rows = aggregate(res)
    row = rows[1]
    assert row["paired_seeds"] == 1 and row["test_loss_diff_mean"] == pytest.approx(-0.1)
    assert math.isnan(row["test_loss_p"]) and math.isnan(row["test_loss_diff_ci_low"])
    assert row["verdict"] == "n/a (1 seed)"
    lines = table_notes(res, rows)
    assert any(line.startswith("**Warning:** only 1 seed ran (fewer than 3)") for line in lines)
    assert not any("seed noise" in line for line in lines)  # no spread with one seed
    assert "| -0.1000 (1 seed) | - |" in markdown(rows, "### t", lines)


def test_halted_run_is_left_out_of_the_pairing():
    losses = {"ref": REF, "better": [2.90, math.nan, 2.81], "gone": [math.nan] * 3}
    res = results(losses)
    rows = {r["variant"]: r for r in aggregate(res)}
    better = rows["better"]
    assert better["paired_seeds"] == 2 and better["excluded_seeds"] == "1"
    mean, low, high, p = hand([2.90 - 3.00, 2.81 - 2.90])  # seeds 0 and 2
    assert (better["test_loss_diff_mean"], better["test_loss_diff_ci_low"], better["test_loss_diff_ci_high"],
            better["test_loss_p"]) == pytest.approx((mean, low, high, p), rel=1e-9)
    assert p == pytest.approx(0.033475, abs=1e-6) and better["verdict"] == "suggestive: better"
    assert rows["gone"]["paired_seeds"] == 0 and rows["gone"]["verdict"] == "n/a (0 seeds)"
    notes = table_notes(res, list(rows.values()))
    assert "Excluded from pairing (halted or NaN loss): better-s1, gone-s0, gone-s1, gone-s2." in notes
    # a reference seed that halted leaves that seed out of every pair
    res = results({"ref": [3.00, math.nan, 2.90], "better": LOSSES["better"]})
    row = aggregate(res)[1]
    assert row["paired_seeds"] == 2 and row["excluded_seeds"] == "1"
    assert row["test_loss_diff_mean"] == pytest.approx(hand([-0.10, -0.09])[0])
    assert any("reference seed that halted" in line for line in table_notes(res, aggregate(res)))


def test_write_results_adds_the_columns(tmp_path):
    res = results({"ref": REF[:2], "better": LOSSES["better"][:2]}, seeds=(0, 1))
    sweep = {"name": "demo", "base": "base.yaml", "seeds": [0, 1], "match": None}
    text = write_results(tmp_path, sweep, res)
    with (tmp_path / "results.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:13] == ["variant", "lr", "width", "params", "non_embedding_params", "flops_per_token",
                                      "seeds", "test_loss_mean", "test_loss_std", "test_bpb_mean", "test_bpb_std",
                                      "tokens_per_s", "wall_s"]
    assert reader.fieldnames[13:] == list(STATS)
    assert rows[0]["verdict"] == "reference" and rows[0]["test_loss_p"] == ""
    assert rows[1]["paired_seeds"] == "2" and float(rows[1]["test_loss_p"]) == pytest.approx(
        hand([2.90 - 3.00, 2.98 - 3.10])[3], rel=1e-9)
    assert text == (tmp_path / "results.md").read_text()
    assert "paired t-test over seeds, two-sided" in text and "**Warning:** only 2 seeds ran" in text


@pytest.mark.parametrize("info", [
    [1, 2],  # not a mapping
    {"wall_s": 1.0, "non_embedding_params": 1, "flops_per_token": 1.0},  # no params
    {"wall_s": 1.0, "params": "many", "non_embedding_params": 1, "flops_per_token": 1.0},
    {"wall_s": 1.0, "params": 10, "non_embedding_params": 1, "flops_per_token": 1.0, "splits": {"test": 3}},
    {"wall_s": -1.0, "params": 10, "non_embedding_params": 1, "flops_per_token": 1.0},
])
def test_a_damaged_ablate_json_is_one_line_naming_the_fix(tmp_path, info):
    """ablate.json is read through inputs/: a damaged or edited file is refused in one line naming the file."""
    import json

    from inputs.errors import InputError
    from train.ablate.report import RunResult

    (tmp_path / "ablate.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="ablate.json") as err:
        RunResult.read("softmax", 0, tmp_path, "")
    assert "\n" not in str(err.value)
