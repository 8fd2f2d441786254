"""DeltaNet: the chunked (WY / UT-transform) form vs the delta-rule recurrence in float64, outputs and gradients;
the whole mixer vs a hand-written reference; causality, cached decoding in pieces, gradients, the activation
estimate vs a measured forward, and a tiny Transformer that decodes and generates."""

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
from model.mixers.deltanet import DeltaNet, DeltaNetConfig, chunked_delta_rule
from model.transformer import Transformer
from train.estimate.breakdown import head_bytes, layer_bytes

TOL = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-10)


def make(seed=0, **options) -> DeltaNet:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, max_seq_len=64, deltanet=DeltaNetConfig(**{"chunk_size": 8, **options}))
    return DeltaNet(cfg).eval()


def recurrence(q, k, v, beta, S):
    """The paper's form token by token, S (B, H, dv, dk): S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,
    o_t = S_t q_t. q, k, v (B, H, T, d), beta (B, H, T) -> o (B, H, T, dv), S_T."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    os = []
    for t in range(q.shape[2]):
        kt, b = k[:, :, t, :, None], beta[:, :, t, None, None]  # (B, H, dk, 1), (B, H, 1, 1)
        S = S @ (eye - b * kt @ kt.transpose(-1, -2)) + b * v[:, :, t, :, None] @ kt.transpose(-1, -2)
        os.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(os, dim=2), S


def random_inputs(T=21, B=2, H=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    logit = torch.randn(B, H, T, generator=g, dtype=torch.float64, requires_grad=True)
    S0 = torch.randn(B, H, d, d, generator=g, dtype=torch.float64)  # (dv, dk) in the paper's orientation
    return q, k, v, logit, S0


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 8, 21, 64])  # T = 21: not a multiple of 4, 5 or 8; one chunk; C > T
def test_chunked_equals_the_recurrence_in_float64(chunk_size):
    q, k, v, logit, S0 = random_inputs()

    def run(chunked: bool):
        kn, beta = F.normalize(k, dim=-1), torch.sigmoid(logit)
        if chunked:  # the mixer keeps M = S^T (dk, dv)
            o, M = chunked_delta_rule(q, kn, v, beta, S0.transpose(-1, -2), chunk_size)
            S = M.transpose(-1, -2)
        else:
            o, S = recurrence(q, kn, v, beta, S0)
        grads = torch.autograd.grad(o.square().sum() + (S * S0).sum(), [q, k, v, logit])
        return o, S, grads

    (o, S, grads), (o_ref, S_ref, grads_ref) = run(True), run(False)
    assert_close(o, o_ref, **F64)
    assert_close(S, S_ref, **F64)
    for g, g_ref in zip(grads, grads_ref):  # incl. through the solve, which reads only A's strict lower part
        assert_close(g, g_ref, **F64)


def test_a_repeated_key_converges_to_storing_its_value():
    """The delta rule corrects instead of accumulating: with one unit key and one value repeated (beta = 1/2), the
    memory's answer for the key converges to the value (a linear-attention sum would grow 200-fold)."""
    q, k, v, logit, _ = random_inputs(T=200, B=1, H=1, d=4)
    k = F.normalize(k.detach()[:, :, :1].expand(-1, -1, 200, -1), dim=-1)
    v = v.detach()[:, :, :1].expand(-1, -1, 200, -1)
    _, M = chunked_delta_rule(q.detach(), k, v, torch.full((1, 1, 200), 0.5, dtype=torch.float64),
                              torch.zeros(1, 1, 4, 4, dtype=torch.float64), 64)
    assert_close(k[:, :, 0, None] @ M, v[:, :, :1], **F64)  # M^T k = v: the memory returns v for its key


def reference(m: DeltaNet, x):
    """The mixer written out: causal depthwise conv, feature maps and L2 norms, beta, the recurrence, norm, gate."""
    B, T, _ = x.shape
    H, d, K = m.n_heads, m.head_dim, m.conv_size
    u = torch.cat([m.q_proj(x), m.k_proj(x), m.v_proj(x)], dim=-1).transpose(1, 2)  # (B, 3E, T)
    u = F.conv1d(F.pad(u, (K - 1, 0)), m.conv.weight, groups=u.shape[1])  # causal: zeros before the start
    q, k, v = (t.reshape(B, H, d, T).transpose(-1, -2) for t in u.chunk(3, dim=1))  # (B, H, T, d)
    q = F.normalize(m.phi(q), dim=-1) * d ** -0.5
    k = F.normalize(m.phi(k), dim=-1)
    beta = torch.sigmoid(m.b_proj(x)).transpose(1, 2)  # (B, H, T)
    o, _ = recurrence(q, k, F.silu(v), beta, torch.zeros(B, H, d, d))
    o = m.norm(o.transpose(1, 2))  # (B, T, H, d)
    if m.g_proj is not None:
        o = F.silu(m.g_proj(x)).view(B, T, H, d) * o
    return m.o_proj(o.reshape(B, T, H * d))


OPTIONS = [{}, {"gate": True}, {"feature_map": "identity"}, {"conv_size": 1}, {"conv_size": 6, "chunk_size": 5}]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_mixer_matches_the_written_out_reference(options):
    m = make(**options)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        assert_close(m(x)[0], reference(m, x), **TOL)


def test_causal():
    assert_mixer_is_causal(make(), 32, TOL["atol"])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [1] * 21, [2, 1, 18]])
@pytest.mark.parametrize("options", [{}, {"conv_size": 1, "gate": True}], ids=str)
def test_cached_decoding_equals_full_forward(sizes, options):
    m = make(**options)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, (conv_state, M) = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    assert conv_state.shape == (2, 3 * 32, m.conv_size - 1)
    assert M.dtype == torch.float32 and M.shape == (2, 4, 8, 8)


def test_every_parameter_gets_a_gradient():
    m = make(gate=True).train()
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_keeps_fp32_state():
    m = make()
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (_, M) = m(x, m.init_cache(1, x.device, torch.bfloat16))
    assert M.dtype == torch.float32 and torch.isfinite(y).all()
    assert_close(y.float(), m(x)[0], rtol=0.05, atol=0.05)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        DeltaNetConfig(chunk_size=0)
    with pytest.raises(ValueError, match="conv_size"):
        DeltaNetConfig(conv_size=0)
    with pytest.raises(ValueError, match="feature_map"):
        DeltaNetConfig(feature_map="elu")
    with pytest.raises(ValueError, match="backend"):
        DeltaNetConfig(backend="cuda")


def test_tiny_transformer_decodes_and_generates():
    assert MIXERS["deltanet"] is DeltaNet
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="deltanet", deltanet=DeltaNetConfig(chunk_size=4, gate=True))
    model = Transformer(cfg).eval()
    mixer = model.layers[0].mixer
    assert {"q_proj", "k_proj", "v_proj", "g_proj", "o_proj"} <= set(model.lora_targets())
    assert mixer.residual_projections() == [mixer.o_proj]
    assert_decodes_like_full_forward(model, cfg.vocab_size, TOL["atol"])


@pytest.mark.parametrize("options", [{}, {"chunk_size": 8}, {"chunk_size": 16, "gate": True},
                                     {"feature_map": "identity", "conv_size": 1}], ids=str)
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_estimate_matches_a_measured_forward(options, precision):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="deltanet", n_layers=1, d_model=64, vocab_size=200, max_seq_len=32,
                            deltanet=DeltaNetConfig(**options))
    model = Transformer(cfg)
    measured = saved_activation_bytes(model, 2, 32, precision) - saved_activation_bytes(model, 1, 32, precision)
    estimated = 32 * (layer_bytes(cfg, "deltanet", cfg.layer_ffn("deltanet"), 32, precision)
                      + head_bytes(cfg, precision)[0])
    assert estimated == pytest.approx(measured, rel=0.1), estimated / measured
