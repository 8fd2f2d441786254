"""Callbacks: throughput and MFU, sampled stories at each validation, n-gram baselines beside val/loss, and final
weights for the run dir."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch

from train.distributed import full_state_dict, is_sharded
from train.faults import stopped_by_signal
from train.generate.sampling import sample_stories

# Dense bf16 peak FLOP/s per GPU (vendor datasheets), for MFU; unknown devices log no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Throughput(L.Callback):
    """Logs training tokens/s (all ranks), model FLOPs utilisation and, on CUDA, this rank's peak allocated memory
    since the run began (`perf/peak_mem_gib`, compare with `python -m train.estimate`) every `log_every` steps."""

    def __init__(self, log_every: int):
        self.log_every, self.start, self.tokens = log_every, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += batch[0].numel() * trainer.world_size
        if (batch_idx + 1) % (self.log_every * trainer.accumulate_grad_batches):
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self.start
        tok_s = self.tokens / elapsed
        logs = {"perf/tokens_per_s": tok_s}
        peak = peak_flops(pl_module.device)
        if peak:
            seq_len = batch[0].shape[1]
            logs["perf/mfu"] = pl_module.model.flops_per_token(seq_len) * tok_s / (peak * trainer.world_size)
        if pl_module.device.type == "cuda":
            logs["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(logs, rank_zero_only=True)
        self.start, self.tokens = time.perf_counter(), 0


class SampleStories(L.Callback):
    """After each validation, samples a few stories and appends them to `samples.md` in the run dir."""

    def __init__(self, run_dir: Path, tokenizer, n: int, max_new_tokens: int, prompt: str = "Once upon a time"):
        self.path, self.tokenizer, self.n, self.max_new = run_dir / "samples.md", tokenizer, n, max_new_tokens
        self.prompt = prompt

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or self.n == 0 or is_sharded(trainer):
            return  # a sharded model cannot decode on rank 0 alone (`python -m train.generate` after the run can)
        model = pl_module.model
        was_training = model.training
        model.eval()
        with trainer.precision_plugin.forward_context():  # the training precision (autocast under *-mixed)
            stories = sample_stories(model, self.tokenizer, self.prompt, self.n, self.max_new)
        model.train(was_training)
        with self.path.open("a") as f:
            f.write(f"## step {trainer.global_step}\n\n" + "\n\n".join(f"> {s}" for s in stories) + "\n\n")


class NgramBaselines(L.Callback):
    """Logs the n-gram baselines (data/ngram.py: {"unigram": {"loss": nats, ...}, ...}) as constants beside val/loss
    at each validation (`baseline/<order>`: metrics.csv, wandb, the lines of loss.png), and warns once when a
    validation after warm-up is still above the unigram line."""

    def __init__(self, baselines: dict, warmup_steps: int):
        self.losses = {f"baseline/{order}": baselines[order]["loss"] for order in ("unigram", "bigram", "trigram")}
        self.warmup_steps, self.warned = warmup_steps, False

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            pl_module.log_dict(self.losses, rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module):
        loss, unigram = trainer.callback_metrics.get("val/loss"), self.losses["baseline/unigram"]
        if (self.warned or trainer.sanity_checking or not trainer.is_global_zero or loss is None
                or trainer.global_step < self.warmup_steps or float(loss) <= unigram):
            return
        self.warned = True
        print(f"warning: val/loss {float(loss):.2f} at step {trainer.global_step} is still above the unigram "
              f"baseline {unigram:.2f} after warm-up: the model has not learned even token frequencies; usually the "
              "learning rate is far too low or too high, the tokenizer does not match the data, or the loss "
              "masking is wrong", file=sys.stderr)


class SaveFinalWeights(L.Callback):
    """At the end of training, writes the module's final weights (`model.safetensors`) into the run directory:
    a full state dict under FSDP too; nothing when a signal stopped the run. `written`: whether it has; a resume
    from a checkpoint of the final step trains nothing and calls no hook, so the pipeline calls `save` itself."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.written = False

    def on_train_end(self, trainer, pl_module):
        if stopped_by_signal(trainer) is None:  # else an unfinished run: its state is in checkpoints/
            self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> None:
        self.written = True
        if is_sharded(trainer):  # FSDP: every rank takes part in gathering the full state dict
            state = full_state_dict(trainer, pl_module)
            if trainer.is_global_zero:
                pl_module.save_final_weights(self.run_dir, state={k.removeprefix("model."): v for k, v in state.items()
                                                                  if k.startswith("model.")})
        elif trainer.is_global_zero:
            pl_module.save_final_weights(self.run_dir)
