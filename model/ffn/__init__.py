"""Feed-forward layers, by name (`model.ffn`). Contract: `ffn(x) -> y`, x and y (B, T, D); an FFN with an
auxiliary loss (MoE) leaves it in `ffn.aux_loss` after each forward. `none` means no FFN in the block."""

from model.ffn.gelu import GELUFFN
from model.ffn.moe import MoE
from model.ffn.swiglu import SwiGLU

FFNS = {"swiglu": SwiGLU, "gelu": GELUFFN, "moe": MoE}
