"""Warm-up then a constant learning rate (`train.schedule=constant`): lr(s) = lr * min(1, (s + 1) / W).

The baseline a schedule ablation compares against; also what fine-tuning recipes often use."""

from __future__ import annotations

from train.schedules.schedule import Schedule


class Constant(Schedule):
    @staticmethod
    def factor(step: int, train_cfg) -> float:
        warm = Schedule.warmup(step, train_cfg)
        return 1.0 if warm is None else warm
