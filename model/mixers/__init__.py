"""Token mixers, by name (`model.mixer`). Contract: `mixer(x, cache=None) -> (y, cache)`, x and y (B, T, D);
`mixer.init_cache(batch_size, device, dtype)` gives the empty state that incremental decoding starts from."""

from model.mixers.gau import GAU
from model.mixers.linear import LinearAttention
from model.mixers.mamba import Mamba
from model.mixers.softmax import SoftmaxAttention

MIXERS = {"softmax": SoftmaxAttention, "linear": LinearAttention, "gau": GAU, "mamba": Mamba}
