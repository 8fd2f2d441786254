"""Position information, chosen by `model.position`.

Every position object has the same two hooks, so neither the model nor a mixer branches on its kind:
- `embed(h, offset)`: added to the token embeddings h (B, T, D) by the model (sinusoidal adds, others pass).
- `rotate(q, k, offset)`: applied by a mixer to queries (B, H, T, d) and keys (B, Hk, T, d) (RoPE rotates).
`offset` is the absolute position of the first of the T tokens (the cache length when decoding).

RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864): for position m and frequency
theta_i = base^(-2i/d), rotate each pair (x_i, x_{i+d/2}) by the angle m * theta_i:
    rope(x)_m = x_m * cos(m theta) + rotate_half(x_m) * sin(m theta),  rotate_half(x) = [-x2, x1]
so that <rope(q)_m, rope(k)_n> depends only on m - n. We rotate halves, as Hugging Face Llama does,
so weights copy across without a permutation.

Sinusoidal (Vaswani et al. 2017, "Attention Is All You Need", §3.4-3.5), base = model.rope_theta (10000):
    PE(m, 2i) = sin(m / base^(2i/D)),  PE(m, 2i+1) = cos(m / base^(2i/D)),   h_0 = sqrt(D) * E[idx] + PE
The token embeddings are multiplied by sqrt(D) as in the paper (§3.4): PE's entries are of order 1 while E is
initialised at std init_std (0.02), so without it the positions drown the tokens (the model then sits at the
unigram plateau). The tied head reads E unscaled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.component import Registry


class NoPosition(nn.Module):
    """No explicit positions: causal masking alone carries order (NoPE, Kazemnejad et al. 2023). The base of
    every position: `embed` and `rotate` are the identity unless a subclass overrides them."""

    llama_module = None  # Hugging Face Llama's own position (RoPE) declares its name there
    max_positions: int | None = None  # the largest position it can place (a learned table's size); None: any

    def __init__(self, d_model: int, theta: float = 10000.0):
        super().__init__()

    def embed(self, h: Tensor, offset: int = 0) -> Tensor:
        return h

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        return q, k


class RotaryPosition(NoPosition):
    """Rotary embeddings applied to q and k of any (even) head dimension; computed on the fly."""

    llama_module = "rotary_emb"  # rotate_half, as Hugging Face Llama: weights copy across

    def __init__(self, d_model: int, theta: float = 10000.0):
        super().__init__(d_model, theta)
        self.theta = theta

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


class SinusoidalPosition(NoPosition):
    """Fixed sin/cos absolute positions added to the sqrt(D)-scaled token embeddings."""

    def __init__(self, d_model: int, theta: float = 10000.0):
        super().__init__(d_model, theta)
        self.d_model, self.theta = d_model, theta

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


POSITIONS = Registry("position", NoPosition, {"rope": RotaryPosition, "sinusoidal": SinusoidalPosition,
                                              "none": NoPosition})
