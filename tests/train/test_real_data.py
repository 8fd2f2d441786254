"""Pretraining on the real TinyStories data (the shipped sample, or TINYSTORIES_DIR): tokenizer, packing, a run."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import tiny_train_overrides

from data.corpus import load_stories
from data.tokenizer import eot_id
from data.tokens import prepare_tokens
from train.config import load_config
from train.run import pretrain
from train.rundir.load import load_run


@pytest.mark.slow
def test_real_corpus_tokenizes_and_round_trips(tinystories_dir, tmp_path):
    stories = load_stories(str(tinystories_dir))
    assert len(stories["train"]) > 4000 and len(stories["validation"]) > 500
    tok, tokens = prepare_tokens(str(tinystories_dir), 1024, str(tmp_path))
    story = stories["validation"][0]
    assert tok.decode(tok.encode(story).ids) == story
    n_stories = int((tokens["validation"] == eot_id(tok)).sum())
    assert n_stories == len(stories["validation"])
    assert len(tokens["train"]) / sum(len(s) for s in stories["train"]) < 0.4  # BPE compresses ~4 chars/token


@pytest.mark.slow
def test_short_pretraining_run_on_real_data(tinystories_dir, tmp_path):
    overrides = tiny_train_overrides(tinystories_dir, tmp_path, **{"data.max_stories": 400, "data.vocab_size": 512,
                                                                   "train.max_steps": 30, "train.val_every": 30,
                                                                   "data.seq_len": 64, "train.batch_size": 8})
    run_dir = pretrain(load_config(None, overrides))
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert train[-1] < train[0] - 0.5 and val[-1] < math.log(512)  # learned beyond the uniform guess
    _, tokenizer, model = load_run(run_dir)
    out = model.generate(torch.tensor([tokenizer.encode("Once upon a time").ids]), 20)
    assert out.shape[1] > 4
