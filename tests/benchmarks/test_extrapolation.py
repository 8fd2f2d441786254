"""The length-extrapolation benchmark (benchmarks/extrapolation.py) scores runs past their training length, and
reports a learned table that cannot place the tokens as refused instead of failing."""

from __future__ import annotations

import json
import math

import torch
from conftest import tiny_train_overrides

from benchmarks.extrapolation import main
from train.config import load_config
from train.run import pretrain


def test_rope_extrapolates_and_a_learned_table_is_refused(tiny_sft_run, tiny_corpus, tmp_path):
    learned = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path, **{
        "model.position": "learned", "train.name": "learned", "train.num_samples": 0})))
    out = tmp_path / "extrapolation"
    main(["--runs", str(tiny_sft_run[0]), str(learned), "--lengths", "32", "64", "--out", str(out)])
    rows = json.loads((tmp_path / "extrapolation.json").read_text())["results"]
    loss = {(r["position"], r["eval_len"]): r["loss"] for r in rows}
    assert all(math.isfinite(loss[("rope", n)]) for n in (32, 64))
    assert math.isfinite(loss[("learned", 32)]) and loss[("learned", 64)] is None
    assert "refused" in (tmp_path / "extrapolation.md").read_text()
    assert torch.is_grad_enabled()  # in-process callers (the test suite) keep autograd
