"""Feed-forward layers, by name (`model.ffn`). Contract (model/component.py `FFN`): `ffn(x) -> y`, x and y
(B, T, D); an FFN with an auxiliary loss (MoE) leaves it in `ffn.aux_loss` after each forward. `none` means no FFN
in the block; `auto` means DEFAULT_FFN, or none after a mixer that replaces the FFN."""

from model.ffn.gelu import GELUFFN
from model.ffn.moe import MoE
from model.ffn.registry import FFNS
from model.ffn.swiglu import SwiGLU

FFNS.update({"swiglu": SwiGLU, "gelu": GELUFFN, "moe": MoE})
DEFAULT_FFN = "swiglu"
