"""Gated DeltaNet: the chunked (decay-aware WY / UT) form vs the gated delta-rule recurrence in float64, outputs
and gradients; alpha = 1 gives DeltaNet's chunked form; the whole mixer vs a hand-written reference; causality,
cached decoding in pieces, gradients, the activation estimate vs a measured forward, a tiny Transformer."""

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
from model.mixers.deltanet import chunked_delta_rule
from model.mixers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig, chunked_gated_delta_rule
from model.transformer import Transformer
from train.estimate.breakdown import head_bytes, layer_bytes

TOL = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "gated_deltanet", GatedDeltaNet)  # as its line in model/mixers/__init__.py does


def config(**over) -> ModelConfig:
    cfg = ModelConfig(**{"d_model": 32, "n_heads": 4, "max_seq_len": 64, **over})
    cfg.gated_deltanet = GatedDeltaNetConfig(chunk_size=8)  # set by hand: the section exists once registered
    return cfg


def make(seed=0, **options) -> GatedDeltaNet:
    torch.manual_seed(seed)
    cfg = config()
    cfg.gated_deltanet = GatedDeltaNetConfig(**{"chunk_size": 8, **options})
    return GatedDeltaNet(cfg).eval()


def recurrence(q, k, v, beta, g, S):
    """The paper's form token by token, S (B, H, dv, dk): S_t = S_{t-1} (alpha_t (I - beta_t k_t k_t^T)) +
    beta_t v_t k_t^T, alpha_t = e^{g_t}, o_t = S_t q_t. q, k, v (B, H, T, d), beta, g (B, H, T) -> o, S_T."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    os = []
    for t in range(q.shape[2]):
        kt, b, a = k[:, :, t, :, None], beta[:, :, t, None, None], g[:, :, t, None, None].exp()  # (B, H, d, 1)
        S = S @ (a * (eye - b * kt @ kt.transpose(-1, -2))) + b * v[:, :, t, :, None] @ kt.transpose(-1, -2)
        os.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(os, dim=2), S


def random_inputs(T=21, B=2, H=3, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    logit, a = (torch.randn(B, H, T, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    S0 = torch.randn(B, H, d, d, generator=gen, dtype=torch.float64)  # (dv, dk) in the paper's orientation
    return q, k, v, logit, a, S0


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 8, 21, 64])  # T = 21: not a multiple of 4, 5 or 8; one chunk; C > T
def test_chunked_equals_the_recurrence_in_float64(chunk_size):
    q, k, v, logit, a, S0 = random_inputs()

    def run(chunked: bool):
        kn, beta, g = F.normalize(k, dim=-1), torch.sigmoid(logit), -3 * F.softplus(a)  # alpha from ~0 to ~1
        if chunked:  # the mixer keeps M = S^T (dk, dv)
            o, M = chunked_gated_delta_rule(q, kn, v, beta, g, S0.transpose(-1, -2), chunk_size)
            S = M.transpose(-1, -2)
        else:
            o, S = recurrence(q, kn, v, beta, g, S0)
        grads = torch.autograd.grad(o.square().sum() + (S * S0).sum(), [q, k, v, logit, a])
        return o, S, grads

    (o, S, grads), (o_ref, S_ref, grads_ref) = run(True), run(False)
    assert_close(o, o_ref, **F64)
    assert_close(S, S_ref, **F64)
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, **F64)


def test_no_decay_is_deltanet():
    q, k, v, logit, _, S0 = random_inputs()
    kn, beta, M0 = F.normalize(k, dim=-1), torch.sigmoid(logit), S0.transpose(-1, -2)
    gated = chunked_gated_delta_rule(q, kn, v, beta, torch.zeros_like(beta), M0, 8)
    for got, want in zip(gated, chunked_delta_rule(q, kn, v, beta, M0, 8)):
        assert_close(got, want, **F64)


def test_strong_decay_stays_finite():
    """A chunk's total decay far below fp32's range (e^-2000): only differences b_t - b_s are exponentiated."""
    q, k, v, logit, _, S0 = (t.detach().float() for t in random_inputs(T=64))
    g = torch.full_like(logit, -40.0)
    o, M = chunked_gated_delta_rule(q, F.normalize(k, dim=-1), v, torch.sigmoid(logit), g, S0, 64)
    assert torch.isfinite(o).all() and torch.isfinite(M).all()
    o_ref, _ = recurrence(q, F.normalize(k, dim=-1), v, torch.sigmoid(logit), g, S0.transpose(-1, -2))
    assert_close(o, o_ref, **TOL)


def reference(m: GatedDeltaNet, x):
    """The mixer written out: causal depthwise conv, SiLU and L2 norms, alpha and beta, the recurrence, gated norm."""
    B, T, _ = x.shape
    H, d, K = m.n_heads, m.head_dim, m.conv_size
    u = torch.cat([m.q_proj(x), m.k_proj(x), m.v_proj(x)], dim=-1).transpose(1, 2)  # (B, 3E, T)
    u = F.conv1d(F.pad(u, (K - 1, 0)), m.conv_weight, m.conv_bias, groups=u.shape[1])  # causal
    q, k, v = (F.silu(t).reshape(B, H, d, T).transpose(-1, -2) for t in u.chunk(3, dim=1))  # (B, H, T, d)
    g = -m.A_log.exp() * F.softplus(m.a_proj(x) + m.dt_bias)  # (B, T, H)
    beta = torch.sigmoid(m.b_proj(x))  # (B, T, H)
    o, _ = recurrence(F.normalize(q, dim=-1) * d ** -0.5, F.normalize(k, dim=-1), v, beta.transpose(1, 2),
                      g.transpose(1, 2), torch.zeros(B, H, d, d))
    o = m.norm(o.transpose(1, 2)) * F.silu(m.g_proj(x)).view(B, T, H, d)  # (B, T, H, d)
    return m.o_proj(o.reshape(B, T, H * d))


@pytest.mark.parametrize("options", [{}, {"conv_size": 1}, {"conv_size": 6, "chunk_size": 5}], ids=str)
def test_mixer_matches_the_written_out_reference(options):
    m = make(**options)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        assert_close(m(x)[0], reference(m, x), **TOL)


def test_causal():
    assert_mixer_is_causal(make(), 32, TOL["atol"])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [2, 1, 18]])
@pytest.mark.parametrize("options", [{}, {"conv_size": 1}], ids=str)
def test_cached_decoding_equals_full_forward(sizes, options):
    m = make(**options)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, (conv_state, M) = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    assert conv_state.shape == (2, m.conv_size - 1, 3 * 32)
    assert M.dtype == torch.float32 and M.shape == (2, 4, 8, 8)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        GatedDeltaNetConfig(chunk_size=0)
    with pytest.raises(ValueError, match="conv_size"):
        GatedDeltaNetConfig(conv_size=0)


def test_tiny_transformer_decodes_and_generates(registered):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="gated_deltanet")
    cfg.gated_deltanet = GatedDeltaNetConfig(chunk_size=4)
    model = Transformer(cfg).eval()
    mixer = model.layers[0].mixer
    assert {"q_proj", "k_proj", "v_proj", "g_proj", "o_proj"} <= set(model.lora_targets())
    assert mixer.residual_projections() == [mixer.o_proj]
    assert {id(p) for p in model.no_decay_parameters()} >= {id(mixer.A_log), id(mixer.dt_bias)}
    assert_decodes_like_full_forward(model, cfg.vocab_size, TOL["atol"])


@pytest.mark.parametrize("chunk_size", [8, 64])  # C < T (several chunks) and the default (one chunk, C = T)
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_estimate_matches_a_measured_forward(registered, chunk_size, precision):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="gated_deltanet", n_layers=1, d_model=64, vocab_size=200, max_seq_len=32)
    cfg.gated_deltanet = GatedDeltaNetConfig(chunk_size=chunk_size)
    model = Transformer(cfg)
    measured = saved_activation_bytes(model, 2, 32, precision) - saved_activation_bytes(model, 1, 32, precision)
    estimated = 32 * (layer_bytes(cfg, "gated_deltanet", cfg.layer_ffn("gated_deltanet"), 32, precision)
                      + head_bytes(cfg, precision)[0])
    assert estimated == pytest.approx(measured, rel=0.1), estimated / measured
