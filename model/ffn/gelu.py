"""GELU feed-forward (`model.ffn=gelu`), the GPT-2 MLP.

Vaswani et al. 2017 with the GELU of Hendrycks & Gimpel 2016 (arXiv:1606.08415):
    FFN(x) = W_down GELU(W_up x)
Shapes: x (B, T, D) -> h (B, T, F) -> y (B, T, D); F defaults to 4D.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from model.component import FFN


class GELUFFN(FFN):
    width_knob = "d_ff"
    lora_targets = ("up_proj", "down_proj")

    def __init__(self, cfg):
        super().__init__()
        d_model, hidden = cfg.d_model, self.hidden_width(cfg)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    @staticmethod
    def hidden_width(cfg) -> int:
        return cfg.d_ff or 4 * cfg.d_model

    @staticmethod
    def activation_bytes(cfg, s: int, mixed: bool) -> float:
        """Its input (D), the hidden pre-activation and its GELU (F each), in the compute dtype."""
        return s * (cfg.d_model + 2 * GELUFFN.hidden_width(cfg))

    def residual_projections(self) -> list[nn.Linear]:
        return [self.down_proj]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))
