"""MoE expert-share logging: a tiny MoE run logs `moe/layer{i}/expert{j}` and plots `expert_share.png`."""

from __future__ import annotations

import csv

import lightning as L
import pytest
from conftest import tiny_train_overrides

from train.config import load_config
from train.run import pretrain


def test_moe_run_logs_expert_shares(tiny_corpus, tmp_path):
    overrides = tiny_train_overrides(tiny_corpus, tmp_path, **{"model.ffn": "moe", "model.moe.num_experts": 4,
                                                               "train.max_steps": 4, "train.log_every": 2})
    run_dir = pretrain(load_config(None, overrides))
    assert (run_dir / "expert_share.png").stat().st_size > 0
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    columns = [f"moe/layer{i}/expert{j}" for i in range(2) for j in range(4)]
    assert set(columns) <= set(rows[0])
    logged = [r for r in rows if r.get(columns[0])]
    assert [int(float(r["step"])) for r in logged] == [1, 3]  # every log_every=2 steps
    for row in logged:
        for i in range(2):
            assert sum(float(row[f"moe/layer{i}/expert{j}"]) for j in range(4)) == pytest.approx(1.0, abs=1e-5)


def test_component_callbacks_are_lightning_callbacks_of_registered_components(tmp_path):
    """Every entry of train/callbacks/components.py maps a registered component class to Callbacks built from
    (run_dir, log_every), and a run adds them only when a layer uses the component (or a subclass of it)."""
    from model.ffn import FFNS
    from model.mixers import MIXERS
    from train.callbacks.components import CALLBACKS, component_callbacks

    registered = [*MIXERS.values(), *FFNS.values()]
    assert CALLBACKS, "no component has a callback: this test checks nothing"
    for base, callbacks in CALLBACKS.items():
        assert any(issubclass(cls, base) for cls in registered), base
        assert all(isinstance(cb(tmp_path, 1), L.Callback) for cb in callbacks)
    moe = load_config(None, {"model": {"ffn": "moe"}})
    assert [type(cb).__name__ for cb in component_callbacks(moe, tmp_path)] == ["ExpertShare"]
    assert component_callbacks(load_config(None, {"model": {"ffn": "swiglu"}}), tmp_path) == []


def test_a_subclass_of_a_component_gets_its_callbacks(tmp_path, monkeypatch):
    from model.ffn import FFNS
    from model.ffn.moe import MoE
    from train.callbacks.components import component_callbacks

    class MoEVariant(MoE):
        """A variant of MoE (a subclass): logged as MoE is."""

    monkeypatch.setitem(FFNS, "moe", MoEVariant)
    cfg = load_config(None, {"model": {"ffn": "moe"}})
    assert [type(cb).__name__ for cb in component_callbacks(cfg, tmp_path)] == ["ExpertShare"]
