"""AdamW with two parameter groups and a warm-up + cosine learning-rate schedule.

Weight decay applies to matrices only: norms, biases, embeddings and parameters flagged `_no_weight_decay`
(Mamba's A_log and D) are not decayed
(decaying embeddings shrinks rare tokens' vectors for no gain; GPT-2 / nanoGPT / Llama practice).

    lr(s) = lr * s / W                                            s < W   (linear warm-up)
    lr(s) = lr * (m + (1 - m) * (1 + cos(pi * p)) / 2),  p = (s - W) / (S - W)   otherwise (cosine to m*lr)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def remember_shapes(model: nn.Module) -> None:
    """Note each parameter's rank: FSDP (use_orig_params) turns parameters into 1-D shards before the optimizer
    is built, and `param_groups` decides on decay by rank."""
    for p in model.parameters():
        if not hasattr(p, "_orig_ndim"):  # a second call (validate after fit) may see the shards
            p._orig_ndim = p.ndim


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        matrix = getattr(p, "_orig_ndim", p.ndim) >= 2
        decayed = matrix and id(p) not in embeddings and not getattr(p, "_no_weight_decay", False)
        (decay if decayed else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, warmup: int, total: int,
                    min_ratio: float, loss_scaling: bool = False):
    """Fused AdamW (one kernel for all parameters) on CUDA, except under fp16 loss scaling (`loss_scaling`):
    a fused AdamW unscales inside step(), after clipping would have seen the scaled gradients."""
    fused = all(p.is_cuda for p in model.parameters()) and not loss_scaling
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total, min_ratio))
    return optimizer, scheduler
