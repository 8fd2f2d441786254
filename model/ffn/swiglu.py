"""SwiGLU feed-forward (`model.ffn=swiglu`).

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv:2002.05202), as used by Llama:
    FFN(x) = W_down (SiLU(W_gate x) * W_up x)
Shapes: x (B, T, D) -> gate, up (B, T, F) -> y (B, T, D). F defaults to 8/3 D (rounded up to 32), which
keeps the parameter count of a 4D GELU FFN. Names follow Hugging Face Llama (gate/up/down_proj).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_model, hidden = cfg.d_model, cfg.ffn_hidden("swiglu")
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
