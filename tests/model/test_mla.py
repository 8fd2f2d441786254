"""Multi-head latent attention (`model.mixer=mla`): the paper's equations written out head by head (with and without
query compression, values and gradients), the absorbed form computed from the cached latent alone, causality,
cached decoding (fp64) == full forward, a cache holding only c^KV and k^R ((d_c + d_r) values per token and layer,
fewer than grouped-query attention's keys and values at the default config), any model position, the options, the
activation estimate with query compression and in bf16."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    assert_decodes_like_full_forward,
    assert_mixer_is_causal,
    decode_in_pieces,
    saved_activation_bytes,
    tiny_model_config,
)

from model.config import ModelConfig
from model.mixers import MIXERS
from model.mixers.mla import MLAConfig, MultiHeadLatentAttention
from model.mixers.softmax import SoftmaxAttention
from model.positions import RotaryPosition
from model.transformer import Transformer
from train.estimate.breakdown import head_bytes, layer_bytes


def mla(dtype=torch.float32, **options) -> MultiHeadLatentAttention:
    torch.manual_seed(0)
    cfg = tiny_model_config(mla=MLAConfig(**options))
    return MultiHeadLatentAttention(cfg, None).to(dtype).eval()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "mla", MultiHeadLatentAttention)  # as its line in model/mixers/__init__.py does


def rms(x: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def reference(attn: MultiHeadLatentAttention, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2 eq. 9-19, one head at a time with the weights split as the paper names them; returns the output
    and the same output by the absorbed form (scores q^C W^UK . c^KV, values read as c^KV, W^UV after the sum)."""
    B, T, _ = h.shape
    H, d, d_r = attn.n_heads, attn.head_dim, attn.rope_dim
    rope = RotaryPosition(h.shape[-1])
    c_kv = rms(h @ attn.kv_down.weight.T, attn.kv_norm.weight)  # (B, T, d_c)
    k_r = rope.rotate(h @ attn.k_rope.weight.T, h @ attn.k_rope.weight.T)[1]  # (B, T, d_r)
    c_q = h if isinstance(attn.q_down, torch.nn.Identity) else rms(h @ attn.q_down[0].weight.T, attn.q_down[1].weight)
    W_q = attn.q_proj.weight.view(H, d + d_r, -1)  # per head: rows of W^UQ, then of W^QR
    W_uk, W_uv = attn.k_up.weight.view(H, d, -1), attn.v_up.weight.view(H, d, -1)  # (H, d, d_c)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads, absorbed = [], []
    for i in range(H):
        q_c, q_r = c_q @ W_q[i, :d].T, rope.rotate(c_q @ W_q[i, d:].T, c_q @ W_q[i, d:].T)[0]  # (B, T, d), (B, T, d_r)
        k_c, v_c = c_kv @ W_uk[i].T, c_kv @ W_uv[i].T  # (B, T, d)
        scores = (torch.cat([q_c, q_r], -1) @ torch.cat([k_c, k_r], -1).transpose(1, 2)) / math.sqrt(d + d_r)
        a = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # (B, T, T)
        heads.append(a @ v_c)
        lat = ((q_c @ W_uk[i]) @ c_kv.transpose(1, 2) + q_r @ k_r.transpose(1, 2)) / math.sqrt(d + d_r)
        absorbed.append((lat.masked_fill(~causal, float("-inf")).softmax(-1) @ c_kv) @ W_uv[i].T)
    return tuple(torch.cat(o, -1) @ attn.o_proj.weight.T for o in (heads, absorbed))  # (B, T, D) each


@pytest.mark.parametrize("options", [{}, {"q_rank": 12}, {"kv_rank": 10, "rope_dim": 2}])
def test_equals_the_papers_equations_and_their_absorbed_form(options):
    attn = mla(torch.float64, **options).train()
    x = torch.randn(2, 10, 32, dtype=torch.float64, requires_grad=True)
    y = attn(x)[0]
    ref, absorbed = reference(attn, x)
    tol = dict(atol=1e-6, rtol=1e-5)  # fp64, but model/norm.py's RMSNorm computes in fp32 whatever the input
    torch.testing.assert_close(y, ref, **tol)
    torch.testing.assert_close(absorbed, ref)
    w = torch.randn_like(y)
    names = ["x", *(n for n, _ in attn.named_parameters())]
    grads = torch.autograd.grad((y * w).sum(), [x, *attn.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [x, *attn.parameters()])
    for name, g, r in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, r, **tol, msg=f"gradient of {name}")
        assert g.abs().sum() > 0, name


def test_causal():
    assert_mixer_is_causal(mla(), 32)
    assert_mixer_is_causal(mla(q_rank=12), 32)


@pytest.mark.parametrize("options", [{}, {"q_rank": 12}])
def test_cached_decoding_equals_full_forward_in_fp64_and_the_cache_is_the_latent(options):
    attn = mla(torch.float64, **options)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    with torch.no_grad():
        full, _ = attn(x)
        pieces, (c_kv, k_r) = decode_in_pieces(attn, x, [7, 1, 1, 8, 3])  # prefill, steps, a chunk, a short chunk
    torch.testing.assert_close(pieces, full, atol=1e-12, rtol=1e-12)
    assert c_kv.shape == (2, 20, 32) and k_r.shape == (2, 20, 4)  # d_c = 4 d_h, d_r = d_h / 2 (d_h = 8)
    c_ref, k_ref = attn.kv_norm(attn.kv_down(x)), attn.k_rope(x)
    torch.testing.assert_close(c_kv, c_ref)
    torch.testing.assert_close(k_r[:, 0], k_ref[:, 0])  # position 0 is not rotated


def cache_bytes(mixer, cfg) -> float:
    """Bytes per token of the cache a mixer holds after decoding 8 tokens in bf16."""
    x = torch.randn(1, 8, cfg.d_model, dtype=torch.bfloat16)
    with torch.no_grad():
        _, cache = decode_in_pieces(mixer.to(torch.bfloat16), x, [5, 1, 2])
    return sum(t.numel() * t.element_size() for t in cache) / 8


def test_the_cache_is_smaller_than_grouped_query_attentions_at_the_default_config():
    cfg = ModelConfig(vocab_size=64)
    cfg.mla = MLAConfig()
    d_c, _, d_r = MultiHeadLatentAttention.dims(cfg)
    latent = cache_bytes(MultiHeadLatentAttention(cfg, None), cfg)
    gqa = cache_bytes(SoftmaxAttention(cfg, RotaryPosition(cfg.d_model)), cfg)
    assert latent == MultiHeadLatentAttention.cache_bytes(cfg, 8, 2) / 8 == (d_c + d_r) * 2
    assert gqa == 2 * cfg.kv_heads * cfg.head_dim * 2
    print(f"cache bytes per token and layer (bf16, d_model={cfg.d_model}, n_heads={cfg.n_heads}): "
          f"mla {latent:.0f} (d_c={d_c}, d_r={d_r}), softmax {gqa:.0f}")
    assert latent < gqa


@pytest.mark.parametrize("position", ["rope", "none", "sinusoidal"])
def test_a_transformer_decodes_like_its_full_forward_whatever_the_position(registered, position):
    torch.manual_seed(0)
    net = Transformer(tiny_model_config(mixer=["mla", "softmax"], position=position, mla=MLAConfig(q_rank=12))).eval()
    assert_decodes_like_full_forward(net, 97)
    assert {"q_proj", "kv_down", "k_up", "v_up", "o_proj"} <= set(net.lora_targets())
    net.train()
    net(torch.randint(0, 97, (2, 16)))[0].logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_options_and_flops():
    with pytest.raises(ValueError, match="rope_dim=3 must be even"):
        MLAConfig(rope_dim=3)
    cfg = tiny_model_config(mla=MLAConfig(kv_rank=24, q_rank=16, rope_dim=6))
    assert MultiHeadLatentAttention.dims(cfg) == (24, 16, 6)
    assert MultiHeadLatentAttention.flops_per_token(cfg, 32) == 6 * 4 * 32 * (2 * 8 + 6)
    assert sum(p.numel() for p in MultiHeadLatentAttention(cfg, None).parameters()) == (
        32 * 24 + 24 + 32 * 6 + 2 * 24 * 32 + 32 * 16 + 16 + 16 * 4 * (8 + 6) + 32 * 32)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_estimate_with_query_compression(registered, precision):
    """The registry-wide estimate test runs fp32 without query compression."""
    torch.manual_seed(0)
    T = 32
    cfg = tiny_model_config(mixer="mla", mla=MLAConfig(q_rank=24), vocab_size=200, d_model=64, max_seq_len=T)
    net = Transformer(cfg)
    measured = saved_activation_bytes(net, 2, T, precision) - saved_activation_bytes(net, 1, T, precision)
    layers = sum(layer_bytes(cfg, m, cfg.layer_ffn(m), T, precision) for m in cfg.layer_mixers())
    assert T * (layers + head_bytes(cfg, precision)[0]) == pytest.approx(measured, rel=0.1)
