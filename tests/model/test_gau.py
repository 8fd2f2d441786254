"""Gated attention unit: quadratic and chunked forms vs a token-by-token reference, causality, caching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_decodes_like_full_forward, assert_mixer_is_causal, decode_in_pieces
from torch.testing import assert_close

from model.config import ModelConfig
from model.mixers import MIXERS
from model.mixers.gau import GAU, GAUConfig
from model.positions import POSITIONS
from model.transformer import Transformer

TOL = dict(rtol=1e-5, atol=1e-5)
VARIANTS = [("quadratic", "relu2"), ("quadratic", "softmax"), ("chunked", "relu2")]
MAX_LEN, CHUNK = 64, 8


def make(form="quadratic", scores="relu2", position="rope", chunk_size=CHUNK, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, max_seq_len=MAX_LEN, position=position,
                      gau=GAUConfig(expansion=2, qk_dim=16, scores=scores, form=form, chunk_size=chunk_size))
    m = GAU(cfg, POSITIONS[position](cfg.d_model)).eval()
    with torch.no_grad():  # non-zero offsets too, so the tests cover them
        m.beta.normal_(0.0, 0.5)
    return m


def reference(m: GAU, x: torch.Tensor) -> torch.Tensor:
    """Token by token. Quadratic: o_t = sum_{j<=t} w(q_t . k_j / sqrt(s)) v_j with w = relu^2 / max_len or
    softmax. Chunked: quadratic relu^2 / C inside the chunk of t, plus q_lin,t S where S holds
    sum k_lin,j v_j^T / C over the completed chunks, updated when a chunk completes."""
    B, T, _ = x.shape
    u, v = F.silu(m.uv_proj(x)).chunk(2, dim=-1)  # (B, T, e)
    z = F.silu(m.z_proj(x))  # (B, T, s)
    qk = z[:, None] * m.gamma[:, None] + m.beta[:, None]  # (B, n_qk, T, s)
    h, s = qk.shape[1] // 2, z.shape[-1]
    q, k = m.position.rotate(qk[:, :h], qk[:, h:], 0)  # (B, h, T, s)
    S = torch.zeros(B, s, v.shape[-1])
    outs = []
    for t in range(T):
        if m.form == "quadratic":
            scores = torch.einsum("bs,bjs->bj", q[:, 0, t], k[:, 0, :t + 1]) / math.sqrt(s)  # (B, t + 1)
            w = scores.softmax(-1) if m.scores == "softmax" else F.relu(scores).square() / MAX_LEN
            outs.append(torch.einsum("bj,bje->be", w, v[:, :t + 1]))
            continue
        start = t - t % CHUNK
        if t % CHUNK == 0 and t > 0:  # chunk [t - C, t) just completed
            S = S + torch.einsum("bjs,bje->bse", k[:, 1, t - CHUNK:t], v[:, t - CHUNK:t]) / CHUNK
        scores = torch.einsum("bs,bjs->bj", q[:, 0, t], k[:, 0, start:t + 1]) / math.sqrt(s)
        quad = torch.einsum("bj,bje->be", F.relu(scores).square() / CHUNK, v[:, start:t + 1])
        outs.append(quad + torch.einsum("bs,bse->be", q[:, 1, t], S))
    return m.o_proj(u * torch.stack(outs, dim=1))



@pytest.mark.parametrize("position", ["rope", "none"])
@pytest.mark.parametrize("form,scores", VARIANTS)
def test_matches_token_by_token_reference(form, scores, position):
    m = make(form, scores, position)
    x = torch.randn(2, 21, 32)  # 21 = 2 full chunks of 8 + a partial one
    with torch.no_grad():
        assert_close(m(x)[0], reference(m, x), **TOL)


@pytest.mark.parametrize("form,scores", VARIANTS)
def test_causal(form, scores):
    assert_mixer_is_causal(make(form, scores), 32, TOL['atol'])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [1] * 21, [16, 5]])
@pytest.mark.parametrize("form,scores", VARIANTS)
def test_cached_decoding_equals_full_forward(form, scores, sizes):
    m = make(form, scores)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, cache = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    if form == "chunked":  # 21 = 2 chunks in the state + 5 tokens of keys and values
        S, k, v = cache
        assert S.dtype == torch.float32 and k.shape == (2, 2, 5, 16) and v.shape == (2, 5, 64)
    else:
        assert cache[0].shape == (2, 1, 21, 16) and cache[1].shape == (2, 1, 21, 64)


def test_chunked_within_one_chunk_has_no_linear_part():
    """Before the first chunk completes, the chunked form is the quadratic relu^2 one with n = chunk size."""
    m = make("chunked")
    x = torch.randn(2, CHUNK, 32)
    with torch.no_grad():
        y = m(x)[0]
        m.beta[[1, 3]] = 0.0
        m.gamma[[1, 3]] = 0.0  # zero Q_lin and K_lin
        assert_close(m(x)[0], y, **TOL)


@pytest.mark.parametrize("form,scores", VARIANTS)
def test_every_parameter_gets_a_gradient(form, scores):
    m = make(form, scores).train()
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast():
    m = make("chunked")
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, cache = m(x, m.init_cache(1, x.device, torch.bfloat16))
    assert cache[0].dtype == torch.float32 and torch.isfinite(y).all()


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="form=quadratic"):
        make("chunked", "softmax")
    with pytest.raises(ValueError, match="invalid choice"):
        make("linear")
    with pytest.raises(ValueError, match="invalid choice"):
        make(scores="sigmoid")


@pytest.mark.parametrize("form", ["quadratic", "chunked"])
def test_tiny_transformer_decodes_and_generates(form):
    assert MIXERS["gau"] is GAU
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, max_seq_len=64, mixer="gau",
                      gau=GAUConfig(qk_dim=16, form=form, chunk_size=4))
    model = Transformer(cfg).eval()
    assert all(layer.ffn is None for layer in model.layers)  # GAU replaces attention + FFN
    gau = model.layers[0].mixer
    assert gau.beta.abs().sum() == 0 and 0.5 < gau.gamma.std() < 1.5  # reset_special_parameters ran
    assert_decodes_like_full_forward(model, 50, TOL['atol'])
