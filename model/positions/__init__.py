"""Positions, by name (`model.position`). Contract (model/component.py `Position`): a position declares what it
`contributes`, the hooks it overrides, so neither the model nor a mixer branches on its kind:

    embed(h, offset)                          added to the token embeddings h (B, T, D): sinusoidal, learned
    rotate(q, k, offset)                      applied by a mixer to q (B, H, T, d) and k (B, Hk, T, d): rope
    score_bias(n_heads, q_pos, k_pos, dtype)  added by a mixer to its scores (..., H, T_q, T_k): alibi, t5

`offset` is the absolute position of the first of the T tokens (the cache length when decoding); q_pos and k_pos
are the absolute positions of the queries and keys. `build(cfg)` makes the model's one position; its section, if
any, is `model.<name>` (t5, learned). A mixer that does not apply a score bias refuses alibi and t5 at config time.
"""

from model.component import Position, Registry, position_contract
from model.positions.alibi import ALiBi
from model.positions.learned import LearnedPosition
from model.positions.none import NoPosition
from model.positions.rope import RotaryPosition
from model.positions.sinusoidal import SinusoidalPosition
from model.positions.t5 import T5Bias

__all__ = ["POSITIONS", "ALiBi", "LearnedPosition", "NoPosition", "Position", "RotaryPosition", "SinusoidalPosition",
           "T5Bias"]

POSITIONS = Registry("position", position_contract, {"rope": RotaryPosition, "sinusoidal": SinusoidalPosition,
                                                     "none": NoPosition, "alibi": ALiBi, "t5": T5Bias,
                                                     "learned": LearnedPosition})
