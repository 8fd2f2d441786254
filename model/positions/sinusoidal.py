"""Fixed sinusoidal absolute positions (`model.position=sinusoidal`).

Vaswani et al. 2017, "Attention Is All You Need", §3.4-3.5, base = `model.rope_theta` (10000):

    PE(m, 2i) = sin(m / base^(2i/D)),  PE(m, 2i+1) = cos(m / base^(2i/D)),   h_0 = sqrt(D) * E[idx] + PE

The token embeddings are multiplied by sqrt(D) as in the paper (§3.4): PE's entries are of order 1 while E is
initialised at std init_std (0.02), so without it the positions drown the tokens (the model then sits at the
unigram plateau). The tied head reads E unscaled. Shapes: h (B, T, D) + PE (T, D), rows offset .. offset + T - 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.component import Position


class SinusoidalPosition(Position):
    contributes = ("embed",)

    def __init__(self, d_model: int, theta: float = 10000.0):
        super().__init__()
        self.d_model, self.theta = d_model, theta

    @classmethod
    def build(cls, cfg) -> SinusoidalPosition:
        return cls(cfg.d_model, cfg.rope_theta)

    def table(self, length: int, offset: int, device) -> Tensor:
        """PE rows for positions offset .. offset + length - 1: (length, D) fp32."""
        D = self.d_model
        pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]  # (T, 1)
        freq = self.theta ** (-torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)  # (ceil(D/2),)
        pe = torch.zeros(length, D, device=device, dtype=torch.float32)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: D // 2])
        return pe

    def embed(self, h: Tensor, offset: int = 0) -> Tensor:
        pe = self.table(h.shape[-2], offset, h.device)
        return h * math.sqrt(self.d_model) + pe.to(h.dtype)  # (B, T, D) + (T, D)
