"""Scaling ladders: the fit L(C) = E + A C^-alpha recovers known parameters, the crossing of two curves and its
bootstrap interval, per-rung matching with the real param_match, a 1-rung ladder refused, and a tiny ladder end
to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_train_overrides

from train.ablate.ladder import build_ladder, check_ladder, depth_shape, run_ladder
from train.ablate.param_match import count_flops, count_non_embedding
from train.ablate.scaling import analyse, fit
from train.ablate.sweep import load_sweep, main
from train.config import ConfigError

C = np.geomspace(1e12, 1e16, 6)  # six rungs over four decades of training FLOPs


def law(compute, e, a, alpha):
    return e + a * compute ** -alpha


def test_fit_recovers_known_parameters_from_noisy_points():
    """Noise of 0.002 nats (about a tenth of a seed spread here): E within 0.03, alpha within 0.01 and A within
    15% in each of 20 seeded draws."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        f = fit(C, law(C, 1.5, 2000.0, 0.25) + rng.normal(0, 0.002, len(C)))
        assert f.E == pytest.approx(1.5, abs=0.03) and f.alpha == pytest.approx(0.25, abs=0.01)
        assert f.A == pytest.approx(2000.0, rel=0.15) and f.at_bounds == ()


def test_a_rising_curve_has_no_fit_and_a_flat_one_sits_at_a_bound():
    assert np.isnan(fit(C, np.linspace(2.0, 3.0, len(C))).alpha)
    assert fit(C, np.full(len(C), 2.0) + np.linspace(0, 1e-9, len(C))[::-1]).at_bounds


def test_crossing_is_found_and_its_bootstrap_interval_covers_the_truth():
    """A reference that starts lower and flattens (alpha 0.15) and a variant that starts higher and falls faster
    (alpha 0.22) cross at 2.97e13 FLOPs; 5 seeds of noise 0.01 per rung; 50 seeded repetitions of 100 bootstrap
    replicates each: the point estimate is within a factor 2 of the truth and the interval covers it in most."""
    ref_law, var_law = (1.9, 300.0, 0.15), (1.6, 3000.0, 0.22)
    from scipy.optimize import brentq

    truth = np.exp(brentq(lambda x: law(np.exp(x), *var_law) - law(np.exp(x), *ref_law), np.log(1e12), np.log(1e16)))
    rng, covered = np.random.default_rng(1), 0
    for rep in range(50):
        losses = {name: law(C, *p)[:, None] + rng.normal(0, 0.01, (len(C), 5))
                  for name, p in (("ref", ref_law), ("var", var_law))}
        out = analyse({"ref": C, "var": C}, losses, n_boot=100, seed=rep)["var"]
        assert out["crossing_flops"] == pytest.approx(truth, rel=1.0)
        low, high = out["crossing_flops_ci"]
        covered += low <= truth <= high
    assert covered >= 40


def test_parallel_curves_do_not_cross_within_100x():
    losses = {"ref": law(C, 2.0, 300.0, 0.2)[:, None] + np.zeros((len(C), 3)),
              "var": law(C, 2.1, 300.0, 0.2)[:, None] + np.zeros((len(C), 3))}
    assert np.isnan(analyse({"ref": C, "var": C}, losses, n_boot=20)["var"]["crossing_flops"])


def ladder_file(tmp_path, corpus, ladder, **top):
    base = tiny_train_overrides(corpus, tmp_path, **{"train.max_steps": 3, "train.val_every": 3,
                                                     "train.val_batches": 1, "train.num_samples": 0,
                                                     "train.ckpt_every": 3, "train.warmup_steps": 1})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": "base.yaml", "seeds": [0, 1], "threads": 1, "jobs": 1, "ladder": ladder,
             "variants": {"softmax": {}, "gla": {"model.mixer": "gla"}}, **top}
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.mark.parametrize("match,measure", [("params", count_non_embedding), ("flops", count_flops)])
def test_every_rung_is_matched_to_its_own_reference(tiny_corpus, tmp_path, match, measure):
    rungs = [{"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1},
             {"d_model": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1}, {"depth": 2}]
    path = ladder_file(tmp_path, tiny_corpus, rungs, match=match, tokens={"per_param": 2}, lr_rule="inverse_width")
    built = build_ladder(*load_sweep(str(path), []))
    targets = []
    for rung in built:
        ref, gla = (next(iter(rung.configs[v].values())) for v in ("softmax", "gla"))
        assert abs(measure(gla) - measure(ref)) <= 0.02 * measure(ref)
        assert ref.train.name == f"softmax-r{rung.index}-s0" and gla.train.lr == ref.train.lr
        assert ref.train.lr == pytest.approx(3e-3 * 32 / ref.model.d_model) and (ref.train.lr, 0) in rung.configs["gla"]
        targets.append(measure(ref))
        steps = -(-2 * count_non_embedding(ref) // (4 * 32))  # per_param 2, 4 x 32 tokens per step
        assert rung.shape["steps"] == ref.train.max_steps == steps
    assert targets == sorted(targets) and built[2].shape["d_model"] == 128 == depth_shape(2)["d_model"]


@pytest.mark.parametrize("top,message", [
    ({"ladder": [{"depth": 1}]}, "1 rung: no fit"),
    ({"ladder": [{"depth": 1}, {"width": 3}]}, "ladder rung 1"),
    ({"ladder": [{"depth": 1}, {"depth": 2}], "tokens": {"max_steps": [3]}}, "one positive integer per rung"),
    ({"ladder": [{"depth": 1}, {"depth": 2}], "lr_rule": "sqrt"}, "lr_rule: invalid choice"),
])
def test_bad_ladders_exit_2_in_one_line(tiny_corpus, tmp_path, capsys, top, message):
    path = ladder_file(tmp_path, tiny_corpus, **top)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)], ladder=run_ladder)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_rung_keys_on_the_command_line_are_refused(tiny_corpus, tmp_path):
    path = ladder_file(tmp_path, tiny_corpus, [{"depth": 1}, {"depth": 2}])
    sweep, cli = load_sweep(str(path), ["--model.d_model=48"])
    with pytest.raises(ConfigError, match="set by the ladder"):
        check_ladder(sweep, cli)


def test_tiny_ladder_end_to_end_reports_each_rung_and_too_few_rungs(tiny_corpus, tmp_path, capsys):
    rungs = [{"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1},
             {"d_model": 48, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}]
    main(["--config", str(ladder_file(tmp_path, tiny_corpus, rungs, match="params"))], ladder=run_ladder)
    folder = tmp_path / "ablate-ladder"
    runs = sorted(p.parent.name for p in folder.glob("*/ablate.json"))
    assert runs == [f"{v}-r{k}-s{s}" for v in ("gla", "softmax") for k in (0, 1) for s in (0, 1)]
    text = (folder / "ladder.md").read_text()
    assert text.count("| softmax |") == 2 and text.count("| gla |") == 2  # one paired table per rung
    assert "### Rung 0: d_model=32" in text and "### Rung 1: d_model=48" in text
    assert "No fit: 2 rungs are too few" in text and text in capsys.readouterr().out
    assert json.loads((folder / "ladder.json").read_text())["no_fit"].startswith("2 rungs")
    assert len((folder / "ladder.csv").read_text().splitlines()) == 1 + 4
    assert (folder / "ladder.png").stat().st_size > 0 and (folder / "rung1" / "results.md").is_file()
    main(["--config", str(ladder_file(tmp_path, tiny_corpus, rungs, match="params"))], ladder=run_ladder)  # all reused
    assert "8 runs (8 finished before)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["ladder_cpu", "ladder_gpu"])
def test_shipped_ladders_have_4_rungs_over_16x_in_parameters_and_3_seeds(name):
    sweep, cli = load_sweep(str(Path(__file__).parents[2] / "configs" / "ablations" / f"{name}.yaml"), [])
    rungs = build_ladder(sweep, cli)
    sizes = [count_non_embedding(next(iter(rung.configs["softmax"].values()))) for rung in rungs]
    assert len(rungs) >= 4 and sizes[-1] >= 16 * sizes[0] and len(sweep["seeds"]) >= 3
    assert list(rungs[0].configs) == ["softmax", "gla", "mamba2", "softmax-adamw"]


def test_ladder_report_of_four_rungs_fits_every_variant(tmp_path):
    """write_ladder on made-up runs: 4 rungs, a reference that flattens and a variant that falls faster."""
    from train.ablate.ladder import Rung
    from train.ablate.ladder_report import write_ladder
    from train.ablate.report import RunResult

    laws, rng = {"softmax": (1.9, 300.0, 0.15), "gla": (1.6, 3000.0, 0.22)}, np.random.default_rng(0)
    rungs, results = [], {}
    for k, compute in enumerate(C[:4]):
        steps = int(compute / 1e9)  # 1e9 FLOPs per step: 1e6 FLOPs per token x 1,000 tokens per step
        rungs.append(Rung(k, {"d_model": 32 * (k + 1), "steps": steps}, {name: {} for name in laws},
                          dict.fromkeys(laws, "")))
        results[k] = [RunResult(name, seed, "", 1, 1, 1e6, law(compute, *p) + rng.normal(0, 0.01), 1.0, 1.0, 1.0,
                                {}, lr=3e-3, tokens_per_step=1000) for name, p in laws.items() for seed in range(3)]
    sweep = {"name": "t", "base": "base.yaml", "seeds": [0, 1, 2], "match": "params", "tokens": {"per_param": 20}}
    text = write_ladder(tmp_path, sweep, rungs, results, ["### t\n\n| table |\n"] * 4)
    fits = json.loads((tmp_path / "ladder.json").read_text())["fits"]
    assert set(fits) == set(laws) and all(f["rungs"] == 4 and not f["too_few_rungs"] for f in fits.values())
    assert "| softmax | " in text and "| gla | " in text and "they are a guess" in text.replace("\n", " ")
    assert "No fit" not in text and (tmp_path / "ladder.png").stat().st_size > 0


def test_lrs_choose_each_rungs_lr_on_the_selection_split(tiny_corpus, tmp_path):
    rungs = [{"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1},
             {"d_model": 48, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1}]
    path = ladder_file(tmp_path, tiny_corpus, rungs, seeds=[0], lrs=[1e-3, 3e-2], variants={"softmax": {}})
    main(["--config", str(path)], ladder=run_ladder)
    folder = tmp_path / "ablate-ladder"
    assert sorted(p.parent.name for p in folder.glob("*/ablate.json")) == \
        [f"softmax-r{k}-lr{lr}-s0" for k in (0, 1) for lr in ("0.001", "0.03")]
    for k in (0, 1):
        with (folder / f"rung{k}" / "lr_grid.csv").open() as f:
            grid = list(csv.DictReader(f))
        best = min(grid, key=lambda row: float(row["selection_loss_mean"]))
        assert [row["chosen"] for row in grid] == [str(row is best) for row in grid]
