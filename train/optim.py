"""Parameter groups, the optimizer (`train.optimizer`) and the LR schedule (`train.schedule`), from their registries.

Weight decay applies to matrices only: vectors (norms, biases), embeddings and the parameters each component
declares in `no_decay_parameters()` (Mamba's A_log and D, GAU's scales; model/component.py) are not decayed
(decaying embeddings shrinks rare tokens' vectors for no gain; GPT-2 / nanoGPT / Llama practice).
"""

from __future__ import annotations

import torch
from torch import nn

from train.optimizers import OPTIMIZERS
from train.schedules import SCHEDULES


def remember_shapes(model: nn.Module) -> None:
    """Note each parameter's rank: FSDP (use_orig_params) turns parameters into 1-D shards before the optimizer
    is built, and `param_groups` decides on decay by rank."""
    for p in model.parameters():
        if not hasattr(p, "_orig_ndim"):  # a second call (validate after fit) may see the shards
            p._orig_ndim = p.ndim


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed matrices, the rest at weight decay 0]. Also tags each trainable parameter with `_hidden_matrix`:
    a decayed 2-D matrix that is not the output head (tied or not), the parameters Muon orthogonalises (conv kernels,
    e.g. Mamba's depthwise (E, 1, K), are per-channel filters, not matrices: they stay with AdamW)."""
    excluded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    excluded |= {id(p) for p in getattr(model, "no_decay_parameters", list)()}
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        matrix = getattr(p, "_orig_ndim", p.ndim) >= 2
        (decay if matrix and id(p) not in excluded else no_decay).append(p)
        p._hidden_matrix = getattr(p, "_orig_ndim", p.ndim) == 2 and id(p) not in excluded and p is not head
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train_cfg, loss_scaling: bool = False):
    """-> (optimizer, LambdaLR scheduler). Fused kernels only on CUDA and never under fp16 loss scaling."""
    fused = all(p.is_cuda for p in model.parameters()) and not loss_scaling
    groups = param_groups(model, train_cfg.weight_decay)
    optimizer = OPTIMIZERS[train_cfg.optimizer].build(groups, train_cfg, fused)
    schedule = SCHEDULES[train_cfg.schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, train_cfg))
    return optimizer, scheduler
