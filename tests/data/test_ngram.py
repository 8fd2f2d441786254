"""N-gram baselines (data/ngram.py): interpolated Kneser-Ney by hand, normalisation, order, caching, and the
baselines in a pretraining run (metrics.csv columns, summary line, the one warning above the unigram line)."""

from __future__ import annotations

import csv
import itertools
from fractions import Fraction as F

import numpy as np
import pytest
from conftest import tiny_train_overrides

from data import ngram
from data.tokens import prepare_tokens

# Toy corpus over V = 4 tokens (0 = EOT, 3 never seen): stream 1 2 1 2 1 0, padded with two EOTs: 0 0 1 2 1 2 1 0.
#   trigrams c(u v w): (0 0 1) 1, (0 1 2) 1, (1 2 1) 2, (2 1 2) 1, (2 1 0) 1     n1 = 4, n2 = 1 -> D3 = 4/6 = 2/3
#   bigrams c(v w):    (0 1) 1, (1 2) 2, (2 1) 2, (1 0) 1                        n1 = 2, n2 = 2 -> D2 = 2/6 = 1/3
#   N1+(. v w):        (0 1) 1, (1 2) 2 {0, 2}, (2 1) 1, (1 0) 1                 n1 = 3, n2 = 1 -> D2' = 3/5
#   unigrams c(w):     c(0) 1, c(1) 3, c(2) 2; N = 6                             n1 = 1, n2 = 1 -> D1 = 1/3
#   N1+(. w):          N1+(. 0) 1 {1}, N1+(. 1) 2 {0, 2}, N1+(. 2) 1 {1}; 4      n1 = 2, n2 = 1 -> D1' = 1/2
# unigram model: max(c - 1/3, 0) / 6 + (1/3 * 3 / 6) / 4 -> 11/72, 35/72, 23/72, 3/72
# continuation unigram p1': max(N1+ - 1/2, 0) / 4 + (1/2 * 3 / 4) / 4 -> 7/32, 15/32, 7/32, 3/32
# bigram model after v = 1 (c(1 .) = 3, N1+(1 .) = 2, back-off 1/3 * 2 / 3 = 2/9):
#   p(0|1) = 2/9 + 2/9 * 7/32 = 13/48, p(1|1) = 2/9 * 15/32 = 5/48, p(2|1) = 5/9 + 2/9 * 7/32 = 29/48, p(3|1) = 1/48
# trigram model after (2, 1): middle level on N1+(. 1 w) (total 3, 2 types, back-off 3/5 * 2 / 3 = 2/5):
#   p2'(0|1) = 2/15 + 2/5 * 7/32 = 53/240, p2'(1|1) = 45/240, p2'(2|1) = 7/15 + 7/80 = 133/240, p2'(3|1) = 9/240
#   top: c(2 1 .) = 2, 2 types, back-off 2/3 * 2 / 2 = 2/3; p(w|2 1) = max(c - 2/3, 0) / 2 + 2/3 * p2'(w|1)
#   -> p(0|2 1) = 1/6 + 53/360 = 113/360, p(1|2 1) = 45/360, p(2|2 1) = 193/360, p(3|2 1) = 9/360
# after the unseen history (3, 3) every level backs off fully: the trigram model gives p1'.
TOY = np.array([1, 2, 1, 2, 1, 0], dtype=np.uint16)
EXPECTED = {
    ("unigram", (0, 0)): [F(11, 72), F(35, 72), F(23, 72), F(3, 72)],
    ("bigram", (0, 1)): [F(13, 48), F(5, 48), F(29, 48), F(1, 48)],
    ("trigram", (2, 1)): [F(113, 360), F(45, 360), F(193, 360), F(9, 360)],
    ("trigram", (3, 3)): [F(7, 32), F(15, 32), F(7, 32), F(3, 32)],
}


def distribution(model: ngram.KneserNey, history: tuple[int, int]) -> np.ndarray:
    """p(w | history) for every w of the vocabulary -> (V,)."""
    V = model.vocab_size
    return model.prob(np.array([[*history, w] for w in range(V)], dtype=np.int64))


@pytest.mark.parametrize("name, history", list(EXPECTED))
def test_kneser_ney_matches_the_hand_computed_toy(name, history):
    models = ngram.fit(TOY, 4, eot=0)
    expected = [float(p) for p in EXPECTED[name, history]]
    assert distribution(models[name], history) == pytest.approx(expected, abs=1e-12)


def test_discounts_match_the_count_of_counts():
    models = ngram.fit(TOY, 4, eot=0)
    expected = {"unigram": [1 / 3], "bigram": [1 / 2, 1 / 3], "trigram": [1 / 2, 3 / 5, 2 / 3]}
    for name, model in models.items():
        assert [level.discount for level in model.levels] == pytest.approx(expected[name]), name


def markov_stream(vocab: int, n: int, seed: int) -> np.ndarray:
    """A random stream (n,) with structure: each token mostly follows from the one before."""
    rng = np.random.default_rng(seed)
    nxt = rng.integers(0, vocab, size=(vocab, 2))
    out = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        out[i] = nxt[out[i - 1], rng.integers(0, 2)] if rng.random() < 0.8 else rng.integers(0, vocab)
    return out


def test_every_history_sums_to_one():
    V = 7
    tokens = markov_stream(V - 1, 300, seed=0)  # token V - 1 never occurs: histories with it are unseen
    models = ngram.fit(tokens, V, eot=0)
    for history in itertools.product(range(V), repeat=2):
        for name, model in models.items():
            p = distribution(model, history)
            assert (p > 0).all() and abs(p.sum() - 1.0) < 1e-9, (name, history)


@pytest.fixture(scope="module")
def tiny_tokens(tiny_corpus, tmp_path_factory):
    return prepare_tokens(str(tiny_corpus), 300, str(tmp_path_factory.mktemp("cache")))


def test_higher_orders_never_lose_on_their_training_text(tiny_tokens):
    tokenizer, tokens = tiny_tokens
    for stream, vocab in [(tokens["train"], 300), (markov_stream(50, 5000, seed=1), 50)]:
        losses = ngram.score(ngram.fit(stream, vocab, eot=0), stream, np.ones(vocab, dtype=np.int64), eot=0)
        assert losses["trigram"]["loss"] <= losses["bigram"]["loss"] <= losses["unigram"]["loss"]


def test_baselines_are_fitted_once_per_token_files(tiny_tokens, monkeypatch):
    tokenizer, tokens = tiny_tokens
    calls = []
    fit = ngram.fit
    monkeypatch.setattr(ngram, "fit", lambda *args: calls.append(1) or fit(*args))
    first = ngram.cached_baselines(tokens, tokenizer)
    second = ngram.cached_baselines(tokens, tokenizer)
    assert len(calls) == 1 and first == second
    assert ngram.cache_path(tokens["train"]).is_file()
    assert first["validation_tokens"] == len(tokens["validation"])
    assert first["trigram"]["loss"] < first["bigram"]["loss"] < first["unigram"]["loss"]
    assert 0 < first["trigram"]["bpb"] < first["trigram"]["loss"]  # several bytes per token


def run(corpus, out, **extra):
    from train.config import load_config
    from train.run import pretrain

    return pretrain(load_config(None, tiny_train_overrides(corpus, out, **{"train.num_samples": 0, **extra})))


def test_a_run_logs_the_baselines_and_warns_once_when_above_unigram(tiny_corpus, tmp_path, capsys):
    good = run(tiny_corpus, tmp_path, **{"train.max_steps": 40, "train.val_every": 20, "train.lr": 2e-2,
                                         "train.batch_size": 8})
    out = capsys.readouterr()
    rows = list(csv.DictReader((good / "metrics.csv").open()))
    val_rows = [r for r in rows if r.get("val/loss")]
    assert len(val_rows) == 2
    for row in val_rows:
        assert float(row["baseline/trigram"]) < float(row["baseline/bigram"]) < float(row["baseline/unigram"])
    assert "val loss " in out.out and " nats (trigram KN " in out.out
    assert "above the unigram" not in out.err

    run(tiny_corpus, tmp_path, **{"train.max_steps": 16, "train.val_every": 4, "train.lr": 1e-7, "train.name": "bad"})
    assert capsys.readouterr().err.count("above the unigram baseline") == 1


def test_the_switch_turns_the_baselines_off(tiny_corpus, tmp_path, capsys):
    run_dir = run(tiny_corpus, tmp_path, **{"data.ngram_baselines": False, "train.max_steps": 2, "train.val_every": 2})
    assert "baseline/unigram" not in (run_dir / "metrics.csv").read_text()
    assert " nats (trigram KN " not in capsys.readouterr().out
