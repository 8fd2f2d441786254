"""The two held-out splits of an ablation: *selection* (picks each variant's learning rate) and *test* (reported).

The validation tokens of the run's data (the same file for every variant) are cut in two at their middle:

    tokens[:mid]  -> selection    tokens[mid:]  -> test      mid = len(tokens) // 2   (no token in both)

Each half is packed into blocks of data.seq_len + 1 tokens as in training (data/blocks.py), and the finished
model is scored on at most SPLIT_BLOCKS blocks of each: loss = sum CE / tokens (nats per token) and
bpb = sum CE / (ln 2 * sum bytes(target)), as `val/loss` and `val/bpb` in training (train/module.py). The choice
of learning rate reads only the selection numbers (train/ablate_grid.py), so the test numbers of the table played
no part in it. (The curves logged during training use the first validation blocks, inside the selection half.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.blocks import PackedBlocks

SPLITS = ("selection", "test")
SPLIT_BLOCKS = 512  # blocks scored per split (first ones of each half)
BATCH = 16


def split_tokens(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The validation tokens cut in two disjoint halves: {'selection': first half, 'test': second half}."""
    mid = len(tokens) // 2
    return {"selection": tokens[:mid], "test": tokens[mid:]}


@torch.no_grad()
def score(model, tokens: np.ndarray, seq_len: int, token_bytes: torch.Tensor) -> dict[str, float]:
    """{'loss': nats/token, 'bpb': bits/byte} of `model` on the first SPLIT_BLOCKS blocks of `tokens`."""
    blocks = PackedBlocks(tokens, seq_len)
    n = min(len(blocks), SPLIT_BLOCKS)
    if n == 0:
        return {"loss": math.nan, "bpb": math.nan}
    nats = n_bytes = n_tokens = 0.0
    device = next(model.parameters()).device
    for start in range(0, n, BATCH):
        inputs, targets = (torch.stack(t).to(device) for t in zip(*(blocks[i] for i in range(start,
                                                                                            min(n, start + BATCH)))))
        logits, _ = model(inputs)  # (B, T, V)
        nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
        n_bytes += token_bytes[targets].sum().item()
        n_tokens += targets.numel()
    return {"loss": nats / n_tokens, "bpb": nats / (math.log(2) * max(n_bytes, 1))}


def split_scores(run_dir: Path) -> dict[str, dict[str, float]]:
    """{'selection': {'loss', 'bpb'}, 'test': {...}} of the finished run in run_dir (its final weights)."""
    from data.tokenizer import token_byte_lengths
    from train.load import load_run
    from train.run import prepare_data

    cfg, tokenizer, model = load_run(run_dir)
    _, tokens = prepare_data(cfg, tokenizer)
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float32)
    halves = split_tokens(tokens["validation"])
    return {name: score(model, halves[name], cfg.data.seq_len, token_bytes) for name in SPLITS}
