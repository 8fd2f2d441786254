"""N-gram baselines: unigram, bigram and trigram models with interpolated Kneser-Ney smoothing, fitted on a run's
training tokens and scored on its validation tokens (same split, same tokenizer): the losses any LM should beat.

Chen and Goodman (1998, "An Empirical Study of Smoothing Techniques for Language Modeling", TR-10-98, section 2.7,
interpolated form, one discount per order). For a token w after history h (n - 1 tokens) whose suffix h' drops
the oldest token, the order-n level of a model is

    p_n(w | h) = max(c_n(h w) - D_n, 0) / c_n(h .)  +  D_n N1+(h .) / c_n(h .) * p_{n-1}(w | h')    if c_n(h .) > 0
    p_n(w | h) = p_{n-1}(w | h')                                                                  otherwise
    p_0(w)     = 1 / V                                     (uniform: a token never seen in training keeps p > 0)

with c_n(h .) = sum_w c_n(h w), N1+(h .) = #{w : c_n(h w) > 0} and D_n = n1 / (n1 + 2 n2), n_k the number of
order-n entries with c_n = k (D_n = 0.5 when n1 = 0, a toy corpus). At a model's top order c_n is the raw count;
at each lower order it is the continuation count N1+(. h w) = #{u : c_{n+1}(u h w) > 0}, the number of distinct
tokens seen before h w (Kneser and Ney 1995), and D_n comes from those counts (as KenLM does). Each level sums to
one over w because D_n <= 1 and every seen entry has c_n >= 1. The models:

    unigram   p_1 on raw counts c(w): absolute discounting interpolated with uniform (KN-style, not add-one)
    bigram    p_2 on raw c(v w), over p_1 on continuation counts N1+(. w)
    trigram   p_3 on raw c(u v w), over p_2 on N1+(. v w), over p_1 on N1+(. w)

Tokens form one stream (stories end with EOT), as the packed training blocks see them; two EOTs before the
stream give its first tokens a history. Every table derives from the trigram counts, which are counted in chunks
of `CHUNK` tokens: packed int64 keys u V^2 + v V + w (V^3 < 2^63), `np.unique` per chunk, merged into the sorted
table, so memory is bounded by the number of distinct trigrams, not the corpus. Scoring looks keys up with
`np.searchsorted`, also in chunks; no Python loop runs per token. The targets are the validation tokens after the
first (a stream of N tokens has N - 1 next-token targets); loss in nats/token, and bits/byte with the run's
accounting (train/module.py: bpb = sum CE / (ln 2 * sum bytes(target)), data/tokenizer.py `token_byte_lengths`).
The run's val/loss scores the first `val_batches * batch_size` blocks of the same split, each block starting
without context; these numbers score the whole split.

`cached_baselines` fits once per (corpus, tokenizer, split): a JSON file beside the token files, keyed by their
name (data/tokens.py), published with a checked sidecar (data/cache.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from data.cache import build_lock, checked, publish, temp_path
from data.tokenizer import eot_id, token_byte_lengths

CHUNK = 1 << 23  # tokens per counting or scoring chunk: a few int64 arrays of this length are alive at once
ORDERS = ("unigram", "bigram", "trigram")


def _groups(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in sorted `keys` (M,) -> (G,)."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)


def _reduce(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys with repeats (M,) and their counts (M,) -> unique keys (G,) and summed counts (G,)."""
    starts = _groups(keys)
    return keys[starts], np.add.reduceat(counts, starts) if len(keys) else counts


class Level:
    """One order of a model: sorted packed keys h * V + w (M,), their counts c_n (M,), and per history h the
    total c_n(h .) and the number of types N1+(h .)."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, vocab_size: int):
        self.keys, self.counts, self.vocab_size = keys, counts.astype(np.float64), vocab_size
        starts = _groups(keys // vocab_size)
        self.histories = keys[starts] // vocab_size  # (H,) sorted
        self.totals = np.add.reduceat(self.counts, starts)  # (H,) c_n(h .)
        self.types = np.diff(np.r_[starts, len(keys)]).astype(np.float64)  # (H,) N1+(h .)
        n1, n2 = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
        self.discount = float(n1 / (n1 + 2 * n2)) if n1 else 0.5

    @staticmethod
    def _find(table: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each query (Q,) in sorted `table`, and whether it is there (Q,)."""
        i = np.minimum(np.searchsorted(table, query), max(len(table) - 1, 0))
        return i, table[i] == query if len(table) else np.zeros(len(query), dtype=bool)

    def prob(self, keys: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p_n(w | h) for packed keys h * V + w (Q,), given p_{n-1}(w | h') (Q,) -> (Q,) float64."""
        i, seen = self._find(self.keys, keys)
        j, known = self._find(self.histories, keys // self.vocab_size)
        count = np.where(seen, self.counts[i], 0.0)
        total = np.where(known, self.totals[j], 1.0)
        back = np.where(known, self.discount * self.types[j] / total, 1.0)
        return np.maximum(count - self.discount, 0.0) / total * known + back * lower


class KneserNey:
    """An interpolated Kneser-Ney model: its levels from order 1 up."""

    def __init__(self, levels: list[Level], vocab_size: int):
        self.levels, self.vocab_size = levels, vocab_size

    def prob(self, grams: np.ndarray) -> np.ndarray:
        """p(w | u v) for rows (u, v, w) of int64 `grams` (Q, 3) -> (Q,); a model of order n reads the last n."""
        p = np.full(len(grams), 1.0 / self.vocab_size)
        key = np.zeros(len(grams), dtype=np.int64)
        for n, level in enumerate(self.levels, start=1):
            key += grams[:, 3 - n] * self.vocab_size ** (n - 1)
            p = level.prob(key, p)
        return p


def _trigrams(tokens: np.ndarray, start: int, stop: int, eot: int) -> np.ndarray:
    """Rows (u, v, w) (stop - start, 3) int64 for targets tokens[start:stop], history padded with EOT."""
    pad = np.full(2, eot, dtype=np.int64)
    window = np.concatenate([pad, tokens[max(0, start - 2):stop].astype(np.int64)])[-(stop - start) - 2:]
    return np.lib.stride_tricks.sliding_window_view(window, 3)


def count_trigrams(tokens: np.ndarray, vocab_size: int, eot: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted packed trigram keys u V^2 + v V + w (M,) and their counts (M,) over the stream, chunk by chunk."""
    keys, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for start in range(0, len(tokens), CHUNK):
        grams = _trigrams(tokens, start, min(start + CHUNK, len(tokens)), eot)
        chunk, n = np.unique((grams[:, 0] * vocab_size + grams[:, 1]) * vocab_size + grams[:, 2], return_counts=True)
        merged = np.concatenate([keys, chunk])
        order = np.argsort(merged, kind="stable")  # two sorted runs: timsort merges them in linear time
        keys, counts = _reduce(merged[order], np.concatenate([counts, n])[order])
    return keys, counts


def fit(tokens: np.ndarray, vocab_size: int, eot: int) -> dict[str, KneserNey]:
    """The three models of the module docstring, from the training stream (N,) of ids < vocab_size."""
    if vocab_size ** 3 >= 2**63:
        raise ValueError(f"vocab_size={vocab_size} is too large for packed int64 trigram keys (at most 2,097,151)")
    V = vocab_size
    tri_keys, tri_counts = count_trigrams(tokens, V, eot)
    suffix = tri_keys % (V * V)  # (M,) v V + w
    order = np.argsort(suffix, kind="stable")
    starts = _groups(suffix[order])
    bi_keys = suffix[order][starts]  # (B,) sorted bigram types
    bi_counts = np.add.reduceat(tri_counts[order], starts)  # c(v w)
    bi_cont = np.diff(np.r_[starts, len(order)])  # N1+(. v w)
    uni_counts = np.bincount(bi_keys % V, weights=bi_counts, minlength=V).astype(np.int64)  # c(w)
    uni_cont = np.bincount(bi_keys % V, minlength=V)  # N1+(. w)
    ids = np.arange(V, dtype=np.int64)

    def unigrams(counts: np.ndarray) -> Level:
        return Level(ids[counts > 0], counts[counts > 0], V)

    continuation = unigrams(uni_cont)
    return {"unigram": KneserNey([unigrams(uni_counts)], V),
            "bigram": KneserNey([continuation, Level(bi_keys, bi_counts, V)], V),
            "trigram": KneserNey([continuation, Level(bi_keys, bi_cont, V), Level(tri_keys, tri_counts, V)], V)}


def score(models: dict[str, KneserNey], tokens: np.ndarray, token_bytes: np.ndarray, eot: int) -> dict:
    """{name: {"loss": nats/token, "bpb": bits/byte}} over the targets tokens[1:] of the validation stream (N,)."""
    nats = dict.fromkeys(models, 0.0)
    n_bytes = 0
    for start in range(1, len(tokens), CHUNK):
        grams = _trigrams(tokens, start, min(start + CHUNK, len(tokens)), eot)  # (Q, 3)
        n_bytes += int(token_bytes[grams[:, 2]].sum())
        for name, model in models.items():
            nats[name] -= float(np.log(model.prob(grams)).sum())
    n = max(len(tokens) - 1, 1)
    return {name: {"loss": s / n, "bpb": s / (math.log(2) * max(n_bytes, 1))} for name, s in nats.items()}


def baselines(tokens: dict[str, np.ndarray], tokenizer) -> dict:
    """Fit on tokens["train"], score on tokens["validation"] -> the JSON `cached_baselines` stores."""
    start, eot, vocab = time.time(), eot_id(tokenizer), tokenizer.get_vocab_size()
    models = fit(tokens["train"], vocab, eot)
    results = score(models, tokens["validation"], np.asarray(token_byte_lengths(tokenizer)), eot)
    return {**results, "smoothing": "interpolated Kneser-Ney, one discount per order; unigram: absolute "
                                    "discounting interpolated with uniform 1/V",
            "discounts": {name: [level.discount for level in m.levels] for name, m in models.items()},
            "train_tokens": len(tokens["train"]), "validation_tokens": len(tokens["validation"]),
            "seconds": round(time.time() - start, 2)}


def cache_path(train: np.memmap) -> Path:
    """The baselines' file beside the training token file (data/tokens.py): <stem>.ngram.json."""
    path = Path(train.filename)
    return path.with_name(path.name.removesuffix(".train.bin") + ".ngram.json")


def cached_baselines(tokens: dict[str, np.ndarray], tokenizer) -> dict:
    """`baselines`, fitted once per token files (one process fits, others wait for its file) and then read."""
    path = cache_path(tokens["train"])
    with build_lock(path.parent, path.name):
        if checked(path) is None:
            print(f"fitting n-gram baselines on {len(tokens['train']):,} training tokens ...", file=sys.stderr)
            tmp = temp_path(path)
            tmp.write_text(json.dumps(baselines(tokens, tokenizer), indent=1))
            publish(tmp, path)
        return json.loads(path.read_text())


def summary(val_loss: float, results: dict) -> str:
    """One line: 'val loss 3.15 nats (trigram KN 3.62, bigram 4.05, unigram 5.61)'."""
    return (f"val loss {val_loss:.2f} nats (trigram KN {results['trigram']['loss']:.2f}, "
            f"bigram {results['bigram']['loss']:.2f}, unigram {results['unigram']['loss']:.2f})")
