"""What every optimizer entry declares: its config section (or None), the state it keeps per parameter, and how to
build it.

`state` names the tensors the optimizer keeps for each parameter, each of the parameter's size and dtype (so its
bytes per parameter are len(names) x 4 in fp32), separately for the hidden matrices (the 2-D weights train/optim.py
tags `_hidden_matrix`, which Muon orthogonalises) and for the rest; `train.estimate` reads it.
"""

from __future__ import annotations

from typing import ClassVar

from model.options import Sectioned


class OptimizerRecipe(Sectioned):
    REQUIRED: ClassVar[tuple[str, ...]] = ("build", "state")  # `section` (train.<registry name>): `options(train_cfg)`
    state: ClassVar[dict[str, tuple[str, ...]]] = {"hidden": (), "other": ()}  # per-parameter state tensors, by kind

    @staticmethod
    def build(groups: list[dict], train_cfg, fused: bool):
        """-> a torch.optim.Optimizer over `groups` at peak learning rate train_cfg.lr."""
        raise NotImplementedError

    @classmethod
    def state_elements(cls, hidden: int, other: int) -> int:
        """Elements of state for `hidden` parameters in hidden matrices and `other` parameters elsewhere."""
        return len(cls.state["hidden"]) * hidden + len(cls.state["other"]) * other

    @classmethod
    def describe_state(cls) -> str:
        """The state's names, e.g. 'm, v' or 'momentum (matrices), m, v (rest)'."""
        hidden, other = (", ".join(cls.state[kind]) or "none" for kind in ("hidden", "other"))
        return hidden if hidden == other else f"{hidden} (matrices), {other} (rest)"
