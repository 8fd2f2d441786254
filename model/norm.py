"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467).

    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g,   x (..., D), g (D,)
Computed in fp32 and cast back, as Hugging Face Llama does, so bf16 runs match fp32 closely.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)
