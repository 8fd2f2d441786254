"""Lightning DataModules. `SeededDataModule` is what every stage shares: a seeded, resumable, rank-sharded
training order (data/blocks.py's run_sampler) and a fixed held-out subset, the first `val_batches * batch_size`
items per rank, split over the ranks (validation_shard). `PackedDataModule` serves pretraining's packed token
blocks; data/sft.py's SFTDataModule (and align/dpo.py's PairDataModule) serve padded examples."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from data.blocks import PackedBlocks, run_sampler, validation_shard
from data.corpus import DataError


class SeededDataModule(L.LightningDataModule):
    """Subclasses set `train_set`, `val_set` and, for batches that need padding, `collate`."""

    train_set: Dataset
    val_set: Dataset
    collate = None  # DataLoader's default collation

    def __init__(self, batch_size: int, grad_accum: int, max_steps: int, seed: int, val_batches: int,
                 num_workers: int = 0):
        super().__init__()
        self.batch_size, self.grad_accum, self.max_steps = batch_size, grad_accum, max_steps
        self.seed, self.val_batches, self.num_workers = seed, val_batches, num_workers

    def train_dataloader(self) -> DataLoader:
        sampler = run_sampler(self.trainer, len(self.train_set), self.seed, self.batch_size, self.grad_accum,
                              self.max_steps)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=self.collate, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        shard = validation_shard(self.trainer, len(self.val_set), self.val_batches * self.batch_size)
        return DataLoader(Subset(self.val_set, shard), batch_size=self.batch_size, collate_fn=self.collate,
                          num_workers=self.num_workers)


class PackedDataModule(SeededDataModule):
    def __init__(self, tokens: dict[str, np.ndarray], seq_len: int, batch_size: int, grad_accum: int,
                 max_steps: int, seed: int, val_batches: int, num_workers: int = 0):
        super().__init__(batch_size, grad_accum, max_steps, seed, val_batches, num_workers)
        self.train_set = PackedBlocks(tokens["train"], seq_len)
        self.val_set = PackedBlocks(tokens["validation"], seq_len)
        if len(self.train_set) < batch_size or len(self.val_set) < 1:
            raise DataError(f"too little data for seq_len={seq_len}, batch_size={batch_size}: "
                            f"{len(self.train_set)} training and {len(self.val_set)} validation blocks; "
                            "use more stories or a smaller data.seq_len")
