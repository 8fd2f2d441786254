"""Fault tolerance: atomic checkpoints, `train.resume=auto` past a truncated checkpoint, a SIGKILLed run that
resumes to the same losses, SIGTERM and Ctrl-C (a checkpoint within one micro-batch, also mid-accumulation, exit
143 / 130, the printed command resumes exactly), NaN steps skipped and the N-in-a-row stop, and checkpoints from
another model or tokenizer refused with the differing field named."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_train_overrides
from test_pretrain import train_losses
from train_script import as_argv

from train.cli import run_cli
from train.config import load_config
from train.faults import resume_command
from train.module import LanguageModel
from train.run import pretrain
from train.rundir.checkpoint import (
    AtomicCheckpointIO,
    check_compatible,
    newest_checkpoint,
    read_checkpoint,
    resolve_resume,
)
from train.rundir.claim import is_finished
from train.rundir.weights import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("train_script.py")
RUN = {"train.max_steps": 12, "train.ckpt_every": 4, "train.val_every": 12}


def run(corpus, out, callbacks=(), **extra) -> Path:
    return pretrain(load_config(None, tiny_train_overrides(corpus, out, **{**RUN, **extra})), callbacks)


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    """An uninterrupted 12-step run (checkpoints at steps 4, 8, 12)."""
    return run(tiny_corpus, tmp_path_factory.mktemp("reference"))


def start(corpus, out: Path, delay: float = 0.3) -> subprocess.Popen:
    """`python -m train` (through tests/train/train_script.py) in a subprocess, sleeping `delay` s per batch."""
    env = {**os.environ, "TEST_BATCH_DELAY": str(delay), "WANDB_MODE": "disabled"}
    log = (out / "log.txt").open("w")
    return subprocess.Popen([sys.executable, str(SCRIPT), *as_argv(tiny_train_overrides(corpus, out, **RUN))],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        log = path.parents[2] / "log.txt"
        assert proc.poll() is None, f"exited early ({proc.returncode}): {log.read_text()}"
        assert time.time() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.05)


def assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert got and set(got) <= set(expected)
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-5), step


def test_a_failed_save_never_leaves_a_valid_looking_file(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    target, fresh = ckpt_dir / "step=4.ckpt", ckpt_dir / "step=8.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 4, "w": torch.ones(1000)}, target)
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):  # a kill or a full disk in the middle of the write
        buffer = io.BytesIO()
        real_save(obj, buffer)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", half_then_fail)
    for path in (target, fresh):
        with pytest.raises(OSError, match="simulated"):
            AtomicCheckpointIO().save_checkpoint({"global_step": 8, "w": torch.zeros(1000)}, path)
    assert read_checkpoint(target)["global_step"] == 4  # the previous checkpoint is intact
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step=4.ckpt"]  # no partial file, no temporary
    (ckpt_dir / ".step=8.ckpt.tmp999").write_bytes(b"PK\x03\x04 half")  # what a SIGKILL mid-save leaves
    assert newest_checkpoint(ckpt_dir) == target


def test_resume_auto_skips_a_truncated_checkpoint(tiny_corpus, reference, tmp_path, capsys):
    ckpt_dir = shutil.copytree(reference / "checkpoints", tmp_path / "tiny" / "checkpoints")
    assert resolve_resume("auto", ckpt_dir) == ckpt_dir / "step=12.ckpt"

    def truncate(name):
        data = (ckpt_dir / name).read_bytes()
        (ckpt_dir / name).write_bytes(data[: len(data) // 2])

    truncate("step=12.ckpt")
    truncate("last.ckpt")  # the newest step, written twice
    assert resolve_resume("auto", ckpt_dir) == ckpt_dir / "step=8.ckpt"
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 2 and any("step=12.ckpt" in w for w in warnings)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        resolve_resume(str(ckpt_dir / "step=12.ckpt"), ckpt_dir)
    truncate("step=8.ckpt")
    resumed = run(tiny_corpus, tmp_path, **{"train.resume": "auto"})  # from step 4: 8 more steps, exactly
    got = train_losses(resumed)
    assert sorted(got) == list(range(4, 12))
    assert_same_losses(got, train_losses(reference))


@pytest.mark.slow
def test_sigkill_then_resume_auto_reaches_the_same_loss(tiny_corpus, reference, tmp_path):
    proc = start(tiny_corpus, tmp_path)
    wait_for(tmp_path / "tiny" / "checkpoints" / "step=4.ckpt", proc)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    resumed = run(tiny_corpus, tmp_path, **{"train.resume": "auto"})
    assert resumed == tmp_path / "tiny"
    got, expected = train_losses(resumed), train_losses(reference)
    assert max(got) == 11 and got[11] == pytest.approx(expected[11], abs=1e-5)
    assert_same_losses(got, expected)


def stop_line(log: Path, proc: subprocess.Popen, code: int) -> tuple[int, str]:
    """(the step saved, the command that resumes) from the one line a stopped run prints."""
    assert proc.wait(timeout=120) == code, log.read_text()
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("stopped (")]
    assert len(lines) == 1, lines
    step = int(re.search(r"\(step (\d+)\)", lines[0]).group(1))
    return step, lines[0].split("; to resume, run: ")[1]


@pytest.mark.slow
@pytest.mark.parametrize("how, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_exits_128_plus_it_and_prints_the_command_that_resumes(
        tiny_corpus, reference, tmp_path, how, code):
    proc = start(tiny_corpus, tmp_path)
    wait_for(tmp_path / "tiny" / "checkpoints" / "step=4.ckpt", proc)
    proc.send_signal(how)
    step, command = stop_line(tmp_path / "log.txt", proc, code)
    last = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    assert 4 <= step < 12 and read_checkpoint(last)["global_step"] == step
    assert not (tmp_path / "tiny" / "model.safetensors").exists() and not is_finished(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "metrics.csv").is_file()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    again = subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    got, expected = train_losses(tmp_path / "tiny"), train_losses(reference)
    assert sorted(got) == list(range(12)) and is_finished(tmp_path / "tiny")  # both launches logged their steps
    assert_same_losses(got, expected)


class CtrlC(L.Callback):
    """Sends this process SIGINT at micro-batch `micro` of optimizer step `step`; counts the micro-batches after."""

    def __init__(self, step: int, micro: int):
        self.at, self.after = (step, micro), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.after is not None:
            self.after += 1
        elif (trainer.global_step, batch_idx % trainer.accumulate_grad_batches) == self.at:
            self.after = 0
            os.kill(os.getpid(), signal.SIGINT)


# The signal comes at the end of micro-batch `micro` with `step` optimizer steps done, so (2, 3) is step 1's last
# one; the run stops at the end of the next: in the middle of step 2, at its end (saved at 3), at its first one.
@pytest.mark.parametrize("micro, saved", [(1, 2), (2, 3), (3, 2)])
def test_ctrl_c_stops_within_a_micro_batch_under_accumulation_and_resumes_exactly(tiny_corpus, tmp_path, micro, saved):
    accum = {"train.grad_accum": 4, "train.max_steps": 6, "train.val_every": 6, "train.ckpt_every": 6}
    expected = train_losses(run(tiny_corpus, tmp_path / "reference", **accum))
    ctrl_c = CtrlC(step=2, micro=micro)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_corpus, tmp_path, [ctrl_c], **accum)
    assert exit_info.value.code == 130 and ctrl_c.after <= 1  # stopped at the end of the next micro-batch
    assert read_checkpoint(tmp_path / "tiny" / "checkpoints" / "last.ckpt")["global_step"] == saved
    resumed = run(tiny_corpus, tmp_path, **accum)  # the same command again
    got = train_losses(resumed)
    assert sorted(got) == list(range(6)) and is_finished(resumed)
    assert_same_losses(got, expected)


def test_the_resume_command_is_this_command_with_resume_auto():
    python = ["/usr/bin/python3", "-m", "train", "--config", "a b.yaml"]
    assert resume_command("auto", python) == "/usr/bin/python3 -m train --config 'a b.yaml'"
    assert resume_command(False, [*python, "--train.resume=false"]).endswith("'a b.yaml' --train.resume=auto")
    assert resume_command("x.ckpt", [*python, "--train.resume", "x.ckpt"]).endswith("'a b.yaml' --train.resume=auto")
    script = ["/v/bin/python", "/v/bin/tinystack", "pretrain", "--config", "c.yaml"]
    assert resume_command(True, script) == "tinystack pretrain --config c.yaml"


class Recorder(L.Callback):
    """Keeps the module and a copy of the weights after every batch."""

    def on_train_start(self, trainer, pl_module):
        self.module, self.weights = pl_module, []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.weights.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone())


def test_nan_steps_are_skipped_and_n_in_a_row_halt(tiny_corpus, tmp_path, monkeypatch, capsys):
    calls, real_loss = [], LanguageModel.compute_loss

    def flaky_loss(self, batch):  # step 2 alone, then steps 5, 6, 7 in a row are NaN
        loss, logs = real_loss(self, batch)
        calls.append(len(calls))
        return (loss * float("nan"), logs) if calls[-1] in (2, 5, 6, 7) else (loss, logs)

    monkeypatch.setattr(LanguageModel, "compute_loss", flaky_loss)
    recorder = Recorder()
    overrides = tiny_train_overrides(tiny_corpus, tmp_path, **{"train.max_bad_steps": 3, "train.ckpt_every": 2})
    with pytest.raises(SystemExit) as exit_info:  # the CLI's handling, with the module recorded
        run_cli(lambda cfg: pretrain(cfg, [recorder]), as_argv(overrides))
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: training halted: loss was nan for 3 steps in a row")
    # a skipped step still counts (no update: its gradients are None) so the data and schedule move on
    assert "(last at step 7)" in errors[0] and "step=6.ckpt" in errors[0] and "--train.resume=auto" in errors[0]
    assert recorder.module.bad_steps_total == 4 and recorder.module.bad_steps_in_a_row == 3
    w = recorder.weights
    assert torch.equal(w[2], w[1]) and not torch.equal(w[3], w[2]) and not torch.equal(w[1], w[0])


def test_checkpoint_from_another_model_or_tokenizer_is_refused(tiny_corpus, reference, tmp_path):
    ckpt = reference / "checkpoints" / "step=4.ckpt"
    cfg = load_config(reference / "config.yaml")
    saved_hash = read_checkpoint(ckpt)["tinystack"]["tokenizer_hash"]
    check_compatible(ckpt, cfg.model, saved_hash)  # the same model and tokenizer: fine
    with pytest.raises(CheckpointError, match=r"model\.d_model=32 but the config says 64"):
        check_compatible(ckpt, replace(cfg.model, d_model=64), saved_hash)
    with pytest.raises(CheckpointError, match=r"model\.moe\.num_experts=4 but the config says 8"):  # nested sections
        check_compatible(ckpt, replace(cfg.model, moe=replace(cfg.model.moe, num_experts=8)), saved_hash)
    with pytest.raises(CheckpointError, match="another tokenizer"):
        check_compatible(ckpt, cfg.model, "0" * 16)
    # runtime fields may change (a kernel backend, activation checkpointing); a field the checkpoint predates
    # counts as its default
    check_compatible(ckpt, replace(cfg.model, checkpoint_blocks=True,
                                   linear=replace(cfg.model.linear, backend="fla")), saved_hash)
    old = read_checkpoint(ckpt)
    del old["tinystack"]["model"]["moe"]["balance"], old["tinystack"]["model"]["checkpoint_blocks"]
    torch.save(old, tmp_path / "old.ckpt")
    check_compatible(tmp_path / "old.ckpt", cfg.model, saved_hash)
    with pytest.raises(CheckpointError, match=r"model\.moe\.balance='aux' but the config says 'bias'"):
        check_compatible(tmp_path / "old.ckpt", replace(cfg.model, moe=replace(cfg.model.moe, balance="bias")),
                         saved_hash)
    with pytest.raises(CheckpointError, match=r"model\.n_layers=2 but the config says 3"):  # through the pipeline
        run(tiny_corpus, reference.parent, **{"train.resume": str(ckpt), "model.n_layers": 3})
