"""One resolution of the sizes that follow the data (train/estimate/sizes.py): the run, the memory estimate and
`match: params`
build the same model from the same config, whether the tokenizer fills its vocabulary or not; a tokenizer larger
than the model is refused with one line."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_train_overrides

from model.transformer import Transformer
from train.ablate.param_match import meta_model
from train.config import ConfigError, load_config
from train.estimate.breakdown import estimate
from train.estimate.sizes import count_params, model_config
from train.run import prepare_data


@pytest.mark.parametrize("vocab", [300, 2000])  # 2000: more tokens than the tiny corpus has merges for
def test_every_caller_builds_the_same_model(tiny_corpus, tmp_path, vocab):
    cfg = load_config(None, tiny_train_overrides(tiny_corpus, tmp_path, **{"data.vocab_size": vocab}))
    assert cfg.model.vocab_size == 0 and cfg.model.max_seq_len == 0  # both follow the data
    estimated = estimate(cfg, 1)["params"]["total"]  # train/estimate/breakdown.py
    matched = meta_model(cfg).num_params()  # train/ablate/param_match.py
    tokenizer, _ = prepare_data(cfg)  # train/run.py: the model `pretrain` builds is Transformer(cfg.model)
    with torch.device("meta"):
        run = Transformer(cfg.model).num_params()
    assert (cfg.model.vocab_size, cfg.model.max_seq_len) == (vocab, cfg.data.seq_len)
    assert estimated == matched == run == count_params(model_config(cfg))["total"]
    assert (tokenizer.get_vocab_size() < vocab) == (vocab == 2000)  # the rows no token uses are the model's too


def test_an_explicit_size_wins_and_a_smaller_tokenizer_is_refused(tiny_corpus, tmp_path):
    cfg = load_config(None, tiny_train_overrides(tiny_corpus, tmp_path, **{"model.vocab_size": 320,
                                                                           "model.max_seq_len": 48}))
    assert (model_config(cfg).vocab_size, model_config(cfg).max_seq_len) == (320, 48)
    assert cfg.model.vocab_size == 320  # model_config copies: the config itself is unchanged
    small = load_config(None, tiny_train_overrides(tiny_corpus, tmp_path, **{"data.vocab_size": 100}))
    with pytest.raises(ConfigError, match=r"data.vocab_size \(model.vocab_size=0\)=100 is smaller than the "
                                          r"tokenizer's 257 tokens"):
        prepare_data(small)  # a byte-level BPE keeps its 256 bytes and <|endoftext|> whatever the target
