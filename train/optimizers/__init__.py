"""Optimizers, by name (`train.optimizer`). Contract (`OptimizerRecipe`): `build(groups, train_cfg, fused)` returns a
`torch.optim.Optimizer` over `groups` (train/optim.py: decayed matrices, and the rest at weight decay 0), reading
its hyperparameters from `train.*` or from its own `section` (nested under `train.<name>`)."""

from model.component import Registry
from train.optimizers.adamw import AdamW
from train.optimizers.muon import Muon
from train.optimizers.recipe import OptimizerRecipe

OPTIMIZERS = Registry("optimizer", OptimizerRecipe, {"adamw": AdamW, "muon": Muon})
