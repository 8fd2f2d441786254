"""MoE expert-share logging: a tiny MoE run logs `moe/layer{i}/expert{j}` and plots `expert_share.png`."""

from __future__ import annotations

import csv

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

