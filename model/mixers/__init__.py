"""Token mixers, by name (`model.mixer`). Contract: `mixer(x, cache=None) -> (y, cache)`, x and y (B, T, D);
`mixer.init_cache(batch_size, device, dtype)` gives the empty state that incremental decoding starts from."""

from model.mixers.softmax import SoftmaxAttention

MIXERS = {"softmax": SoftmaxAttention}
