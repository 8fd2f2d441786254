"""Gated linear attention: chunked form vs a token-by-token recurrence, causality, cached decoding, gradients,
the activation estimate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_decodes_like_full_forward, assert_mixer_is_causal, decode_in_pieces, saved_activation_bytes
from torch.testing import assert_close

from model.config import ModelConfig
from model.mixers import MIXERS
from model.mixers.gla import GATE_FLOOR, GatedLinearAttention, GLAConfig
from model.positions import POSITIONS
from model.transformer import Transformer
from train.estimate.breakdown import layer_bytes

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def gla(monkeypatch):
    monkeypatch.setitem(MIXERS, "gla", GatedLinearAttention)  # as its line in model/mixers/__init__.py does


def config(chunk_size=8, position="none", **over) -> ModelConfig:
    cfg = ModelConfig(**{"d_model": 32, "n_heads": 4, "max_seq_len": 64, "position": position, **over})
    cfg.gla = GLAConfig(chunk_size=chunk_size)  # set by hand: ModelConfig has the section once "gla" is registered
    return cfg


def make(chunk_size=8, position="none", seed=0, gate_bias=0.0):
    torch.manual_seed(seed)
    cfg = config(chunk_size, position)
    m = GatedLinearAttention(cfg, POSITIONS[position](cfg.d_model)).eval()
    with torch.no_grad():  # random gate biases: decays from strong (alpha ~ 0.08) to none (alpha ~ 1)
        m.gate_up.bias.copy_(gate_bias + 4 * torch.randn_like(m.gate_up.bias))
    return m


def recurrent_reference(m: GatedLinearAttention, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """One token at a time: S = diag(alpha_t) S + k_t^T v_t, o_t = q_t S, y = W_o (swish(x W_r) ⊙ norm(o))."""
    B, T, _ = x.shape
    H, d = m.n_heads, m.head_dim
    q = m.q_proj(x).view(B, T, H, d).transpose(1, 2) * d ** -0.5  # (B, H, T, d)
    k = m.k_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    v = m.v_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    q, k = m.position.rotate(q, k, offset)
    z = m.gate_up(m.gate_down(x)).view(B, T, H, d).transpose(1, 2)
    alpha = (torch.sigmoid(z) ** (1 / m.tau)).clamp(min=torch.exp(torch.tensor(GATE_FLOOR)))  # (B, H, T, d)
    S = torch.zeros(B, H, d, d)
    os = []
    for t in range(T):
        S = alpha[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        os.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], S))
    o = m.norm(torch.stack(os, dim=2)).transpose(1, 2).reshape(B, T, H * d)  # (B, T, H*d)
    return m.o_proj(F.silu(m.r_proj(x)) * o)



@pytest.mark.parametrize("position", ["none", "rope"])
@pytest.mark.parametrize("chunk_size", [1, 5, 8, 21, 32])
def test_chunked_matches_recurrent_reference(chunk_size, position):
    m = make(chunk_size, position)
    x = torch.randn(2, 21, 32)  # 21: not a multiple of 5, 8 or 32
    with torch.no_grad():
        assert_close(m(x)[0], recurrent_reference(m, x), **TOL)


def test_strong_decay_stays_finite_and_matches():
    m = make(32, gate_bias=-60.0)  # every alpha at the floor: |b| reaches 2.5 * 32 = 80 inside a chunk
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        y = m(x)[0]
        assert torch.isfinite(y).all()
        assert_close(y, recurrent_reference(m, x), rtol=1e-4, atol=1e-4)


def test_causal():
    assert_mixer_is_causal(make(8), 32, TOL["atol"])


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [8, 8, 5], [1] * 21])
@pytest.mark.parametrize("position", ["none", "rope"])
def test_cached_decoding_equals_full_forward(sizes, position):
    m = make(8, position)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, S = decode_in_pieces(m, x, sizes)
        assert_close(y, m(x)[0], **TOL)
    assert S.dtype == torch.float32 and S.shape == (2, 4, 8, 8)


def test_every_parameter_gets_a_gradient():
    m = make(8).train()
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_keeps_fp32_state():
    m = make(8)
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, S = m(x, m.init_cache(1, x.device, torch.bfloat16))
    assert S.dtype == torch.float32 and torch.isfinite(y).all()
    assert_close(y.float(), m(x)[0], rtol=0.05, atol=0.05)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        GLAConfig(chunk_size=0)
    with pytest.raises(ValueError, match="gate_tau"):
        GLAConfig(gate_tau=0.0)


def tiny_gla_model(chunk_size: int, **over) -> Transformer:
    cfg = config(chunk_size, position="rope", vocab_size=50, n_layers=2, mixer="gla", **over)
    return Transformer(cfg)


def test_tiny_transformer_decodes_and_generates(gla):
    torch.manual_seed(0)
    model = tiny_gla_model(4).eval()
    assert_decodes_like_full_forward(model, 50, TOL["atol"])
    mixer = model.layers[0].mixer
    assert set(model.lora_targets()) >= {"q_proj", "k_proj", "v_proj", "r_proj", "o_proj"}
    assert model.layers[0].mixer.residual_projections() == [mixer.o_proj]
    model.train()
    model(torch.randint(0, 50, (2, 16)))[0].logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("chunk_size", [32, 8])  # the default (C = T = 32) and C < T
def test_activation_estimate_within_10_percent(gla, chunk_size):
    torch.manual_seed(0)
    model = tiny_gla_model(chunk_size, max_seq_len=32)
    cfg = model.cfg
    measured = saved_activation_bytes(model, 2, 32) - saved_activation_bytes(model, 1, 32)
    kept = 4 * cfg.d_model + 4 * cfg.d_model + 4 * cfg.vocab_size  # the final norm, head input, fp32 log-softmax
    estimated = 32 * (sum(layer_bytes(cfg, m, cfg.layer_ffn(m), 32, "32") for m in cfg.layer_mixers()) + kept)
    assert estimated == pytest.approx(measured, rel=0.1)
