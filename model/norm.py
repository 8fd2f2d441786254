"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467).

    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g,   x (..., D), g (D,)
Computed in fp32 and cast back, as Hugging Face Llama does, so bf16 runs match fp32 closely. Under autocast
the output is cast once to the autocast dtype: the projections that read it (q, k, v; gate, up) would each cast
and keep their own copy for backward otherwise (same numbers, less activation memory).
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
        out = self.weight * h.to(x.dtype)
        if torch.is_autocast_enabled(out.device.type):
            out = out.to(torch.get_autocast_dtype(out.device.type))
        return out
