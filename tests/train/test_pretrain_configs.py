"""The llama2.c-shaped pretraining configs load, and their comments state the parameters the model has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from train.config import load_config
from train.estimate.sizes import count_params, model_config

SHAPES = {"15m": (288, 6, 6, 256), "42m": (512, 8, 8, 1024), "110m": (768, 12, 12, 1024)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_config_shape_and_stated_parameters(name):
    path = Path(__file__).parents[2] / "configs" / "pretrain" / f"{name}.yaml"
    cfg = load_config(str(path), [])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.data.seq_len) == SHAPES[name]
    assert cfg.data.path == "roneneldan/TinyStories" and cfg.train.precision == "bf16-mixed" and cfg.train.compile
    stated = float(re.search(r"([\d.]+)M parameters here", path.read_text()).group(1))
    assert count_params(model_config(cfg))["total"] / 1e6 == pytest.approx(stated, abs=0.01)
