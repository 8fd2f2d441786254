"""The LightningModule every stage shares: next-token loss, AdamW groups, schedule, validation in bits/byte.

A batch is `(inputs, targets)`, both (B, T); a target of -100 is not scored (SFT masks its prompts this
way), so pretraining and supervised fine-tuning use this module unchanged.

The stage contract: this module owns the training step; a stage (DPO, GRPO) subclasses it and implements

    compute_loss(batch) -> (loss, logs)      a scalar loss and {"train/...": value} to log (mean over ranks)
    prepare_batch(batch, batch_idx) -> batch optional, runs first (GRPO samples its rollout here)
    save_final_weights(run_dir, state=None)  optional (a LoRA adapter instead of weights); `state` is the
                                             model's full state dict gathered under FSDP

and never `training_step` (`__init_subclass__` refuses it, and a `save_final_weights` without `state`), so
every stage gets the same finiteness check, bad-step handling, logging and final weights.

Bits per byte (comparable across tokenizers): bpb = sum_t CE_t / (ln 2 * sum_t bytes(target_t)).
A non-finite loss (on any rank) skips its step on every rank (counted as `train/bad_steps`); `train.max_bad_steps`
in a row stop the run with `TrainingHalted`, naming the step and the last good checkpoint.

The training loss runs the head and the cross-entropy in chunks of `train.ce_chunk` rows (train/loss.py: the
B x T x V fp32 logits never exist; 0 = the plain `F.cross_entropy` over full logits); validation scores per token
as before. Training metrics are logged on the steps Lightning writes them (every train.log_every), not built and
reduced on the others. Components hear the training loop's events (model/component.py: micro-batch start and end,
optimizer step end, skipped step) through `Transformer.notify`; MoE's `balance=bias` updates its routing bias so.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.transformer import Transformer
from train.config import Config
from train.errors import TrainingHalted
from train.faults import last_good_checkpoint
from train.loss import chunked_cross_entropy
from train.optim import build_optimizer, remember_shapes
from train.report import LOSS_PLOTS, Plot
from train.rundir.weights import save_weights

IGNORE = -100


class LanguageModel(L.LightningModule):
    progress_metric = "train/loss"  # the logged value shown in the progress bar

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "training_step" in vars(cls):
            raise TypeError(f"{cls.__name__} overrides training_step: a stage implements compute_loss (and "
                            "prepare_batch), the step (finiteness on all ranks, skipping, logging) is LanguageModel's")
        if "state" not in inspect.signature(cls.save_final_weights).parameters:
            raise TypeError(f"{cls.__name__}.save_final_weights must accept state=None (FSDP's gathered weights)")

    def __init__(self, cfg: Config, token_bytes: list[int] | None = None, model: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = Transformer(cfg.model) if model is None else model  # fine-tuning passes loaded weights
        bytes_per_token = torch.tensor(token_bytes or [1] * cfg.model.vocab_size, dtype=torch.float32)
        self.register_buffer("token_bytes", bytes_per_token, persistent=False)
        self.bad_steps_in_a_row = 0
        self.bad_steps_total = 0
        self.drop_gradients = False  # set by a bad step: this optimizer step's gradients are discarded
        self.val_sums: Tensor | None = None
        self.run_info: dict = {}  # model config + tokenizer hash, stored in checkpoints for resume checks
        self._unlogged: dict | None = None  # this step's logs when it is no log step (on_train_batch_end)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tinystack"] = self.run_info

    def save_final_weights(self, run_dir: Path, state: dict | None = None) -> None:
        """The run directory's weights at the end of training (`state`: the model's full state dict under FSDP);
        a stage that shares something else (a LoRA adapter) overrides this."""
        save_weights(self.model, Path(run_dir) / "model.safetensors", tied=self.cfg.model.tie_embeddings,
                     state=state, tokenizer_hash=self.run_info.get("tokenizer_hash"))

    def configure_model(self) -> None:
        remember_shapes(self.model)  # before FSDP flattens the parameters (weight decay goes by shape)
        if self.cfg.train.compile:
            self.model.compile()

    def plots(self) -> dict[str, Plot]:
        """The run directory's plots (train/report.py): training and validation loss."""
        return LOSS_PLOTS

    @property
    def ce_chunk(self) -> int:
        """Rows per chunk of the training cross-entropy (`train.ce_chunk`, 0 = plain), where the model has a
        plain Linear head to chunk (a LoRA-adapted or biased head, or another model, takes the plain form)."""
        chunk = self.cfg.train.ce_chunk
        head = getattr(self.model, "lm_head", None)
        plain_head = isinstance(self.model, Transformer) and type(head) is nn.Linear and head.bias is None
        return chunk if plain_head else 0

    def loss_sum(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """(B, T) inputs and targets -> the summed cross-entropy in nats of the scored targets (fp32 scalar)."""
        chunk = self.ce_chunk
        if not chunk:
            return self.token_losses(inputs, targets).sum()
        h, _ = self.model(inputs, head=False)  # (B, T, D) final-normed hidden states
        return chunked_cross_entropy(h.flatten(0, 1), self.model.lm_head.weight, targets.flatten(), chunk, IGNORE)

    def token_losses(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """(B, T) inputs and targets -> (B, T) cross-entropy in nats (0 where the target is ignored)."""
        logits, _ = self.model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                               reduction="none").view_as(targets)

    def prepare_batch(self, batch, batch_idx: int):
        """The batch compute_loss gets: the loader's batch as is (GRPO samples completions here)."""
        return batch

    def compute_loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Next-token loss (+ the MoE auxiliary loss) -> (loss, logs)."""
        inputs, targets = batch
        lm = self.loss_sum(inputs, targets) / (targets != IGNORE).sum().clamp(min=1)
        aux = self.model.aux_loss()
        return lm + aux, {"train/loss": lm.detach(), "train/aux_loss": torch.as_tensor(aux, device=lm.device).detach()}

    def training_step(self, batch, batch_idx):
        self.model.notify("micro_batch_start")
        loss, logs = self.compute_loss(self.prepare_batch(batch, batch_idx))
        self.model.notify("micro_batch_end")  # e.g. MoE's routing loads, for its bias update
        if not self.finite_on_all_ranks(loss):
            return self.skip_bad_step(loss)
        self.bad_steps_in_a_row = 0
        logged = self.logs_this_step()
        if logged:
            self.log_step(logs)
        self._unlogged = None if logged else logs  # logged after all if a callback stops the run at this step
        return loss

    def log_step(self, logs: dict[str, Tensor]) -> None:
        # the mean over ranks: the global batch's loss (tensors on this device: NCCL reduces no CPU tensors)
        self.log_dict(logs, prog_bar=False, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # the same on every rank
        self.log(self.progress_metric.removeprefix("train/"), logs[self.progress_metric], prog_bar=True, logger=False)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """A callback that stops the run (pre-emption, on every rank alike) makes Lightning write this step's
        metrics although it is no log step: log them now, or it would write the last logged step's again."""
        if self._unlogged is not None and self.trainer.should_stop:
            self.log_step(self._unlogged)
        self._unlogged = None

    def logs_this_step(self) -> bool:
        """Whether Lightning writes this step's training metrics (its own rule: every log_every_n_steps optimizer
        steps, and when stopping); values logged on other steps would be built, reduced over ranks and dropped.
        The same on every rank, so the reductions of `sync_dist` stay in lockstep."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(every) and ((self.global_step + 1) % every == 0 or trainer.should_stop)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The optimizer step (its closure runs the step's last training_step and backward), then the components'
        `optimizer_step_end` (identical on every rank)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.model.notify("optimizer_step_end")

    def finite_on_all_ranks(self, loss: Tensor) -> bool:
        """Whether every rank's loss is finite: ranks must skip a step together, or DDP's all-reduce hangs."""
        return self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)

    def skip_bad_step(self, loss: Tensor) -> Tensor:
        """Count a non-finite step (every rank calls this together) and halt after train.max_bad_steps in a row.

        Returns a zero loss on the same graph rather than None: Lightning refuses None under DDP, and every rank
        must run the same backward (its all-reduce). The step's gradients are then dropped before the optimizer
        sees them (on_before_optimizer_step), so the parameters and AdamW's moments stay as they were."""
        self.bad_steps_in_a_row += 1
        self.bad_steps_total += 1
        self.log("train/bad_steps", float(self.bad_steps_total))
        if self.bad_steps_in_a_row >= self.cfg.train.max_bad_steps:
            good = last_good_checkpoint(self.trainer)
            raise TrainingHalted(
                f"loss was {loss.item()} for {self.bad_steps_in_a_row} steps in a row (last at step "
                f"{self.global_step}); last good checkpoint: {good or 'none saved yet'}; "
                + ("resume from it with --train.resume=auto" if good else "restart")
                + ", perhaps with a lower --train.lr")
        self.drop_gradients = True
        return loss.nan_to_num(0.0, 0.0, 0.0) * 0.0

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the optimizer step of an accumulation window that had a bad step: no gradients, no update
        (AdamW passes over parameters whose .grad is None; under 16-mixed the scaler has already seen them)."""
        if self.drop_gradients:
            optimizer.zero_grad(set_to_none=True)
            self.drop_gradients = False
            self.model.notify("step_skipped")  # e.g. no routing-bias update

    def on_validation_epoch_start(self) -> None:
        self.val_sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # nats, tokens, bytes

    def validation_step(self, batch, batch_idx) -> None:
        inputs, targets = batch
        losses = self.token_losses(inputs, targets)
        scored = targets != IGNORE
        n_bytes = self.token_bytes[targets.clamp(min=0)][scored].sum()
        self.val_sums += torch.stack([losses.sum().double(), scored.sum().double(), n_bytes.double()])

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self.val_sums, reduce_op="sum")  # each rank scored its own shard
        nats, tokens, n_bytes = sums.tolist()
        self.log("val/loss", nats / max(tokens, 1), prog_bar=True)
        self.log("val/bpb", nats / (math.log(2) * max(n_bytes, 1)))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient norm to train.grad_clip. Done here, not by Lightning's precision plugin,
        which refuses norm clipping under FSDP (the norm spans every shard: FSDP's own `clip_grad_norm_`) and
        with a fused AdamW under bf16-mixed (it assumes a loss scaler that bf16 does not have). Under fp16 the
        gradients are already unscaled here (build_optimizer keeps AdamW unfused)."""
        if not gradient_clip_val:
            return
        if type(self.trainer.strategy).__name__.startswith("DeepSpeed"):  # the engine clips (its config)
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        wrapped = self.trainer.model  # FullyShardedDataParallel under FSDP, else DDP or this module
        if hasattr(wrapped, "clip_grad_norm_"):
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def configure_optimizers(self):
        t = self.cfg.train
        optimizer, scheduler = build_optimizer(self.model, t, loss_scaling=t.precision == "16-mixed")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
