"""Hostile and careless inputs: checkpoints that run code, names and outputs that escape or overwrite a run,
locked run folders, and stale temp files (train/rundir/checkpoint.py, train/rundir/paths.py, train/run.py,
train/interop/export_hf.py).
Hostile run and adapter folders are in tests/finetune/test_hostile_adapter.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_overrides

from train.config import ConfigError, load_config
from train.interop.export_hf import main as export_main
from train.run import pretrain
from train.rundir.checkpoint import AtomicCheckpointIO, read_checkpoint
from train.rundir.paths import check_run_name, lock_run_dir, remove_stale_tmp, unlock_run_dir
from train.rundir.weights import CheckpointError

DEAD_PID = 4_194_305  # above Linux's largest pid_max: never a live process


class Payload:
    """Unpickling this touches `marker`: proof that loading a checkpoint executed code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def run(corpus, out, **extra) -> Path:
    return pretrain(load_config(None, tiny_train_overrides(corpus, out, **{"train.num_samples": 0, **extra})))


@pytest.fixture(scope="module")
def base_run(tiny_corpus, tmp_path_factory) -> Path:
    return run(tiny_corpus, tmp_path_factory.mktemp("security"), **{"train.max_steps": 4})


def hostile_checkpoint(base_run: Path, path: Path, marker: Path) -> Path:
    """A real checkpoint of `base_run` plus a payload: it passes every check but the safe unpickler."""
    checkpoint = torch.load(base_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["payload"] = Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def test_resume_from_a_pickled_payload_is_refused_without_running_it(tiny_corpus, base_run, tmp_path):
    marker = tmp_path / "pwned"
    evil = hostile_checkpoint(base_run, tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="only weights-only checkpoints") as err:
        run(tiny_corpus, tmp_path / "out", **{"train.resume": str(evil)})
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError):  # Lightning's own resume path goes through the same loader
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()
    assert not (tmp_path / "out" / "tiny").exists()  # a failed start leaves no folder behind


def test_resume_auto_skips_a_pickled_payload(tiny_corpus, base_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    hostile_checkpoint(base_run, out / "tiny" / "checkpoints" / "step=99.ckpt", marker)
    run(tiny_corpus, out, **{"train.resume": "auto", "train.max_steps": 2, "train.ckpt_every": 2})
    assert "skipping unreadable checkpoint" in capsys.readouterr().out
    assert not marker.exists()


def test_resume_true_with_a_pickled_last_ckpt_is_refused(tiny_corpus, base_run, tmp_path):
    marker = tmp_path / "pwned"
    hostile_checkpoint(base_run, tmp_path / "tiny" / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(CheckpointError):
        run(tiny_corpus, tmp_path, **{"train.resume": True})
    assert not marker.exists() and not (tmp_path / "tiny" / "config.yaml").exists()


def test_safe_loader_reads_a_real_checkpoint(base_run):
    assert read_checkpoint(base_run / "checkpoints" / "last.ckpt")["global_step"] == 4


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "a\\b", "..", ".hidden", ""])
def test_run_names_that_are_paths_are_refused(name):
    with pytest.raises(ConfigError, match="plain folder name.*train.out_dir"):
        check_run_name(name)


def test_a_path_name_writes_nothing_outside_out_dir(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="plain folder name"):
        run(tiny_corpus, out, **{"train.name": "../escaped"})
    assert not (tmp_path / "escaped").exists() and not out.exists()


def test_resume_from_another_runs_checkpoint_reads_it_and_writes_a_fresh_folder(tiny_corpus, base_run, tmp_path):
    before = (base_run / "config.yaml").read_bytes()
    stamp = (base_run / "config.yaml").stat().st_mtime_ns
    run_dir = run(tiny_corpus, tmp_path, **{"train.resume": str(base_run / "checkpoints" / "last.ckpt"),
                                            "train.name": "other", "train.max_steps": 6})
    assert run_dir == tmp_path / "other" and (run_dir / "model.safetensors").is_file()
    assert (base_run / "config.yaml").read_bytes() == before
    assert (base_run / "config.yaml").stat().st_mtime_ns == stamp


def test_a_locked_run_folder_is_refused(tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another "process": a separate open file description
    try:
        with pytest.raises(CheckpointError, match="in use by another run \\(PID 4242\\)"):
            lock_run_dir(run_dir)
    finally:
        os.close(fd)
    assert lock_run_dir(run_dir) and (run_dir / ".lock").read_text() == str(os.getpid())
    unlock_run_dir(run_dir)
    assert not (run_dir / ".lock").exists()  # a finished run leaves no lock file behind


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / f".last.ckpt.tmp{DEAD_PID}"
    live = tmp_path / f".step=4.ckpt.tmp{os.getpid()}"
    keep = tmp_path / "step=4.ckpt"
    for path in (dead, live, keep):
        path.write_bytes(b"x")
    assert remove_stale_tmp(tmp_path, tmp_path / "missing") == [dead]
    assert live.exists() and keep.exists() and not dead.exists()


def test_resume_cleans_stale_temp_files(tiny_corpus, base_run, tmp_path):
    out = tmp_path / "out"
    first = run(tiny_corpus, out, **{"train.max_steps": 2, "train.ckpt_every": 2})
    stale = first / "checkpoints" / f".last.ckpt.tmp{DEAD_PID}"
    stale.write_bytes(b"half a checkpoint")
    run(tiny_corpus, out, **{"train.max_steps": 4, "train.ckpt_every": 2, "train.resume": True})
    assert not stale.exists()


@pytest.mark.parametrize("where", ["same", "inside", "other_run"])
def test_export_never_writes_into_a_run_directory(base_run, tmp_path, capsys, where):
    pytest.importorskip("transformers")
    before = {p.name: p.read_bytes() for p in base_run.iterdir() if p.is_file()}
    out = {"same": base_run, "inside": base_run / "hf", "other_run": base_run.parent / "tiny-other"}[where]
    if where == "other_run":
        out.mkdir(exist_ok=True)
        (out / "config.yaml").write_text("model: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--run", str(base_run), "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in base_run.iterdir() if p.is_file()} == before
    assert not (out / "config.json").exists()
