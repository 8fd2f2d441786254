"""AdamW (`train.optimizer=adamw`): Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization".

    m_t = b1 m + (1 - b1) g,  v_t = b2 v + (1 - b2) g^2,  theta -= lr (m_hat / (sqrt(v_hat) + eps) + wd theta)

Hyperparameters: train.lr, train.betas, train.weight_decay (0 on the no-decay group). Fused (one kernel for all
parameters) on CUDA, except under fp16 loss scaling, where a fused AdamW would unscale inside step(), after
clipping had seen the scaled gradients.
"""

from __future__ import annotations

import torch

from train.optimizers.recipe import OptimizerRecipe


class AdamW(OptimizerRecipe):
    state = {"hidden": ("m", "v"), "other": ("m", "v")}  # first and second moments of every parameter
    @staticmethod
    def build(groups: list[dict], train_cfg, fused: bool) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas), fused=fused)
