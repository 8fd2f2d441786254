"""Multi-process training: a real 2-process DDP run on CPU (gloo) matches a 1-process run with the same global
batch, its ranks share the data without overlap and agree on the run directory, only rank 0 writes; the
run-directory handoff for Lightning-launched and externally launched (torchrun/srun) ranks; strategy choices.
An FSDP run needs CUDA (Lightning and torch's FSDP refuse CPU): that test runs where a GPU is present."""

from __future__ import annotations

import ast
import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import tiny_finetune_values, tiny_train_overrides
from safetensors.torch import load_file
from test_pretrain import train_losses
from train_script import Hooks, as_argv

from train.config import ConfigError, load_config
from train.distributed import LAUNCH_FILE, RUN_DIR_ENV, build_strategy, shared_run_dir
from train.run import make_run_dir, pretrain
from train.rundir.claim import mark_finished, release_run_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("train_script.py")
RUN_FILES = {"config.yaml", "tokenizer.json", "model.safetensors", "metrics.csv", "loss.png", "samples.md",
             "checkpoints", "logs", "finished.json"}


def batches(out: Path, rank: int) -> dict[int, list[str]]:
    """step -> hashes of the samples `rank` trained on at that step (written by train_script.Hooks)."""
    rows = [line.split() for line in (out / f".rank{rank}.batches").read_text().splitlines()]
    return {int(step): hashes for step, *hashes in rows}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = {"train.accelerator": "cpu", "train.val_every": 8}
    single = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, one, **common)), [Hooks(0.0)])
    args = as_argv(tiny_train_overrides(tiny_corpus, two, **common, **{"train.batch_size": 2, "train.devices": 2,
                                                                       "train.strategy": "ddp"}))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop(RUN_DIR_ENV, None)
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = two / "tiny"
    assert (two / ".rank0").read_text() == (two / ".rank1").read_text() == str(run_dir)
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES  # one set of files, written by rank 0
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == ["cache", "tiny"]
    # the same global batches: rank 0 and rank 1 together saw exactly the 1-process run's samples, no overlap
    rank0, rank1, full = batches(two, 0), batches(two, 1), batches(one, 0)
    assert sorted(rank0) == sorted(rank1) == sorted(full) == list(range(1, 9))  # global_step after each batch
    for step in full:
        assert Counter(rank0[step] + rank1[step]) == Counter(full[step])
        assert not set(rank0[step]) & set(rank1[step])
    expected, got = train_losses(single), train_losses(run_dir)  # logged with sync_dist: the global batch's mean
    assert sorted(got) == sorted(expected) == list(range(8))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    # validation: the 2 ranks score disjoint halves of the same 8 held-out blocks and sum their totals
    val_1, val_2 = metric(single, "val/loss"), metric(run_dir, "val/loss")
    assert sorted(val_1) == sorted(val_2) == [7]
    assert val_2[7] == pytest.approx(val_1[7], abs=1e-5)
    w1, w2 = load_file(single / "model.safetensors"), load_file(run_dir / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=1e-4)


def stage_values(stage: str, corpus: Path, sft_run: tuple[Path, Path], out: Path) -> dict:
    """A 4-step, 2-rank run of `stage` (SFT from the base run; DPO and GRPO from the LoRA SFT run)."""
    base, sft = sft_run
    extra = {"train.name": stage, "train.max_steps": 4, "train.warmup_steps": 1, "train.val_every": 4,
             "train.batch_size": 2, "train.num_samples": 0, "train.accelerator": "cpu", "train.devices": 2,
             "train.strategy": "ddp"}
    values = tiny_finetune_values(corpus, out, base if stage == "sft" else sft,
                                  {"eval_prompts": 0} if stage == "sft" else {}, **extra)
    if stage in ("grpo", "ppo"):
        values["align"] = {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 8, "beta": 0.05,
                           "rewards": {"word_inclusion": 1.0, "length": {"weight": 0.5, "min_words": 4}}}
    return values


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_a_nan_on_one_rank_skips_the_step_on_both(stage, tiny_corpus, tiny_sft_run, tmp_path):
    """Rank 1's loss is NaN at step 1: both ranks skip it (a rank stepping alone would hang DDP's all-reduce,
    hence the timeout), count it, and finish in lockstep with equal weights; rank 0 writes the run directory."""
    env = {**os.environ, "WANDB_MODE": "disabled", "TEST_STAGE": stage, "TEST_NAN": "1:1"}
    env.pop(RUN_DIR_ENV, None)
    args = as_argv(stage_values(stage, tiny_corpus, tiny_sft_run, tmp_path))
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / stage
    bad = metric(run_dir, "train/bad_steps")  # logged by rank 0, whose own loss was finite (the total so far)
    assert min(bad) == 1 and set(bad.values()) == {1.0}
    assert sorted(batches(tmp_path, 0)) == sorted(batches(tmp_path, 1))
    assert (tmp_path / ".rank0.params").read_text() == (tmp_path / ".rank1.params").read_text()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()  # LoRA runs: the final adapter


PPO_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {here!r}]
from pathlib import Path

import lightning as L
import torch
from train_script import Hooks

from align.policy import align_config
from align.ppo import train_ppo
from train.cli import run_cli


class ValueGrads(L.Callback):
    \"\"\"Per step, the value head's gradient this rank computed (a tensor hook: before DDP's all-reduce) and the
    one the optimizer gets, to <out_dir>/.rank<r>.value_grads.\"\"\"

    def on_train_start(self, trainer, pl_module):
        self.local = {{}}
        for name, p in pl_module.value_head.named_parameters():
            p.register_hook(lambda grad, name=name: self.local.__setitem__(name, grad.clone()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = dict(pl_module.value_head.named_parameters())
        local = torch.cat([self.local[k].flatten() for k in params]).tolist()
        synced = torch.cat([p.grad.flatten() for p in params.values()]).tolist()
        with (Path(trainer.default_root_dir).parent / f".rank{{trainer.global_rank}}.value_grads").open("a") as f:
            f.write(repr((local, synced)) + "\\n")


run_cli(lambda cfg: train_ppo(cfg, [Hooks(0.0), ValueGrads()]), load=align_config)
"""


@pytest.mark.slow
def test_two_process_ppo_all_reduces_the_value_head(tiny_corpus, tiny_sft_run, tmp_path):
    """The value head is part of the DDP-wrapped module: after backward both ranks hold the mean of the two ranks'
    own gradients (which differ: each rank samples its own prompts), and the ranks end with equal parameters."""
    script = tmp_path / "ppo_script.py"
    script.write_text(PPO_SCRIPT.format(root=str(ROOT), here=str(SCRIPT.parent)))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop(RUN_DIR_ENV, None)
    args = as_argv(stage_values("ppo", tiny_corpus, tiny_sft_run, tmp_path / "out"))
    proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    steps = [[ast.literal_eval(line) for line in (out / f".rank{r}.value_grads").read_text().splitlines()]
             for r in (0, 1)]  # per rank, per step: (its own gradient, the one after all-reduce)
    assert len(steps[0]) == len(steps[1]) == 4
    for (local0, synced0), (local1, synced1) in zip(*steps):
        assert local0 != local1 and synced0 == synced1 and any(synced0)
        assert synced0 == pytest.approx([(a + b) / 2 for a, b in zip(local0, local1)], rel=1e-5, abs=1e-9)
    assert (out / ".rank0.params").read_text() == (out / ".rank1.params").read_text()
    assert (out / "ppo" / "value_head.safetensors").is_file()


def metric(run_dir: Path, name: str) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(float(r["step"])): float(r[name]) for r in csv.DictReader(f) if r.get(name)}


def fresh_config(out: Path):
    return load_config(None, {"train": {"out_dir": str(out), "name": "tiny"}})


def test_workers_launched_by_lightning_use_rank_0s_run_dir(tmp_path, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", RUN_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    chosen = make_run_dir(fresh_config(tmp_path))  # rank 0 claims it, before trainer.fit launches the workers
    assert chosen == tmp_path / "tiny" and os.environ[RUN_DIR_ENV] == str(chosen) and (chosen / ".lock").is_file()
    mark_finished(chosen, 8)  # rank 0 may write anything there now; a worker claiming for itself would be refused
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert make_run_dir(fresh_config(tmp_path)) == chosen
    release_run_dir(chosen)
    monkeypatch.setenv("LOCAL_RANK", "0")  # a later run in rank 0's process claims again: this one is finished
    with pytest.raises(ConfigError, match="is a finished run"):
        make_run_dir(fresh_config(tmp_path))


def test_externally_launched_ranks_find_rank_0s_run_dir(tmp_path, monkeypatch):
    for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", RUN_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    env = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job7", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="did not create the run directory"):
        shared_run_dir(lambda: tmp_path / "unused", tmp_path / "tiny", timeout=0.3)  # rank 0 has not chosen yet
    monkeypatch.setenv("RANK", "0")
    chosen = make_run_dir(fresh_config(tmp_path))
    assert chosen == tmp_path / "tiny" and (chosen / LAUNCH_FILE).is_file()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv(RUN_DIR_ENV)  # torchrun started every rank itself: nothing inherited
    assert make_run_dir(fresh_config(tmp_path)) == chosen
    monkeypatch.setenv("MASTER_PORT", "29501")  # another launch does not take this one's directory
    with pytest.raises(ConfigError):
        shared_run_dir(lambda: tmp_path / "unused", tmp_path / "tiny", timeout=0.3)
    release_run_dir(chosen)


def test_strategy_choices():
    assert build_strategy("ddp", "cpu") == "ddp" and build_strategy("auto") == "auto"
    with pytest.raises(ConfigError, match="fsdp needs CUDA"):
        build_strategy("fsdp", "cpu")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the deepspeed package"):
            build_strategy("deepspeed")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs CUDA")
def test_fsdp_saves_full_weights_and_checkpoints(tiny_corpus, tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    from train.rundir.load import load_run

    assert isinstance(build_strategy("fsdp", "gpu"), FSDPStrategy)
    run_dir = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path, **{
        "train.strategy": "fsdp", "train.accelerator": "gpu", "train.devices": 1})))
    _, _, model = load_run(run_dir, "cpu")  # full weights, loadable on one device
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {k.removeprefix("model.") for k in ckpt["state_dict"]} >= set(model.state_dict()) - {"lm_head.weight"}
