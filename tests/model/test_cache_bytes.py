"""Every registered mixer's `cache_bytes` (model/component.py) equals the bytes of the cache its forward returns
after decoding a prompt, single tokens and a chunk through a tiny Transformer, in fp32 and bf16; MLA's cache is its
latent; `train.estimate` reports the decoding cache."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config

from model.mixers import MIXERS
from model.transformer import Transformer
from train.config import load_config
from train.estimate.breakdown import decode_cache_bytes, main

PIECES = [5, 1, 3, 1, 1]  # a prompt, one token, a chunk, two tokens: 11 tokens
# options beyond the defaults that change what the cache keeps: a window and chunks shorter than PIECES
OPTIONS = {"sliding": {"window": 4}, "gau": {"form": "chunked", "chunk_size": 4}}
CASES = [(name, {}) for name in MIXERS] + list(OPTIONS.items())


def tensor_bytes(cache) -> int:
    """Bytes of the tensors of a cache (a tensor or a tuple of them)."""
    tensors = [cache] if isinstance(cache, torch.Tensor) else cache
    return sum(t.nelement() * t.element_size() for t in tensors)


def assert_caches_are_declared(cfg, dtype=torch.float32) -> None:
    """After each piece of PIECES, the caches of a Transformer of `cfg` hold what its layers' mixers declare."""
    torch.manual_seed(0)
    model = Transformer(cfg).eval().to(dtype)
    B, s = 2, torch.finfo(dtype).bits // 8
    idx, state, done = torch.randint(0, cfg.vocab_size, (B, sum(PIECES))), model.init_state(B), 0
    with torch.no_grad():
        for size in PIECES:
            _, state = model(idx[:, done:done + size], state)
            done += size
            for mixer, cache in zip(cfg.layer_mixers(), state.layers):
                assert tensor_bytes(cache) == B * MIXERS[mixer].cache_bytes(cfg, done, s), (mixer, done)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{'-' + '-'.join(map(str, o.values())) if o else ''}"
                                                      for n, o in CASES])
def test_declared_cache_bytes_are_the_returned_caches(name, options, dtype):
    cfg = tiny_model_config(mixer=name, n_kv_heads=2, **{name: MIXERS[name].section(**options)} if options else {})
    assert_caches_are_declared(cfg, dtype)


def test_mla_caches_its_latent_smaller_than_full_attentions_keys_and_values():
    cfg = tiny_model_config(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4)
    d_c, _, d_r = MIXERS["mla"].dims(cfg)
    assert MIXERS["mla"].cache_bytes(cfg, 1, 2) == 2 * (d_c + d_r)  # the latent and the shared rope key
    assert MIXERS["mla"].cache_bytes(cfg, 1, 2) < MIXERS["softmax"].cache_bytes(cfg, 1, 2) / 1.5


def test_the_estimate_reports_the_decoding_cache(capsys):
    main(["--model.mixer=mla", "--model.d_model=128", "--model.n_layers=4", "--model.n_heads=4",
          "--model.n_kv_heads=2", "--data.seq_len=256"])
    out = capsys.readouterr().out
    cfg = load_config(None, {"model": {"mixer": "mla", "d_model": 128, "n_layers": 4, "n_heads": 4,
                                       "n_kv_heads": 2}, "data": {"seq_len": 256}}).model
    per_token = decode_cache_bytes(cfg, 1, 4)  # 4 layers x (d_c + d_r) fp32 values
    assert per_token == 4 * 4 * (128 + 16)
    assert f"decoding cache (fp32): {per_token:,.0f} B per token" in out
