"""How an ablation's runs train and are judged: the learning-rate grid (chosen on the selection split only),
parallel workers equal to one process bit for bit, a killed worker resumed, the submitit engine's local executor."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_train_overrides

import train.ablate.splits
from train.ablate.grid import choose_lrs, edge_warnings
from train.ablate.report import RunResult
from train.ablate.sweep import main

REPO = Path(__file__).resolve().parents[2]


def write_sweep(tmp_path: Path, corpus: Path, variants: dict, steps: int = 4, **top) -> Path:
    base = tiny_train_overrides(corpus, tmp_path, **{"train.max_steps": steps, "train.val_every": 2,
                                                     "train.val_batches": 1, "train.num_samples": 0,
                                                     "train.ckpt_every": 2})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": "base.yaml", "seeds": [0, 1], "threads": 1, "jobs": 1, "variants": variants, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def rows(sweep_dir: Path, name: str = "results.csv") -> list[dict]:
    with (sweep_dir / name).open() as f:
        return list(csv.DictReader(f))


def run_numbers(sweep_dir: Path) -> dict:
    """run -> its split scores and logged validation losses (what the table is computed from)."""
    from train.report import read_metrics, series

    out = {}
    for info in sorted(sweep_dir.glob("*/ablate.json")):
        curve = series(read_metrics(info.parent), "val/loss")
        out[info.parent.name] = (json.loads(info.read_text())["splits"], curve)
    return out


def grid_result(variant, lr, seed, selection, test) -> RunResult:
    return RunResult(variant, seed, "", 1, 1, 1.0, test, test / 3, 1.0, 1.0, {}, lr=lr, selection_loss=selection)


def test_choice_follows_the_selection_split_even_when_the_test_split_disagrees():
    grid = [grid_result("a", 1e-3, s, 3.0, 2.0) for s in (0, 1)] + [grid_result("a", 3e-3, s, 2.9, 9.0)
                                                                     for s in (0, 1)]
    grid += [grid_result("b", 1e-3, 0, 3.1, 1.0), grid_result("b", 3e-3, 0, math.nan, 1.0)]  # a halted run
    assert choose_lrs(grid) == {"a": 3e-3, "b": 1e-3}


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    lines = edge_warnings({"a": 1e-2, "b": 3e-3, "c": 1e-2, "d": 1e-3}, [1e-3, 3e-3, 1e-2])
    assert lines == ["a, c chose the largest learning rate of the grid (0.01): its best may lie outside it; add a "
                     "larger one to `lrs`",
                     "d chose the smallest learning rate of the grid (0.001): its best may lie outside it; add a "
                     "smaller one to `lrs`"]
    assert edge_warnings({"b": 3e-3}, [1e-3, 3e-3, 1e-2]) == [] and edge_warnings({"a": 1e-3}, [1e-3]) == []


def test_lr_grid_is_chosen_without_reading_the_test_split(tiny_corpus, tmp_path, monkeypatch):
    variants = {"softmax": {}, "gelu": {"model.ffn": "gelu"}}
    path = write_sweep(tmp_path, tiny_corpus, variants, lrs=[1e-3, 3e-2])
    main(["--config", str(path)])
    sweep_dir = tmp_path / "ablate-sweep"
    assert sorted(p.name for p in sweep_dir.glob("*-lr*")) == sorted(
        f"{v}-lr{lr}-s{s}" for v in variants for lr in ("0.001", "0.03") for s in (0, 1))
    grid, table = rows(sweep_dir, "lr_grid.csv"), rows(sweep_dir)
    assert len(grid) == 4 and sum(r["chosen"] == "True" for r in grid) == 2
    for variant in variants:  # the chosen lr has the lowest mean selection loss, and the table uses it
        mine = [r for r in grid if r["variant"] == variant]
        best = min(mine, key=lambda r: float(r["selection_loss_mean"]))
        assert best["chosen"] == "True"
        assert next(r for r in table if r["variant"] == variant)["lr"] == best["lr"]
    assert (sweep_dir / "lr_grid.png").stat().st_size > 0 and "| lr |" in (sweep_dir / "results.md").read_text()
    assert "learning rate of the grid" in (sweep_dir / "results.md").read_text()  # 2 lrs: every choice is an edge
    run = RunResult.read("softmax", 0, sweep_dir / "softmax-lr0.001-s0", "", 1e-3)  # the compute plots' x values
    assert run.tokens_per_step == 4 * 32 and list(run.curve) == [1, 3]
    assert 0 < run.elapsed[1] < run.elapsed[3] and run.flops_per_token > 0

    # poison the test half of the validation text and score the finished runs again
    real = train.ablate.splits.split_tokens

    def poisoned(tokens, eot):
        halves = real(tokens, eot)
        rng = np.random.default_rng(0)
        return {**halves, "test": rng.integers(0, 300, len(halves["test"])).astype(tokens.dtype)}

    monkeypatch.setattr(train.ablate.splits, "split_tokens", poisoned)
    before = run_numbers(sweep_dir)
    for info_file in sweep_dir.glob("*/ablate.json"):
        info = json.loads(info_file.read_text())
        info_file.write_text(json.dumps({**info, "splits": None}))
    main(["--config", str(path)])  # every run is reused; only the split scores are computed again
    after = run_numbers(sweep_dir)
    for run in before:
        assert after[run][0]["selection"] == before[run][0]["selection"], run
        assert abs(after[run][0]["test"]["loss"] - before[run][0]["test"]["loss"]) > 0.05, run  # poisoned
    assert [r["chosen"] for r in rows(sweep_dir, "lr_grid.csv")] == [r["chosen"] for r in grid]


def test_lr_seeds_grid_on_some_seeds_the_rest_at_the_chosen_lr(tiny_corpus, tmp_path, capsys):
    variants = {"softmax": {}, "gelu": {"model.ffn": "gelu"}}
    path = write_sweep(tmp_path, tiny_corpus, variants, lrs=[1e-3, 3e-2], lr_seeds=[0], seeds=[0, 1, 2])
    main(["--config", str(path)])
    sweep_dir = tmp_path / "ablate-sweep"
    grid = rows(sweep_dir, "lr_grid.csv")
    assert len(grid) == 4 and all(r["seeds"] == "1" for r in grid)  # the grid: seed 0 at both lrs
    seed0 = [RunResult.read(v, 0, sweep_dir / f"{v}-lr{lr:g}-s0", "", lr) for v in variants for lr in (1e-3, 3e-2)]
    chosen = choose_lrs(seed0)
    expected = {f"{v}-lr{lr:g}-s0" for v in variants for lr in (1e-3, 3e-2)}
    expected |= {f"{v}-lr{chosen[v]:g}-s{s}" for v in variants for s in (1, 2)}
    assert {p.name for p in sweep_dir.glob("*-lr*")} == expected  # seeds 1, 2 only at the chosen lr
    table = rows(sweep_dir)
    for row in table:
        assert row["seeds"] == "3" and float(row["lr"]) == chosen[row["variant"]]
    assert "seeds paired" in (sweep_dir / "results.md").read_text()
    capsys.readouterr()
    main(["--config", str(path)])  # a rerun reuses all 8 runs: the choice reads seed 0 only, so it cannot move
    assert capsys.readouterr().out.count("4 runs (4 finished before)") == 2
    assert {p.name for p in sweep_dir.glob("*-lr*")} == expected and rows(sweep_dir, "lr_grid.csv") == grid


@pytest.mark.parametrize("top, message", [
    ({"lr_seeds": [0]}, "needs `lrs`"),
    ({"lrs": [1e-3, 3e-3], "lr_seeds": [5]}, "from seeds"),
    ({"lrs": [1e-3, 3e-3], "lr_seeds": []}, "non-empty"),
])
def test_bad_lr_seeds_exit_2(tiny_corpus, tmp_path, capsys, top, message):
    path = write_sweep(tmp_path, tiny_corpus, {"softmax": {}}, **top)
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_selection_and_test_splits_deal_the_stories_alternately():
    eot, tokens = 0, np.array([5, 6, 0, 7, 0, 8, 9, 10, 0, 11, 0, 12])  # stories: 5 6 | 7 | 8 9 10 | 11 | 12
    halves = train.ablate.splits.split_tokens(tokens, eot)
    assert halves["selection"].tolist() == [5, 6, 0, 8, 9, 10, 0, 12]
    assert halves["test"].tolist() == [7, 0, 11, 0]


@pytest.mark.slow
def test_parallel_jobs_and_submitit_equal_one_process_bit_for_bit(tiny_corpus, tmp_path):
    variants = {"softmax": {}, "linear": {"model.mixer": "linear"}}
    numbers, tables = {}, {}
    for name, top in {"sequential": {"jobs": 1}, "parallel": {"jobs": 2},
                      "submitit": {"jobs": 2, "launcher": "submitit-local"}}.items():
        folder = tmp_path / name
        folder.mkdir()
        main(["--config", str(write_sweep(folder, tiny_corpus, variants, **top))])
        numbers[name] = run_numbers(folder / "ablate-sweep")
        tables[name] = [{k: v for k, v in r.items() if k not in ("tokens_per_s", "wall_s")}
                        for r in rows(folder / "ablate-sweep")]
    assert len(numbers["sequential"]) == 4
    assert numbers["parallel"] == numbers["sequential"] and numbers["submitit"] == numbers["sequential"]
    assert tables["parallel"] == tables["sequential"] and tables["submitit"] == tables["sequential"]
    assert (tmp_path / "parallel" / "ablate-sweep" / "softmax-s1" / "train.log").is_file()  # a worker's output


def _sweep_process(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "-m", "train.ablate", "--config", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the driver watch is Linux-only")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_workers_checkpoint_and_stop_when_the_driver_dies_or_is_stopped(tiny_corpus, tmp_path, how):
    path = write_sweep(tmp_path, tiny_corpus, {"softmax": {}, "gelu": {"model.ffn": "gelu"}}, steps=100_000,
                       jobs=2, seeds=[0])
    sweep_dir = tmp_path / "ablate-sweep"
    driver = _sweep_process(path)
    runs = [sweep_dir / "softmax-s0", sweep_dir / "gelu-s0"]
    deadline = time.time() + 240
    while not all(list(r.glob("checkpoints/*.ckpt")) for r in runs) and time.time() < deadline:
        time.sleep(0.2)
    workers = [int((r / ".lock").read_text()) for r in runs]
    stopped_at = time.time()
    driver.send_signal(how)
    driver.communicate(timeout=120)

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    while any(alive(pid) for pid in workers) and time.time() < stopped_at + 120:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers), "a worker outlived its driver"
    for run in runs:  # each stopped through the SIGTERM path: saved last.ckpt, then exited
        assert "stopped (SIGTERM): saved" in (run / "train.log").read_text(), run
        assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "ablate.json").exists()


@pytest.mark.slow
def test_a_killed_worker_is_reported_and_resumed(tiny_corpus, tmp_path):
    path = write_sweep(tmp_path, tiny_corpus, {"softmax": {}, "gelu": {"model.ffn": "gelu"}}, steps=120,
                       jobs=2, seeds=[0])
    sweep_dir = tmp_path / "ablate-sweep"
    driver = _sweep_process(path)
    victim = sweep_dir / "gelu-s0"
    deadline = time.time() + 240
    while not list(victim.glob("checkpoints/*.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(int((victim / ".lock").read_text()), signal.SIGKILL)  # the worker training it
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, err
    assert "gelu-s0 did not finish (signal 9" in err and "run the same command again" in err
    assert (sweep_dir / "softmax-s0" / "ablate.json").is_file() and not (victim / "ablate.json").exists()

    again = _sweep_process(path)  # resumes the killed run from its checkpoint, reuses the finished one
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "2 runs (1 finished before)" in out and (victim / "ablate.json").is_file()
    assert len(list((victim / "logs").glob("version_*"))) == 2  # a second launch: resumed, not restarted
    assert len(list((sweep_dir / "softmax-s0" / "logs").glob("version_*"))) == 1
