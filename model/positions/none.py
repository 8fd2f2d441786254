"""No explicit positions (`model.position=none`): causal masking alone carries order (NoPE, Kazemnejad et al. 2023,
"The Impact of Positional Encoding on Length Generalization in Transformers", arXiv:2305.19466). Every hook is the
identity: h (B, T, D), q (B, H, T, d) and k (B, Hk, T, d) pass unchanged, and no score bias is added.
"""

from __future__ import annotations

from model.component import Position


class NoPosition(Position):
    contributes = ()

    def __init__(self, d_model: int = 0, theta: float = 10000.0):
        """RoPE's arguments, unused, so the parameter-free positions are built alike (`POSITIONS[name](d_model)`)."""
        super().__init__()
