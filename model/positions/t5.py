"""Bucketed relative position bias, learned per head (`model.position=t5`).

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
(arXiv:1910.10683), §2.1: each head h adds a learned scalar b[bucket(i - j), h] to its score q_i . k_j, the scalars
shared by every layer; 32 buckets "with ranges that increase in size logarithmically up to an offset of 128 beyond
which we assign all relative positions to the same embedding". Causal (the decoder's unidirectional buckets), with
n = i - j the distance back to key j, N = `model.t5.num_buckets`, E = N / 2 exact buckets, M = `model.t5.max_distance`:

    bucket(n) = n                                                          0 <= n < E
              = min(N - 1, E + floor(log(n / E) / log(M / E) * (N - E)))   n >= E

(N = 32, M = 128: distances 0..15 each their own bucket, 16..127 sixteen log-spaced ones, 128 and beyond the last;
future keys, masked anyway, get bucket 0, as in Mesh TensorFlow's and Hugging Face's code). T5 leaves q . k unscaled;
here the bias joins the mixer's scaled scores q . k / sqrt(d).

Table b: an nn.Embedding (N, H) of the model's n_heads (init N(0, init_std), not weight-decayed, like embeddings).
Shapes: q_pos (..., T_q), k_pos (..., T_k) -> buckets (..., T_q, T_k) -> bias (..., H', T_q, T_k); a mixer with
H' < H score heads (GAU has one) reads the first H' columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.component import Position
from model.options import Options, option


@dataclass
class T5Config(Options):
    num_buckets: int = option(32, min=2)  # N: half exact distances, half log-spaced up to max_distance (T5: 32)
    max_distance: int = option(128, min=2)  # M: distances from here on share the last bucket (T5: 128)

    def check(self) -> None:
        if self.max_distance <= self.num_buckets // 2:
            raise ValueError(f"max_distance={self.max_distance} must exceed num_buckets / 2 = {self.num_buckets // 2}"
                             ", the exact buckets: the log-spaced ones cover the distances between")


class T5Bias(Position):
    contributes = ("score_bias",)
    section = T5Config

    def __init__(self, n_heads: int, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bias = nn.Embedding(num_buckets, n_heads)  # b (N, H)

    @classmethod
    def build(cls, cfg) -> T5Bias:
        t5 = cls.options(cfg)
        return cls(cfg.n_heads, t5.num_buckets, t5.max_distance)

    def bucket(self, distance: Tensor) -> Tensor:
        """n = i - j (any shape, int) -> bucket(n) (same shape, int64); n < 0 -> 0."""
        N, M = self.num_buckets, self.max_distance
        E = N // 2
        n = distance.clamp(min=0)
        log_spaced = E + (torch.log(n.float().clamp(min=E) / E) / math.log(M / E) * (N - E)).long()
        return torch.where(n < E, n, log_spaced.clamp(max=N - 1))

    def score_bias(self, n_heads: int, q_pos: Tensor, k_pos: Tensor, dtype) -> Tensor:
        if n_heads > self.bias.embedding_dim:
            raise ValueError(f"a mixer with {n_heads} score heads; the T5 bias has {self.bias.embedding_dim}")
        b = self.bias(self.bucket(q_pos[..., :, None] - k_pos[..., None, :]))  # (..., T_q, T_k, H)
        return b[..., :n_heads].movedim(-1, -3).to(dtype)  # (..., H', T_q, T_k)
