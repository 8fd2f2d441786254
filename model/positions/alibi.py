"""Attention with linear biases (`model.position=alibi`).

Press, Smith, Lewis 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation" (arXiv:2108.12409), §3: nothing is added to the embeddings; head h penalises its scores linearly in
the distance to the key,

    softmax(q_i K^T / sqrt(d) + m_h * [-(i - 1), ..., -2, -1, 0]),   i.e. a bias -m_h (i - j) on score (i, j <= i)

with fixed slopes m_h: for n heads, n a power of two, the geometric sequence starting at 2^(-8/n) with that ratio,
m_h = 2^(-8h/n), h = 1..n (8 heads: 1/2, 1/4, ..., 1/256). Other n, by the authors' released code: the 2^a slopes
of the closest power of two below n, then every other slope of 2^(a+1) heads (h = 1, 3, 5, ...) until there are n
(6 heads: 1/4, 1/16, 1/64, 1/256, then 1/2, 1/8).

Shapes: q_pos (..., T_q), k_pos (..., T_k) absolute positions -> bias (..., H, T_q, T_k) in the scores' dtype. The
bias depends only on i - j, so cached decoding and a sliding window see the full forward's penalties.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.component import Position


class ALiBi(Position):
    contributes = ("score_bias",)

    @staticmethod
    def slopes(n_heads: int) -> list[float]:
        """m_1 .. m_n: 2^(-8h/n) for n a power of two, else the closest lower power's and every other of the next."""
        a = 1 << (n_heads.bit_length() - 1)  # the largest power of two <= n
        slopes = [2 ** (-8 * h / a) for h in range(1, a + 1)]
        return slopes + [2 ** (-8 * h / (2 * a)) for h in range(1, 2 * a, 2)][: n_heads - a]

    def score_bias(self, n_heads: int, q_pos: Tensor, k_pos: Tensor, dtype) -> Tensor:
        m = torch.tensor(self.slopes(n_heads), device=q_pos.device, dtype=torch.float32)[:, None, None]  # (H, 1, 1)
        lag = (q_pos[..., :, None] - k_pos[..., None, :]).float()  # (..., T_q, T_k): i - j
        return (-m * lag.unsqueeze(-3)).to(dtype)  # (..., H, T_q, T_k)
