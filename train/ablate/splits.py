"""The two held-out splits of an ablation: *selection* (picks each variant's learning rate) and *test* (reported).

The validation stories of the run's data (the same for every variant) are dealt alternately into two halves,
story by story (a story ends with the end-of-text token), so that both halves follow the same distribution even
when the validation file is ordered by source (the local sample's second half is harder than its first):

    stories 0, 2, 4, ... -> selection        stories 1, 3, 5, ... -> test          (no token in both)

Each half is packed into blocks of data.seq_len + 1 tokens as in training (data/blocks.py), and the finished
model is scored on at most SPLIT_BLOCKS blocks of each: loss = sum CE / tokens (nats per token) and
bpb = sum CE / (ln 2 * sum bytes(target)), as `val/loss` and `val/bpb` in training (train/module.py). The choice
of learning rate reads only the selection numbers (train/ablate/grid.py), so the test numbers of the table played
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


def split_tokens(tokens: np.ndarray, eot: int) -> dict[str, np.ndarray]:
    """The validation tokens dealt story by story into two disjoint halves {'selection', 'test'}; a story is
    the tokens up to and including the end-of-text token `eot`."""
    stories = np.split(tokens, np.flatnonzero(tokens == eot) + 1)  # [story 0, story 1, ...] (the last may be empty)
    return {"selection": np.concatenate(stories[0::2]), "test": np.concatenate(stories[1::2] or [tokens[:0]])}


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


def split_scores(run_dir: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, dict[str, float]]:
    """{'selection': {'loss', 'bpb'}, 'test': {...}} of the finished run in run_dir (its final weights), for the
    named splits (a sweep without a choice to make scores only 'test')."""
    from data.tokenizer import eot_id, token_byte_lengths
    from train.run import prepare_data
    from train.rundir.load import load_run

    cfg, tokenizer, model = load_run(run_dir)
    _, tokens = prepare_data(cfg, tokenizer)
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float32)
    halves = split_tokens(tokens["validation"], eot_id(tokenizer))
    return {name: score(model, halves[name], cfg.data.seq_len, token_bytes) for name in splits}
