"""What every schedule entry declares: its config section (or None) and the LR factor at a step."""

from __future__ import annotations

from typing import ClassVar

from model.options import Sectioned


class Schedule(Sectioned):
    REQUIRED: ClassVar[tuple[str, ...]] = ("factor",)  # its own `section` (train.<registry name>): `options(train_cfg)`

    @staticmethod
    def factor(step: int, train_cfg) -> float:
        raise NotImplementedError

    @staticmethod
    def warmup(step: int, train_cfg) -> float | None:
        """The linear warm-up every schedule starts with: (s + 1) / W for s < W = train.warmup_steps, else None."""
        return (step + 1) / train_cfg.warmup_steps if step < train_cfg.warmup_steps else None
