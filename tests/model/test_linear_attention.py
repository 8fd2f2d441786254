"""Linear attention: chunked parallel form vs a token-by-token recurrence, causality, cached decoding."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_decodes_like_full_forward, assert_mixer_is_causal, decode_in_pieces
from torch.testing import assert_close

from model.config import ModelConfig
from model.mixers import MIXERS
from model.mixers.linear import EPS, LinearAttention, LinearAttentionConfig
from model.positions import POSITIONS
from model.transformer import Transformer

TOL = dict(rtol=1e-5, atol=1e-5)
OPTIONS = [("elu", True), ("relu", True), ("elu", False), ("relu", False), ("identity", False)]


def make(feature_map="elu", normalize=True, chunk_size=8, position="rope", n_kv_heads=2, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=64, position=position,
                      linear=LinearAttentionConfig(feature_map=feature_map, normalize=normalize, chunk_size=chunk_size))
    return LinearAttention(cfg, POSITIONS[position](cfg.d_model)).eval()


def recurrent_reference(m: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """One token at a time: S += phi(k~_t) v_t^T, z += phi(k_t), y_t = phi(q~_t) S / (phi(q_t) . z + eps);
    ~ marks RoPE-rotated features (numerator), the denominator uses un-rotated ones."""
    B, T, _ = x.shape
    H, Hk, d = m.n_heads, m.n_kv_heads, m.head_dim
    G = H // Hk
    q = m.phi(m.q_proj(x).view(B, T, H, d).transpose(1, 2))  # (B, H, T, d)
    k = m.phi(m.k_proj(x).view(B, T, Hk, d).transpose(1, 2))  # (B, Hk, T, d)
    v = m.v_proj(x).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
    q_rot, k_rot = m.position.rotate(q, k, 0)
    S, z = torch.zeros(B, Hk, d, d), torch.zeros(B, Hk, d)
    ys = []
    for t in range(T):
        S = S + k_rot[:, :, t, :, None] * v[:, :, t, None, :]
        z = z + k[:, :, t]
        y = torch.einsum("bhgd,bhde->bhge", q_rot[:, :, t].view(B, Hk, G, d), S)  # (B, Hk, G, d)
        if m.normalize:
            y = y / (torch.einsum("bhgd,bhd->bhg", q[:, :, t].view(B, Hk, G, d), z)[..., None] + EPS)
        ys.append(y.reshape(B, H, d))
    y = torch.stack(ys, dim=2)  # (B, H, T, d)
    return m.o_proj(y.transpose(1, 2).reshape(B, T, H * d))



@pytest.mark.parametrize("position", ["rope", "none"])
@pytest.mark.parametrize("feature_map,normalize", OPTIONS)
def test_chunked_matches_recurrent_reference(feature_map, normalize, position):
    m = make(feature_map, normalize, position=position)
    x = torch.randn(2, 21, 32)  # 21 = 2 full chunks of 8 + a partial one
    with torch.no_grad():
        assert_close(m(x)[0], recurrent_reference(m, x), **TOL)


@pytest.mark.parametrize("normalize", [True, False])
def test_independent_of_chunk_size(normalize):
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        want = make(normalize=normalize, chunk_size=8)(x)[0]
        for chunk_size in (1, 5, 21, 64):
            assert_close(make(normalize=normalize, chunk_size=chunk_size)(x)[0], want, **TOL)


@pytest.mark.parametrize("feature_map,normalize", OPTIONS)
def test_causal(feature_map, normalize):
    assert_mixer_is_causal(make(feature_map, normalize), 32, TOL['atol'])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [1] * 21])
@pytest.mark.parametrize("feature_map,normalize", [("elu", True), ("relu", False)])
def test_cached_decoding_equals_full_forward(sizes, feature_map, normalize):
    m = make(feature_map, normalize, n_kv_heads=1)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, (S, z) = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    assert S.dtype == z.dtype == torch.float32 and S.shape == (2, 1, 8, 8) and z.shape == (2, 1, 8)


def test_every_parameter_gets_a_gradient():
    m = make().train()
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_keeps_fp32_state():
    m = make()
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (S, z) = m(x, m.init_cache(1, x.device, torch.bfloat16))
    assert S.dtype == torch.float32 and torch.isfinite(y).all()
    assert_close(y.float(), m(x)[0], rtol=0.05, atol=0.05)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="feature_map"):
        make(feature_map="softplus")
    with pytest.raises(ValueError, match="normalize=false"):
        make(feature_map="identity", normalize=True)
    cfg = ModelConfig(d_model=32, n_heads=4, linear=LinearAttentionConfig(backend="fla"))
    try:
        import fla  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="flash-linear-attention"):
            LinearAttention(cfg, POSITIONS["rope"](32))


def test_tiny_transformer_decodes_and_generates():
    assert MIXERS["linear"] is LinearAttention
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, mixer="linear",
                      linear=LinearAttentionConfig(chunk_size=4))
    model = Transformer(cfg).eval()
    assert_decodes_like_full_forward(model, 50, TOL['atol'])
