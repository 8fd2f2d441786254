"""Rerunning a training command (train/rundir/claim.py): an unfinished run resumes to the same losses, a finished
one is refused with the fix, a different config is refused naming the key, a run with its last checkpoint but no
completion marker is finished, and two processes started with the same name never both write the folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from conftest import tiny_train_overrides, train_losses
from safetensors.torch import load_file
from train_script import as_argv

from train.cli import run_cli
from train.config import ConfigError, load_config
from train.run import pretrain
from train.rundir.claim import FINISHED, config_difference, is_finished

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("train_script.py")


def values(corpus, out, **extra) -> dict:
    return tiny_train_overrides(corpus, out, **{"train.num_samples": 0, **extra})


def run(corpus, out, callbacks=(), **extra) -> Path:
    return pretrain(load_config(None, values(corpus, out, **extra)), callbacks)


class Crash(L.Callback):
    """Fails the run after `step` optimizer steps (after that step's checkpoint): an unfinished run."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("crash (test)")


@pytest.fixture(scope="module")
def full_run(tiny_corpus, tmp_path_factory) -> Path:
    return run(tiny_corpus, tmp_path_factory.mktemp("full"))


def test_a_finished_run_has_its_marker_and_a_rerun_is_refused_in_one_line(tiny_corpus, full_run, capsys):
    assert is_finished(full_run) and not (full_run / ".lock").exists()
    before = {p: p.stat().st_mtime_ns for p in full_run.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pretrain, as_argv(values(tiny_corpus, full_run.parent)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {full_run} is a finished run (step 8)")
    assert "--train.name" in err and "--train.resume=true" in err
    assert {p: p.stat().st_mtime_ns for p in full_run.rglob("*")} == before  # nothing written
    assert sorted(p.name for p in full_run.parent.iterdir()) == ["cache", "tiny"]


def test_an_unfinished_run_resumes_on_rerun_and_ends_finished(tiny_corpus, full_run, tmp_path):
    with pytest.raises(RuntimeError, match="crash"):
        run(tiny_corpus, tmp_path, [Crash(4)])
    first = tmp_path / "tiny"
    assert not is_finished(first) and not (first / "model.safetensors").exists()
    with pytest.raises(ConfigError, match=r"holds an unfinished run with train\.lr=0\.003, not 0\.01"):
        run(tiny_corpus, tmp_path, **{"train.lr": 1e-2})
    with pytest.raises(ConfigError, match="holds an unfinished run; resume it with --train.resume=auto"):
        run(tiny_corpus, tmp_path, **{"train.resume": False})
    assert run(tiny_corpus, tmp_path, **{"train.progress_bar": True}) == first  # the same command, resumed
    assert is_finished(first) and (first / "model.safetensors").is_file()
    got, expected = train_losses(first), train_losses(full_run)
    assert sorted(got) == sorted(expected) == list(range(8))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    assert len(list((first / "logs").glob("version_*"))) == 2  # resumed, not restarted


def test_a_run_with_its_last_checkpoint_but_no_marker_is_finished_on_rerun(tiny_corpus, full_run, tmp_path):
    copy = shutil.copytree(full_run, tmp_path / "tiny")
    (copy / FINISHED).unlink()
    (copy / "model.safetensors").unlink()  # stopped after the final checkpoint, before the weights and marker
    assert run(tiny_corpus, tmp_path) == copy
    assert is_finished(copy)
    expected, got = load_file(full_run / "model.safetensors"), load_file(copy / "model.safetensors")
    assert got.keys() == expected.keys() and all((got[k] == expected[k]).all() for k in got)
    assert sorted(train_losses(copy)) == list(range(8))  # no step trained twice


def test_resume_true_trains_a_finished_run_further(tiny_corpus, full_run, tmp_path):
    copy = shutil.copytree(full_run, tmp_path / "tiny")
    run(tiny_corpus, tmp_path, **{"train.resume": True, "train.max_steps": 10})
    assert max(train_losses(copy)) == 9 and is_finished(copy)


def test_config_difference_ignores_how_a_run_is_launched():
    saved = {"train": {"lr": 1e-3, "resume": False, "progress_bar": True}, "log": {"wandb": True}}
    assert config_difference(saved, {"train": {"lr": 1e-3, "resume": "auto", "progress_bar": False},
                                     "log": {"wandb": False}}) is None
    assert config_difference(saved, {"train": {"lr": 3e-3}}) == ("train.lr", 1e-3, 3e-3)
    assert config_difference({"model": {"linear": {"backend": "torch"}}}, {"model": {"linear": {"backend": "fla"}}},
                             ignore={"model.linear.backend"}) is None


@pytest.mark.slow
def test_two_processes_with_the_same_name_never_both_write(tiny_corpus, tmp_path):
    env = {**os.environ, "TEST_BATCH_DELAY": "0.3", "WANDB_MODE": "disabled"}
    args = as_argv(values(tiny_corpus, tmp_path))
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    errors = [line for line in refused.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("in use by another run (PID" in errors[0] or "is a finished run" in errors[0])
    run_dir = tmp_path / "tiny"
    assert is_finished(run_dir) and len(list((run_dir / "logs").glob("version_*"))) == 1
    assert sorted(train_losses(run_dir)) == list(range(8))
