"""SwiGLU feed-forward (`model.ffn=swiglu`).

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv:2002.05202), as used by Llama:
    FFN(x) = W_down (SiLU(W_gate x) * W_up x)
Shapes: x (B, T, D) -> gate, up (B, T, F) -> y (B, T, D). F defaults to 8/3 D (rounded up to 32), which
keeps the parameter count of a 4D GELU FFN. Names follow Hugging Face Llama (gate/up/down_proj).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from model.component import FFN


class SwiGLU(FFN):
    width_knob = "d_ff"
    lora_targets = ("gate_proj", "up_proj", "down_proj")
    llama_module = "mlp"  # gate/up/down_proj are Hugging Face Llama's names

    def __init__(self, cfg):
        super().__init__()
        d_model, hidden = cfg.d_model, self.hidden_width(cfg)
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    @staticmethod
    def hidden_width(cfg) -> int:
        """model.d_ff, else 2/3 of a 4D GELU's width (the same parameters), rounded up to 32."""
        return cfg.d_ff or 32 * ((int(2 * 4 * cfg.d_model / 3) + 31) // 32)

    @staticmethod
    def activation_bytes(cfg, s: int, mixed: bool) -> float:
        """Its input (D), gate and up (F each), SiLU(gate) and the product (F each), in the compute dtype."""
        return s * (cfg.d_model + 4 * SwiGLU.hidden_width(cfg))

    def residual_projections(self) -> list[nn.Linear]:
        return [self.down_proj]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
