"""Rotary position embeddings (`model.position=rope`).

Su et al. 2021, "RoFormer" (arXiv:2104.09864): for position m and frequency theta_i = base^(-2i/d), rotate each
pair (x_i, x_{i+d/2}) by the angle m * theta_i:

    rope(x)_m = x_m * cos(m theta) + rotate_half(x_m) * sin(m theta),  rotate_half(x) = [-x2, x1]

so that <rope(q)_m, rope(k)_n> depends only on m - n. Halves are rotated, as Hugging Face Llama does, so weights
copy across without a permutation. Shapes: q (B, H, T, d), k (B, Hk, T, d), any even d; cos/sin (T, d), computed
on the fly from the absolute position `offset` of the first of the T tokens; base = `model.rope_theta`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.component import Position


class RotaryPosition(Position):
    contributes = ("rotate",)
    llama_module = "rotary_emb"  # rotate_half, as Hugging Face Llama: weights copy across

    def __init__(self, d_model: int, theta: float = 10000.0):
        super().__init__()
        self.theta = theta

    @classmethod
    def build(cls, cfg) -> RotaryPosition:
        return cls(cfg.d_model, cfg.rope_theta)

    def cos_sin(self, length: int, dim: int, offset: int, device, dtype) -> tuple[Tensor, Tensor]:
        inv_freq = self.theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)  # (T, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, d): same angle for x_i and x_{i+d/2}
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate_half(x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        cos, sin = self.cos_sin(q.shape[-2], q.shape[-1], offset, q.device, q.dtype)
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        return q, k
