"""RetNet retention: chunkwise form vs the recurrent loop and the parallel masked matrix, causality, cached
decoding, a tiny Transformer that generates, gradients, and the activation estimate vs a measured forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_decodes_like_full_forward,
    assert_mixer_is_causal,
    decode_in_pieces,
    saved_activation_bytes,
    tiny_model_config,
)
from torch.testing import assert_close

from model.config import ModelConfig
from model.mixers import MIXERS
from model.mixers.retnet import EPS, RetNet, RetNetConfig, decays
from model.positions import POSITIONS
from model.transformer import Transformer
from train.estimate.breakdown import layer_bytes

TOL = dict(rtol=1e-5, atol=1e-5)


def make(chunk_size=8, position="rope", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, max_seq_len=64, position=position)
    cfg.retnet = RetNetConfig(chunk_size=chunk_size)  # the section is composed in once "retnet" is registered
    m = RetNet(cfg, POSITIONS[position](cfg.d_model)).eval()
    with torch.no_grad():
        m.norm_weight.uniform_(0.5, 1.5)  # not all ones, so the per-head scales are exercised
    return m


def qkv(m: RetNet, x):
    B, T, _ = x.shape
    H, d = m.n_heads, m.head_dim
    q = m.q_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    k = m.k_proj(x).view(B, T, H, d).transpose(1, 2) * d ** -0.5
    v = m.v_proj(x).view(B, T, H, d).transpose(1, 2)
    q, k = m.position.rotate(q, k, 0)
    return q, k, v


def output(m: RetNet, x, o):
    """y = W_o (swish(X W_g) ⊙ RMSNorm_h(o)), o (B, H, T, d), written out by hand."""
    B, H, T, d = o.shape
    o = o.transpose(1, 2)  # (B, T, H, d)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + EPS) * m.norm_weight
    return m.o_proj(F.silu(m.g_proj(x)) * o.reshape(B, T, H * d))


def recurrent_reference(m: RetNet, x):
    """S_t = gamma S_{t-1} + k_t^T v_t, o_t = q_t S_t, one token at a time."""
    q, k, v = qkv(m, x)
    B, H, T, d = q.shape
    gamma = decays(H)[None, :, None, None]  # (1, H, 1, 1)
    S, os = torch.zeros(B, H, d, d), []
    for t in range(T):
        S = gamma * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        os.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], S))
    return output(m, x, torch.stack(os, dim=2))


def parallel_reference(m: RetNet, x):
    """(Q K^T ⊙ D) V with D_nm = gamma^(n-m) for n >= m, else 0."""
    q, k, v = qkv(m, x)
    T = q.shape[2]
    n = torch.arange(T, dtype=torch.float32)
    lag = n[:, None] - n[None, :]
    D = torch.where(lag >= 0, decays(m.n_heads)[:, None, None] ** lag.clamp(min=0), 0.0)  # (H, T, T)
    return output(m, x, ((q @ k.transpose(-1, -2)) * D) @ v)



def test_decays_are_the_papers():
    assert_close(decays(4), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]))


@pytest.mark.parametrize("position", ["rope", "none"])
@pytest.mark.parametrize("chunk_size", [1, 5, 8, 21, 64])  # 21 tokens: not a multiple of 5 or 8; one chunk; C > T
def test_chunked_equals_recurrent_equals_parallel(chunk_size, position):
    m = make(chunk_size, position)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        want = parallel_reference(m, x)
        assert_close(recurrent_reference(m, x), want, **TOL)
        assert_close(m(x)[0], want, **TOL)


def test_causal():
    assert_mixer_is_causal(make(chunk_size=8), 32, TOL["atol"])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [1] * 21, [13, 8]])
def test_cached_decoding_equals_full_forward(sizes):
    m = make(chunk_size=8)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, S = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    assert S.dtype == torch.float32 and S.shape == (2, 4, 8, 8)
    # the final state is the recurrence's: sum_t gamma^(T-1-t) k_t^T v_t
    q, k, v = qkv(m, x)
    w = decays(4)[:, None] ** torch.arange(20, -1, -1, dtype=torch.float32)  # (H, T)
    assert_close(S, torch.einsum("bhtd,ht,bhte->bhde", k, w, v).detach(), **TOL)


def test_bf16_autocast_keeps_fp32_state():
    m = make()
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, S = m(x, m.init_cache(1, x.device, torch.bfloat16))
    assert S.dtype == torch.float32 and torch.isfinite(y).all()
    assert_close(y.float(), m(x)[0], rtol=0.05, atol=0.05)


def test_every_parameter_gets_a_gradient():
    m = make().train()
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "retnet", RetNet)  # as its line in model/mixers/__init__.py does


def test_tiny_transformer_decodes_and_generates(registered):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="retnet", retnet=RetNetConfig(chunk_size=4))
    model = Transformer(cfg).eval()
    assert model.layers[0].mixer.norm_weight.eq(1).all()
    assert {"q_proj", "k_proj", "v_proj", "g_proj", "o_proj"} <= set(model.lora_targets())
    assert any(p is model.layers[0].mixer.norm_weight for p in model.no_decay_parameters())
    assert_decodes_like_full_forward(model, cfg.vocab_size, TOL["atol"])


@pytest.mark.parametrize("chunk_size,d_model,vocab", [(16, 32, 97), (64, 32, 97), (64, 64, 200)])
def test_activation_estimate_matches_a_measured_forward(registered, chunk_size, d_model, vocab):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="retnet", n_layers=1, d_model=d_model, vocab_size=vocab, max_seq_len=32,
                            retnet=RetNetConfig(chunk_size=chunk_size))
    model = Transformer(cfg)
    measured = saved_activation_bytes(model, 2, 32) - saved_activation_bytes(model, 1, 32)
    kept = 4 * cfg.d_model + 4 * cfg.d_model + 4 * cfg.vocab_size  # the final norm, head input, fp32 log-softmax
    estimated = 32 * (layer_bytes(cfg, "retnet", cfg.layer_ffn("retnet"), 32, "32") + kept)
    assert estimated == pytest.approx(measured, rel=0.1), estimated / measured
