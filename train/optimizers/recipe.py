"""What every optimizer entry declares: its config section (or None) and how to build it."""

from __future__ import annotations

from typing import ClassVar

from model.options import Sectioned


class OptimizerRecipe(Sectioned):
    REQUIRED: ClassVar[tuple[str, ...]] = ("build",)  # its own `section` (train.<registry name>): `options(train_cfg)`

    @staticmethod
    def build(groups: list[dict], train_cfg, fused: bool):
        """-> a torch.optim.Optimizer over `groups` at peak learning rate train_cfg.lr."""
        raise NotImplementedError
