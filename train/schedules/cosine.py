"""Warm-up then cosine decay (`train.schedule=cosine`): Loshchilov & Hutter 2017, "SGDR", without restarts.

    lr(s) = lr * (s + 1) / W                                              s < W   (linear warm-up)
    lr(s) = lr * (m + (1 - m) (1 + cos(pi p)) / 2),  p = (s - W) / (S - W)   otherwise (cosine to m * lr)

W = train.warmup_steps, S = train.max_steps, m = train.min_lr_ratio.
"""

from __future__ import annotations

import math

from train.schedules.schedule import Schedule


class Cosine(Schedule):
    @staticmethod
    def factor(step: int, train_cfg) -> float:
        warm = Schedule.warmup(step, train_cfg)
        if warm is not None:
            return warm
        W, S, m = train_cfg.warmup_steps, train_cfg.max_steps, train_cfg.min_lr_ratio
        progress = min(1.0, (step - W) / max(1, S - W))
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))
