"""Supervised fine-tuning (SFT) of a pretrained run on story instructions: LoRA or all parameters.

The loss is pretraining's next-token loss (train/module.py) with the prompt's targets at -100
(data/sft.py), i.e. the completion loss  L = -(1/|S|) sum_{t in S} log p(x_t | x_<t)  over story tokens S.
The Trainer, precision, checkpointing and resume are pretraining's: `train.run.fit`, no copied loop.

    finetune.method=lora  LoRA (Hu et al. 2021, arXiv:2106.09685): W x + (alpha/r) B A x on the targeted
                          Linears, W frozen, only A (r, in) and B (out, r) reach the optimizer; the run dir
                          keeps the adapter (PEFT format) and a reference to the base run, not the weights
    finetune.method=full  every parameter trains; the run dir is a plain run dir (model.safetensors)

At the end both the base model and the fine-tuned one are evaluated on held-out prompts (finetune/evaluate.py),
written to eval.md / eval.json in the run directory.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from data.sft import SFTDataModule, instruct_examples
from data.tokenizer import token_byte_lengths
from finetune.config import adapt, check_base
from finetune.evaluate import evaluate, write_report
from model.lora import LoRAConfig, store_base_weights
from train.callbacks.standard import SampleStories
from train.config import Config, ConfigError
from train.estimate.memory import check_memory
from train.module import LanguageModel
from train.run import fit, make_run_dir
from train.rundir.adapter import ADAPTER_DIR, save_adapter
from train.rundir.load import load_run


class LoRALanguageModel(LanguageModel):
    """LanguageModel over a model carrying LoRA adapters (`lora_cfg`), whose run directory gets the adapter,
    not weights; with lora_cfg None (full fine-tuning) it is a plain LanguageModel. Alignment subclasses it."""

    def __init__(self, cfg: Config, token_bytes: list[int], model, lora_cfg: LoRAConfig | None):
        super().__init__(cfg, token_bytes, model)
        self.lora_cfg = lora_cfg

    def save_final_weights(self, run_dir: Path, state: dict | None = None) -> None:
        if self.lora_cfg is None:
            super().save_final_weights(run_dir, state)
        else:
            save_adapter(self.model, self.lora_cfg, Path(run_dir) / ADAPTER_DIR, self.cfg.finetune.base, state)


def build_module(cfg: Config, tokenizer, model) -> LanguageModel:
    """Wrap the loaded base `model` for training: LoRA adapters (in place) or every parameter trainable."""
    token_bytes = token_byte_lengths(tokenizer)
    model.train()  # load_run returns it in eval mode; Lightning keeps a module's mode
    if cfg.finetune.method == "full":
        return LanguageModel(cfg, token_bytes, model.requires_grad_(True))
    return LoRALanguageModel(cfg, token_bytes, model, adapt(model, cfg))


def finetune(cfg: Config, callbacks: list = ()) -> Path:
    """Fine-tune cfg.finetune.base on cfg.data.path; returns the run directory."""
    t, f = cfg.train, cfg.finetune
    base = check_base(f.base)
    check_memory(cfg, training=True, frozen=f.method == "lora")  # this machine, before a weight is read
    L.seed_everything(t.seed, workers=True, verbose=False)
    base_cfg, tokenizer, model = load_run(base)
    if base_cfg.model != cfg.model:
        raise ConfigError(f"model.* differs from the base run's {base}/config.yaml; fine-tuning keeps the base "
                          "model: remove model.* from the fine-tuning config")
    module = build_module(cfg, tokenizer, model)  # first: a bad LoRA target fails before the data is read
    examples = instruct_examples(cfg.data.path, t.seed, cfg.data.val_fraction, cfg.data.max_stories, tokenizer,
                                 cfg.data.seq_len)
    datamodule = SFTDataModule(tokenizer, examples, cfg.data.seq_len, t.batch_size, t.grad_accum, t.max_steps,
                               t.seed, t.val_batches, cfg.data.num_workers)
    run_dir = make_run_dir(cfg)
    samples = SampleStories(run_dir, tokenizer, t.num_samples, t.sample_tokens, prompt=examples["validation"][0].prompt)

    def evaluate_base_and_tuned(trainer) -> None:  # part of the run: it counts as finished once eval.md is written
        if f.eval_prompts > 0:
            heldout = examples["validation"][: f.eval_prompts]
            _, _, base_model = load_run(base, module.device.type)
            store_base_weights(module.model, torch.float32)  # evaluated without autocast, like the base
            results = {"base": evaluate(base_model, tokenizer, heldout, f.eval_tokens, cfg.data.seq_len),
                       f"{f.method} fine-tuned": evaluate(module.model, tokenizer, heldout, f.eval_tokens,
                                                          cfg.data.seq_len)}
            print(write_report(run_dir, results))

    trainer = fit(cfg, module, datamodule, run_dir, tokenizer, [samples, *callbacks], finish=evaluate_base_and_tuned)
    if trainer.is_global_zero:
        trained = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        print(f"run: {run_dir}  method={f.method}  trainable={trained:,}  "
              + "  ".join(f"{k}={v:.4f}" for k, v in sorted(val.items())))
    return run_dir
