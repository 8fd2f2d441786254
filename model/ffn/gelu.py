"""GELU feed-forward (`model.ffn=gelu`), the GPT-2 MLP.

Vaswani et al. 2017 with the GELU of Hendrycks & Gimpel 2016 (arXiv:1606.08415):
    FFN(x) = W_down GELU(W_up x)
Shapes: x (B, T, D) -> h (B, T, F) -> y (B, T, D); F defaults to 4D.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig


class GELUFFN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_model, hidden = cfg.d_model, cfg.ffn_hidden("gelu")
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))
