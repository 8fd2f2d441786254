"""Packed fixed-length blocks and a resumable, shardable sampling order.

A token stream (stories separated by EOT) is cut into N = (len - 1) // L blocks of L + 1 tokens;
block i gives inputs tokens[iL : iL + L] and targets tokens[iL + 1 : iL + L + 1], so stories pack
end to end with EOT between them and nothing is padded.

The training order is a pure function of (seed, epoch, position): epoch e visits the blocks in the
permutation `randperm(N, seed + e)`, epochs follow each other, and sample s of the global stream is
block `perm_{s // N}[s % N]`. Rank r of W takes samples s = r, r + W, ... (no block twice per epoch
across ranks), and a resumed run starts at s = step * W * batch * accum: exact resume without saving
any sampler state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class PackedBlocks(Dataset):
    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n_blocks = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.seq_len
        block = torch.from_numpy(self.tokens[start:start + self.seq_len + 1].astype(np.int64))  # (L + 1,)
        return block[:-1], block[1:]  # inputs (L,), targets (L,)


class ResumableSampler(Sampler[int]):
    def __init__(self, n_blocks: int, seed: int, start: int, total: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed = n_blocks, seed
        self.positions = range(start + rank, total, world_size)  # global sample positions of this rank
        self.run_length = len(range(rank, total, world_size))  # this rank's samples over the whole run

    def __len__(self) -> int:
        # The whole run's length, not what is left: a resumed Lightning loop restores how many batches of the
        # epoch were done and ends the epoch after len // batch_size batches in all; with the remaining length
        # it would end early and start the (resumed) order again.
        return self.run_length

    def __iter__(self):
        epoch, perm = -1, None
        for s in self.positions:
            if s // self.n != epoch:
                epoch = s // self.n
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            yield perm[s % self.n]


def run_sampler(trainer, size: int, seed: int, batch_size: int, grad_accum: int, max_steps: int) -> ResumableSampler:
    """This rank's part of the whole run's order, from the trainer's current optimizer step on (a resumed run
    continues where it stopped with no saved sampler state)."""
    per_step = trainer.world_size * batch_size * grad_accum  # samples per optimizer step
    return ResumableSampler(size, seed, start=trainer.global_step * per_step, total=max_steps * per_step,
                            rank=trainer.global_rank, world_size=trainer.world_size)


def validation_shard(trainer, size: int, per_rank: int) -> range:
    """This rank's validation indices: the first `world * per_rank` of `size` items (fewer if there are fewer,
    cut to a multiple of the world size), every world-th from the rank on. The ranks score disjoint shards of
    equal length (equal batch counts: FSDP gathers weights in lockstep) and the module sums their totals."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)  # None: standalone
    n = min(size, world * per_rank) // world * world
    return range(rank, n, world)
