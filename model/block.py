"""Pre-norm residual block (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"):

    h = x + mixer(norm_1(x))
    y = h + ffn(norm_2(h))          (no FFN when the mixer already is one, e.g. GAU)

Shapes: x (B, T, D) -> y (B, T, D). The mixer and FFN are looked up by name in their registries; the mixer is built
for its layer (`Mixer.build(cfg, position, layer_idx)`, layer_idx 0-based).
"""

from __future__ import annotations

from torch import Tensor, nn

from model.ffn import FFNS
from model.mixers import MIXERS
from model.norm import RMSNorm


class Block(nn.Module):
    def __init__(self, cfg, mixer: str, ffn: str, position, layer_idx: int = 0):
        super().__init__()
        self.norm_1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MIXERS[mixer].build(cfg, position, layer_idx)  # position: the model's hooks (PositionHooks)
        self.norm_2 = RMSNorm(cfg.d_model, cfg.norm_eps) if ffn != "none" else None
        self.ffn = FFNS[ffn](cfg) if ffn != "none" else None
        self.dropout = nn.Dropout(cfg.dropout)

    def components(self) -> list[nn.Module]:
        """The block's registered components (model/component.py): its mixer and its FFN, if any."""
        return [self.mixer] + ([self.ffn] if self.ffn is not None else [])

    def forward(self, x: Tensor, cache=None, offset: int = 0):
        h, cache = self.mixer(self.norm_1(x), cache, offset)
        x = x + self.dropout(h)
        if self.ffn is not None:
            x = x + self.dropout(self.ffn(self.norm_2(x)))
        return x, cache
