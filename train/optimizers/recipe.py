"""What every optimizer entry declares: its config section (or None) and how to build it."""

from __future__ import annotations

from typing import ClassVar


class OptimizerRecipe:
    REQUIRED: ClassVar[tuple[str, ...]] = ("build",)
    section: ClassVar[type | None] = None  # config dataclass under train.<registry name>

    @staticmethod
    def build(groups: list[dict], train_cfg, fused: bool):
        """-> a torch.optim.Optimizer over `groups` at peak learning rate train_cfg.lr."""
        raise NotImplementedError
