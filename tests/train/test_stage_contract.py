"""The stage contract (train/module.py): every stage implements compute_loss (GRPO also prepare_batch), the
shared LanguageModel owns training_step, and save_final_weights takes FSDP's gathered `state`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from train.module import LanguageModel

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("train", "finetune", "align")


def stages() -> list[type]:
    """Every LanguageModel subclass the product defines (its rooms' modules imported)."""
    for room in ROOMS:
        for info in pkgutil.iter_modules([str(ROOT / room)]):
            if info.name not in ("__main__",):
                importlib.import_module(f"{room}.{info.name}")
    found, todo = [], [LanguageModel]
    while todo:
        cls = todo.pop()
        subs = [c for c in cls.__subclasses__() if c.__module__.split(".")[0] in ROOMS]
        found += subs
        todo += subs
    return found


def test_the_stages_are_found():
    assert {c.__name__ for c in stages()} >= {"LoRALanguageModel", "PolicyModel", "DPOModel", "GRPOModel"}


@pytest.mark.parametrize("stage", stages(), ids=lambda c: c.__name__)
def test_no_stage_overrides_the_step_and_final_weights_take_state(stage):
    assert stage.training_step is LanguageModel.training_step
    params = inspect.signature(stage.save_final_weights).parameters
    assert "state" in params and params["state"].default is None


def test_a_stage_that_overrides_training_step_is_refused():
    with pytest.raises(TypeError, match="overrides training_step: a stage implements compute_loss"):
        type("Bad", (LanguageModel,), {"training_step": lambda self, batch, batch_idx: None})
    with pytest.raises(TypeError, match="save_final_weights must accept state=None"):
        type("Bad", (LanguageModel,), {"save_final_weights": lambda self, run_dir: None})
