"""Token mixers, by name (`model.mixer`). Contract (model/component.py `Mixer`): `mixer(x, cache=None, offset=0)
-> (y, cache)`, x and y (B, T, D); `mixer.init_cache(batch_size, device, dtype)` gives the empty state that
incremental decoding starts from, `offset` the absolute position of x's first token."""

from model.component import Mixer, Registry
from model.mixers.deltanet import DeltaNet
from model.mixers.fox import ForgettingAttention
from model.mixers.gated_deltanet import GatedDeltaNet
from model.mixers.gau import GAU
from model.mixers.gla import GatedLinearAttention
from model.mixers.linear import LinearAttention
from model.mixers.mamba import Mamba
from model.mixers.mamba2 import Mamba2
from model.mixers.mla import MultiHeadLatentAttention
from model.mixers.retnet import RetNet
from model.mixers.rwkv7 import RWKV7
from model.mixers.sliding import SlidingWindowAttention
from model.mixers.softmax import SoftmaxAttention

MIXERS = Registry("mixer", Mixer, {"softmax": SoftmaxAttention, "linear": LinearAttention, "gau": GAU, "mamba": Mamba,
                                   "sliding": SlidingWindowAttention, "retnet": RetNet,
                                   "gla": GatedLinearAttention, "deltanet": DeltaNet, "mamba2": Mamba2,
                                   "gated_deltanet": GatedDeltaNet, "fox": ForgettingAttention,
                                   "mla": MultiHeadLatentAttention,
                                   "rwkv7": RWKV7})
