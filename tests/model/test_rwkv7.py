"""RWKV-7 time mixing: the chunked diagonal-plus-low-rank form vs the generalised delta-rule recurrence in float64,
outputs and gradients; the whole mixer vs a hand-written reference; causality, cached decoding in pieces (token
shift across pieces), gradients, the activation estimate vs a measured forward, a tiny Transformer."""

from __future__ import annotations

import math

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
from model.mixers.rwkv7 import RWKV7, RWKV7Config, chunked_dplr
from model.transformer import Transformer
from train.estimate.breakdown import head_bytes, layer_bytes

TOL = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "rwkv7", RWKV7)  # as its line in model/mixers/__init__.py does


def make(seed=0, **options) -> RWKV7:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, max_seq_len=64)
    cfg.rwkv7 = RWKV7Config(**{"chunk_size": 8, "decay_rank": 4, "iclr_rank": 4, "gate_rank": 8, **options})
    m = RWKV7(cfg).eval()
    with torch.no_grad():  # away from the initial values: every term of the recurrence matters
        for p in (m.mix, m.k_k, m.k_a, m.r_k, m.w_up.bias, m.a_up.bias):
            p.add_(0.5 * torch.randn_like(p))
    return m


def recurrence(r, logw, k, v, kappa, a, S):
    """The paper's form token by token, S (B, H, dv, dk): S_t = S_{t-1} (diag(w_t) - kappa_t^T (a_t ⊙ kappa_t)) +
    v_t^T k_t, o_t = S_t r_t^T. r, logw, k, v, kappa, a (B, H, T, d) -> o (B, H, T, dv), S_T."""
    os = []
    for t in range(r.shape[2]):
        kap, at = kappa[:, :, t, :, None], a[:, :, t, None, :]  # (B, H, dk, 1), (B, H, 1, dk)
        transition = torch.diag_embed(logw[:, :, t].exp()) - kap @ (at * kap.transpose(-1, -2))  # (B, H, dk, dk)
        S = S @ transition + v[:, :, t, :, None] @ k[:, :, t, None, :]
        os.append((S @ r[:, :, t, :, None])[..., 0])
    return torch.stack(os, dim=2), S


def random_inputs(T=21, B=2, H=3, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r, k, v, kap, dw, da = (torch.randn(B, H, T, d, generator=gen, dtype=torch.float64, requires_grad=True)
                            for _ in range(6))
    S0 = torch.randn(B, H, d, d, generator=gen, dtype=torch.float64)  # (dv, dk) in the paper's orientation
    return r, k, v, kap, dw, da, S0


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 8, 21, 64])  # T = 21: not a multiple of 4, 5 or 8; one chunk; C > T
def test_chunked_equals_the_recurrence_in_float64(chunk_size):
    r, k, v, kap, dw, da, S0 = random_inputs()

    def run(chunked: bool):
        logw = -math.exp(-0.5) * torch.sigmoid(3 * dw)  # the mixer's decay, over its whole range
        kappa, a = F.normalize(kap, dim=-1), torch.sigmoid(da)
        if chunked:  # the mixer keeps M = S^T (dk, dv), with z = -kappa, b = a kappa
            o, M = chunked_dplr(r, logw, k, v, -kappa, a * kappa, S0.transpose(-1, -2), chunk_size)
            S = M.transpose(-1, -2)
        else:
            o, S = recurrence(r, logw, k, v, kappa, a, S0)
        grads = torch.autograd.grad(o.square().sum() + (S * S0).sum(), [r, k, v, kap, dw, da])
        return o, S, grads

    (o, S, grads), (o_ref, S_ref, grads_ref) = run(True), run(False)
    assert_close(o, o_ref, **F64)
    assert_close(S, S_ref, **F64)
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, **F64)


def test_the_largest_chunk_stays_accurate_in_float32():
    """Every token at the strongest decay over a 128-token chunk (e^{-c} reaches e^78): fp32 still matches."""
    r, k, v, kap, _, da, S0 = (t.detach() for t in random_inputs(T=128, B=1, H=2, d=8))
    logw = torch.full_like(r, -math.exp(-0.5))
    kappa, a = F.normalize(kap, dim=-1), torch.sigmoid(da)
    o, _ = chunked_dplr(*(t.float() for t in (r, logw, k, v, -kappa, a * kappa, S0.transpose(-1, -2))), 128)
    o_ref, _ = recurrence(r, logw, k, v, kappa, a, S0)
    assert torch.isfinite(o).all()
    assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)


def reference(m: RWKV7, x):
    """The mixer written out from the paper's equations, token shift and recurrence token by token."""
    B, T, D = x.shape
    H, d = m.n_heads, m.head_dim
    shifted = F.pad(x, (0, 0, 1, -1))  # (B, T, D): x_{t-1}, zero before the first token
    xr, xw, xk, xv, xa, xg = (torch.lerp(x, shifted, mu) for mu in m.mix)
    r, k, v = m.r_proj(xr), m.k_proj(xk), m.v_proj(xv)
    logw = -math.exp(-0.5) * torch.sigmoid(m.w_up(torch.tanh(m.w_down(xw))))
    a = torch.sigmoid(m.a_up(m.a_down(xa)))
    g = m.g_up(torch.sigmoid(m.g_down(xg)))
    kappa = F.normalize((k * m.k_k).view(B, T, H, d), dim=-1).view(B, T, -1)
    k = k * (1 + (a - 1) * m.k_a)
    heads = [t.view(B, T, H, d).transpose(1, 2) for t in (r, logw, k, v, kappa, a)]  # (B, H, T, d)
    o, _ = recurrence(*heads, torch.zeros(B, H, d, d))
    o = F.group_norm(o.transpose(1, 2).reshape(B * T, -1), H, m.norm.weight, m.norm.bias, m.norm.eps)
    bonus = ((r * k).view(B, T, H, d) * m.r_k).sum(-1, keepdim=True) * v.view(B, T, H, d)
    return m.o_proj((o.view(B, T, H, d) + bonus).view(B, T, -1) * g)


@pytest.mark.parametrize("chunk_size", [5, 8, 32])
def test_mixer_matches_the_written_out_reference(chunk_size):
    m = make(chunk_size=chunk_size)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        assert_close(m(x)[0], reference(m, x), **TOL)


def test_causal():
    assert_mixer_is_causal(make(), 32, TOL["atol"])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [2, 1, 18]])
def test_cached_decoding_equals_full_forward(sizes):
    m = make()
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, (previous, M) = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    assert torch.equal(previous, x[:, -1])  # token shift's memory: the last input
    assert M.dtype == torch.float32 and M.shape == (2, 4, 8, 8)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        RWKV7Config(chunk_size=129)
    with pytest.raises(ValueError, match="decay_rank"):
        RWKV7Config(decay_rank=0)


def test_tiny_transformer_decodes_and_generates(registered):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="rwkv7")
    cfg.rwkv7 = RWKV7Config(chunk_size=4)
    model = Transformer(cfg).eval()
    mixer = model.layers[0].mixer
    assert {"r_proj", "k_proj", "v_proj", "o_proj"} <= set(model.lora_targets())
    assert mixer.residual_projections() == [mixer.o_proj]
    assert {id(p) for p in model.no_decay_parameters()} >= {id(mixer.w_up.bias), id(mixer.mix)}
    assert_decodes_like_full_forward(model, cfg.vocab_size, TOL["atol"])


@pytest.mark.parametrize("chunk_size", [8, 32])  # C < T (several chunks) and the default (one chunk, C = T)
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_estimate_matches_a_measured_forward(registered, chunk_size, precision):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="rwkv7", n_layers=1, d_model=64, vocab_size=200, max_seq_len=32)
    cfg.rwkv7 = RWKV7Config(chunk_size=chunk_size)
    model = Transformer(cfg)
    measured = saved_activation_bytes(model, 2, 32, precision) - saved_activation_bytes(model, 1, 32, precision)
    estimated = 32 * (layer_bytes(cfg, "rwkv7", cfg.layer_ffn("rwkv7"), 32, precision)
                      + head_bytes(cfg, precision)[0])
    assert estimated == pytest.approx(measured, rel=0.1), estimated / measured
