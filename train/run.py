"""One pipeline for every stage: prepare data and the run directory, build the Trainer, fit, write results.

    runs/<name>/  config.yaml  tokenizer.json  model.safetensors  metrics.csv  loss.png  samples.md
                  checkpoints/{step=N,last}.ckpt   logs/   (wandb/)

`pretrain(cfg)` is the whole of `python -m train`; fine-tuning and alignment call `fit(...)` with their
own LightningModule and DataModule, so no stage copies the loop.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from data.datamodule import PackedDataModule
from data.ngram import cached_baselines, summary
from data.tokenizer import eot_token, token_byte_lengths
from data.tokens import content_hash, prepare_tokens
from train.callbacks.components import component_callbacks
from train.callbacks.standard import NgramBaselines, SampleStories, SaveFinalWeights, Throughput
from train.check.live import BandWatch
from train.config import Config, ConfigError, save_config
from train.distributed import build_strategy, shared_run_dir
from train.estimate.memory import check_memory
from train.estimate.sizes import model_config
from train.faults import Preempted, PreemptionCheckpoint, StopNow, preemption_message, stopped_by_signal
from train.module import LanguageModel
from train.report import write_metrics_and_plot
from train.rundir.checkpoint import AtomicCheckpointIO, check_compatible, resolve_resume
from train.rundir.claim import FINISHED, check_same_config, claim_run_dir, mark_finished, release_run_dir
from train.rundir.paths import check_run_name, lock_run_dir, remove_stale_tmp


def make_run_dir(cfg: Config) -> Path:
    """out_dir/name, the only folder a run writes, claimed (created or found, and locked) by rank 0 for this command:
    a rerun resumes an unfinished run and refuses a finished one (train/rundir/claim.py). Every rank of a
    multi-process run gets rank 0's folder (`train/distributed.py`)."""
    base = Path(cfg.train.out_dir) / check_run_name(cfg.train.name or "run")
    check_not_base(cfg, base)
    return shared_run_dir(lambda: claim_run_dir(base, cfg.train.resume), base)


def prepare_data(cfg: Config, tokenizer=None):
    d = cfg.data
    tokenizer, tokens = prepare_tokens(d.path, d.vocab_size, d.cache_dir, d.val_fraction, d.max_stories, tokenizer,
                                       tokenizer_sample=d.tokenizer_sample)
    explicit = cfg.model.vocab_size
    cfg.model = model_config(cfg)  # the sizes that follow the data, as the estimate and `match: params` see them
    if cfg.model.vocab_size < tokenizer.get_vocab_size():
        key = "model.vocab_size" if explicit else "data.vocab_size (model.vocab_size=0)"
        raise ConfigError(f"{key}={cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer.get_vocab_size()} "
                          "tokens (a byte-level BPE has at least 257: 256 bytes and <|endoftext|>); raise it")
    check_eos(cfg, tokenizer)
    return tokenizer, tokens


def check_eos(cfg: Config, tokenizer) -> None:
    """data.eos_token must be the token the tokenizer ends, pads and stops text with (`eot_token`): a token it lacks,
    or another one, would be recorded in config.yaml and break every later load of the run."""
    eos, own = cfg.data.eos_token, eot_token(tokenizer)
    if eos != own:
        what = "is not a token of the tokenizer" if tokenizer.token_to_id(eos) is None else "is not its end of text"
        raise ConfigError(f"data.eos_token={eos!r} {what}: the tokenizer ends text with {own!r}; leave "
                          "data.eos_token unset (it follows the tokenizer)")


def check_precision(precision: str, accelerator: str) -> None:
    on_gpu = torch.cuda.is_available() and accelerator not in ("cpu",)
    if precision == "16-mixed" and not on_gpu:
        raise ConfigError("train.precision=16-mixed needs a CUDA GPU (CPU autocast supports bf16 only); "
                          "use --train.precision=bf16-mixed or 32")


def build_trainer(cfg: Config, run_dir: Path, callbacks: list, monitor_val: bool = True) -> L.Trainer:
    t = cfg.train
    check_precision(t.precision, t.accelerator)
    loggers = [CSVLogger(save_dir=str(run_dir), name="logs")] if cfg.log.csv else []
    if cfg.log.wandb and cfg.log.wandb_mode != "disabled":
        os.environ.setdefault("WANDB_MODE", cfg.log.wandb_mode)
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.log.wandb_project, name=run_dir.name, save_dir=str(run_dir),
                                   offline=cfg.log.wandb_mode == "offline", config=asdict(cfg)))
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step={step}",
                                  auto_insert_metric_name=False, every_n_train_steps=t.ckpt_every,
                                  save_top_k=-1, save_last=True)
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=build_strategy(t.strategy, t.accelerator),
        precision=t.precision, max_steps=t.max_steps, max_epochs=-1, accumulate_grad_batches=t.grad_accum,
        gradient_clip_val=t.grad_clip or None, val_check_interval=t.val_every * t.grad_accum if monitor_val else None,
        check_val_every_n_epoch=None, limit_val_batches=t.val_batches if monitor_val else 0,
        num_sanity_val_steps=0, logger=loggers or False, log_every_n_steps=t.log_every,
        callbacks=[checkpoints, PreemptionCheckpoint(run_dir / "checkpoints"), Throughput(t.log_every), *callbacks,
                   *([TQDMProgressBar(refresh_rate=t.log_every)] if t.progress_bar else [])],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress_bar, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )


def check_not_base(cfg: Config, run_dir: Path) -> None:
    """A stage that starts from a run (finetune/, align/: finetune.base) never writes into that run's folder."""
    base = getattr(getattr(cfg, "finetune", None), "base", "")
    if base and Path(base).resolve() == run_dir.resolve():
        raise ConfigError(f"{run_dir} is the base run finetune.base={base}; fine-tuning into it would replace its "
                          "config.yaml and weights: choose another --train.name")


def check_inputs(cfg: Config, module: L.LightningModule, run_dir: Path, tok_hash: str) -> Path | None:
    """Everything a run needs, checked before it writes anything -> the checkpoint to resume from (or None).

    The checkpoint is read here with the safe loader (train/rundir/checkpoint.py), also for Lightning's FSDP resume,
    which unpickles full checkpoints with its own loader."""
    check_not_base(cfg, run_dir)
    ckpt = resolve_resume(cfg.train.resume, run_dir / "checkpoints")
    if ckpt is not None:
        check_compatible(ckpt, cfg.model, tok_hash, {k: tuple(v.shape) for k, v in module.state_dict().items()})
    return ckpt


def fit(cfg: Config, module: L.LightningModule, datamodule: L.LightningDataModule, run_dir: Path, tokenizer,
        callbacks: list = (), monitor_val: bool = True, run_files=None, finish=None) -> L.Trainer:
    """Check the inputs, lock and write the run directory, train (resuming if asked), save final weights, metrics
    and plot, then mark the run finished (train/rundir/claim.py). The lock is held (rank 0) until then, so a second
    run on the same folder is refused. `run_files(run_dir)`: a stage's own files (alignment's merged reference),
    written after the checks too; `finish(trainer)`: a stage's own results (finetune's evaluation), on rank 0 after
    training and before the run counts as finished."""
    try:
        tok_hash = content_hash(tokenizer.to_str())
        check_eos(cfg, tokenizer)
        ckpt = check_inputs(cfg, module, run_dir, tok_hash)
        module.run_info = {"model": asdict(cfg.model), "tokenizer_hash": tok_hash}
        watch = BandWatch(asdict(cfg), tokenizer=tok_hash)
        trainer = build_trainer(cfg, run_dir, [SaveFinalWeights(run_dir), *callbacks, watch],
                                monitor_val)
        if trainer.is_global_zero:
            lock_run_dir(run_dir)  # already held when make_run_dir claimed the folder
            if cfg.train.resume == "auto":
                check_same_config(run_dir, cfg)
            remove_stale_tmp(run_dir, run_dir / "checkpoints")
            (run_dir / FINISHED).unlink(missing_ok=True)  # trained further (resume=true): unfinished until done
            save_config(cfg, run_dir / "config.yaml")
            tokenizer.save(str(run_dir / "tokenizer.json"))
            if run_files is not None:
                run_files(run_dir)
        _train(cfg, trainer, module, datamodule, run_dir, ckpt, monitor_val)
        if trainer.is_global_zero:
            if finish is not None:
                finish(trainer)
            mark_finished(run_dir, trainer.global_step)
    finally:
        release_run_dir(run_dir)
    return trainer


def _train(cfg: Config, trainer: L.Trainer, module, datamodule, run_dir: Path, ckpt: Path | None,
           monitor_val: bool) -> None:
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    except StopNow:  # a signal in the middle of a gradient accumulation (train/faults.py)
        pass
    stopped = stopped_by_signal(trainer)
    if stopped is not None:  # SIGINT / SIGTERM: checkpoint saved; no final validation, weights or marker
        message = preemption_message(stopped, cfg.train.resume)
        if trainer.is_global_zero:
            write_metrics_and_plot(run_dir, module.plots())
            print(message, file=sys.stderr)
        raise Preempted(message, stopped.signum or signal.SIGTERM)
    final_weights = next(cb for cb in trainer.callbacks if isinstance(cb, SaveFinalWeights))
    if not final_weights.written:  # resumed at the final step: fit trained nothing and called no hook
        final_weights.save(trainer, module)
    if trainer.global_step % cfg.train.ckpt_every:  # the final step is always checkpointed
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    if monitor_val and cfg.train.max_steps % cfg.train.val_every:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        write_metrics_and_plot(run_dir, module.plots())


def pretrain(cfg: Config, callbacks: list = ()) -> Path:
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    check_run_name(cfg.train.name or "run")  # before the data is read: a bad name costs nothing
    check_memory(cfg, training=True)  # every size against this machine, before the data or a tensor
    tokenizer, tokens = prepare_data(cfg)
    baselines = cached_baselines(tokens, tokenizer) if cfg.data.ngram_baselines else None  # data/ngram.py
    run_dir = make_run_dir(cfg)
    t = cfg.train
    datamodule = PackedDataModule(tokens, cfg.data.seq_len, t.batch_size, t.grad_accum, t.max_steps, t.seed,
                                  t.val_batches, cfg.data.num_workers)
    module = LanguageModel(cfg, token_byte_lengths(tokenizer))
    samples = SampleStories(run_dir, tokenizer, t.num_samples, t.sample_tokens)
    callbacks = [*callbacks, *component_callbacks(cfg, run_dir)]
    if baselines is not None:
        callbacks.append(NgramBaselines(baselines, t.warmup_steps))
    trainer = fit(cfg, module, datamodule, run_dir, tokenizer, [samples, *callbacks])
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if baselines is not None and "val/loss" in metrics:
            print(summary(metrics["val/loss"], baselines))
        print(f"run: {run_dir}  " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return run_dir
