"""`python -m align.dpo --config configs/align/dpo.yaml [--section.key=value ...]`: Direct Preference Optimization.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
(arXiv:2305.18290), eq. 7: for a prompt x with a chosen completion y_w and a rejected one y_l,

    L = -log sigma(beta [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

with log pi(y|x) = sum_{t in y} log pi(y_t | x, y_<t) over the completion tokens only. `align.loss_type` picks the
loss from a registry (align/losses: sigmoid, ipo, hinge, simpo, orpo, kto), each given one `PreferenceBatch`
(both models' sequence log-probs, completion lengths, per-token NLL, desirable labels) and its own options
(`align.<name>`); SimPO and ORPO need no pi_ref, and none is run or kept. pi_ref is the SFT model
(align/policy.py: the LoRA policy with its adapter off, or a frozen copy). One forward scores a whole batch: B
chosen then the B rejected sequences (2B, T), or for KTO's unpaired rows (`align.make_pairs --unpaired`) B
completions with their labels, tokenized and prompt-masked as in SFT (data/sft.py) and padded together.

Logged like TRL's DPOTrainer, on training and held-out pairs (`train/...`, `val/...`): what the loss names, e.g.
rewards/chosen = beta (log pi(y_w) - log ref(y_w)) (mean), rewards/rejected, rewards/margins (their
difference), rewards/accuracies (share with chosen > rejected), logps/chosen, logps/rejected.
The loop is pretraining's: `train.run.fit` (Trainer, precision, checkpoints, resume) and the step is
train/module.py's (finiteness on all ranks, bad steps, logging); DPO implements `compute_loss` only.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from align.losses import LOSSES, PreferenceBatch, token_logprobs
from align.make_pairs import load_pairs, offline_pairs
from align.policy import PolicyModel, align_config, start_policy
from data.corpus import DataError
from data.datamodule import SeededDataModule
from data.instruct import InstructExample
from data.sft import IGNORE, example_tensors, instruct_examples, pad_batch, tokenize_examples
from data.tokenizer import eot_id, token_byte_lengths
from train.cli import run_cli
from train.config import Config, ConfigError
from train.estimate.memory import check_memory
from train.run import fit, make_run_dir


class PairDataset(Dataset):
    """(prompt, chosen, rejected) -> ((inputs, targets) chosen, (inputs, targets) rejected), prompt-masked."""

    def __init__(self, tokenizer, pairs: list[dict], seq_len: int):
        def encode(key):  # drops exactly the pairs whose prompt leaves no room: the same for both halves
            return tokenize_examples(tokenizer, [InstructExample(p["prompt"], p[key]) for p in pairs], seq_len)

        # a pair that truncation makes identical carries no preference (h = 0 for every policy): left out
        self.items = [(c, r) for c, r in zip(encode("chosen"), encode("rejected")) if c != r]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        chosen, rejected = self.items[i]
        return example_tensors(*chosen), example_tensors(*rejected)


class PairCollate:
    """B pairs -> inputs, targets (2B, T): the chosen sequences, then the rejected ones (EOT / -100 padded)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        return pad_batch([c for c, _ in items] + [r for _, r in items], self.pad_id)


class UnpairedDataset(Dataset):
    """(prompt, completion, label) -> ((inputs, targets), label), prompt-masked: KTO's unpaired rows."""

    def __init__(self, tokenizer, rows: list[dict], seq_len: int):
        encoded = [(tokenize_examples(tokenizer, [InstructExample(r["prompt"], r["completion"])], seq_len), r["label"])
                   for r in rows]
        self.items = [(example[0], label) for example, label in encoded if example]  # [] : no room after the prompt

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        example, label = self.items[i]
        return example_tensors(*example), label


class UnpairedCollate:
    """B labelled completions -> inputs, targets (B, T) (EOT / -100 padded), desirable (B,) bool."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        return (*pad_batch([x for x, _ in items], self.pad_id), torch.tensor([label for _, label in items]))


class PairDataModule(SeededDataModule):
    """SFT's seeded, resumable order and held-out batches (data/datamodule.py), over preference pairs, or over
    unpaired labelled completions when the rows carry a label."""

    def __init__(self, tokenizer, pairs: dict[str, list[dict]], seq_len: int, batch_size: int, grad_accum: int,
                 max_steps: int, seed: int, val_batches: int, num_workers: int = 0):
        super().__init__(batch_size, grad_accum, max_steps, seed, val_batches, num_workers)
        unpaired = is_unpaired(pairs)
        dataset, collate = (UnpairedDataset, UnpairedCollate) if unpaired else (PairDataset, PairCollate)
        self.train_set = dataset(tokenizer, pairs["train"], seq_len)
        self.val_set = dataset(tokenizer, pairs["validation"][: val_batches * batch_size], seq_len)
        if len(self.train_set) < batch_size:
            raise DataError(f"only {len(self.train_set)} preference {'rows' if unpaired else 'pairs'} fit "
                            f"data.seq_len={seq_len} (train.batch_size={batch_size}); make more or raise data.seq_len")
        self.collate = collate(eot_id(tokenizer))


def is_unpaired(pairs: dict[str, list[dict]]) -> bool:
    """Whether the rows are KTO's prompt/completion/label (align/make_pairs.py UNPAIRED), not pairs."""
    return bool(pairs["train"]) and "label" in pairs["train"][0]


class DPOModel(PolicyModel):
    """The preference loss `align.loss_type` (align/losses LOSSES) over (2B, T) batches of chosen-then-rejected
    sequences, or (B, T) unpaired ones with their labels; the reference model runs only when the entry needs it."""

    def uses_reference(self) -> bool:
        return LOSSES[self.cfg.align.loss_type].needs_reference

    def dpo(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch[:2]
        mask = (targets != IGNORE).float()  # (N, T) completion tokens
        logits, _ = self.model(inputs)  # (N, T, V)
        logp = token_logprobs(logits, targets) * mask  # (N, T)
        reference = None
        if self.uses_reference():
            with torch.no_grad(), self.reference_model() as ref_model:
                reference = (token_logprobs(ref_model(inputs)[0], targets) * mask).sum(-1)  # (N,)
        scored = (logp.sum(-1), reference, mask.sum(-1), -logp)  # policy (N,), reference, tokens (N,), NLL (N, T)
        rows = PreferenceBatch(*scored, batch[2]) if len(batch) == 3 else PreferenceBatch.pairs(*scored)
        entry, a = LOSSES[self.cfg.align.loss_type], self.cfg.align
        loss, metrics = entry.loss(rows, a.beta, entry.options(a) if entry.section is not None else None)
        return loss, {"loss": loss.detach(), **metrics}

    def compute_loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = self.dpo(batch)
        return loss, {f"train/{k}": v for k, v in logs.items()}

    def on_validation_epoch_start(self) -> None:
        pass

    def validation_step(self, batch, batch_idx) -> None:
        _, logs = self.dpo(batch)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=batch[0].shape[0],
                      sync_dist=True)  # the ranks' validation shards differ

    def on_validation_epoch_end(self) -> None:
        pass


def preference_pairs(cfg: Config) -> dict[str, list[dict]]:
    """align.pairs (JSONL or dataset), or offline pairs made from the training stories; a held-out tenth
    (at most val_batches * batch_size pairs) for validation."""
    if cfg.align.pairs:
        pairs = load_pairs(cfg.align.pairs)
    else:
        examples = instruct_examples(cfg.data.path, cfg.train.seed, cfg.data.val_fraction, cfg.data.max_stories)
        pairs = offline_pairs(examples["train"], cfg.align.rewards, cfg.train.seed)
    n_val = min(len(pairs) // 10, cfg.train.val_batches * cfg.train.batch_size)
    return {"train": pairs[: len(pairs) - n_val], "validation": pairs[len(pairs) - n_val:]}


def train_dpo(cfg: Config, callbacks: list = ()) -> Path:
    """DPO from the SFT run cfg.finetune.base; returns the run directory."""
    t = cfg.train
    # a batch is the chosen and the rejected halves: 2 x train.batch_size sequences
    check_memory(cfg, training=True, frozen=cfg.finetune.method == "lora", batch=2 * t.batch_size)
    pairs = preference_pairs(cfg)
    entry = LOSSES[cfg.align.loss_type]
    if entry.paired and is_unpaired(pairs):
        raise ConfigError(f"align.loss_type={cfg.align.loss_type} needs pairs (prompt/chosen/rejected); "
                          f"align.pairs={cfg.align.pairs} holds unpaired rows (prompt/completion/label): use "
                          "align.loss_type=kto, or pairs from python -m align.make_pairs without --unpaired")
    L.seed_everything(t.seed, workers=True, verbose=False)
    run_dir = make_run_dir(cfg)
    tokenizer, model, lora_cfg, run_files = start_policy(cfg, run_dir)
    datamodule = PairDataModule(tokenizer, pairs, cfg.data.seq_len, t.batch_size, t.grad_accum, t.max_steps,
                                t.seed, t.val_batches, cfg.data.num_workers)
    module = DPOModel(cfg, token_byte_lengths(tokenizer), model, lora_cfg)
    trainer = fit(cfg, module, datamodule, run_dir, tokenizer, callbacks, monitor_val=len(datamodule.val_set) > 0,
                  run_files=run_files)
    if trainer.is_global_zero:
        logs = {k: float(v) for k, v in trainer.callback_metrics.items() if "rewards/" in k or k.endswith("/loss")}
        print(f"run: {run_dir}  pairs={len(datamodule.train_set)}  "
              + "  ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))
    return run_dir


def main(cfg: Config) -> None:
    train_dpo(cfg)


if __name__ == "__main__":
    run_cli(main, usage=__doc__, load=align_config)
