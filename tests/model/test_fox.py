"""Forgetting attention (`model.mixer=fox`): softmax attention with the same weights when the forget gate is 1, the
paper's equations written out (values and gradients, the gate's included), causality, cached decoding (one-token
steps and chunks, fp64) == full forward with RoPE and without positions, the cache's layout and bytes, the gate's
bias init and option, a hybrid with softmax, the activation estimate in bf16 and with grouped heads, score-bias
positions (ALiBi, T5) added to the forget bias, and refused with the fla backend."""

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

from model.mixers import MIXERS
from model.mixers.fox import ForgettingAttention, FoxConfig
from model.mixers.softmax import SoftmaxAttention
from model.positions import NoPosition, RotaryPosition
from model.transformer import Transformer
from train.estimate.breakdown import head_bytes, layer_bytes

POSITIONS = {"rope": RotaryPosition, "none": NoPosition}


def fox(position: str = "rope", n_kv_heads: int = 2, dtype=torch.float32) -> ForgettingAttention:
    torch.manual_seed(0)
    cfg = tiny_model_config(n_kv_heads=n_kv_heads, fox=FoxConfig())
    return ForgettingAttention(cfg, POSITIONS[position](cfg.d_model)).to(dtype).eval()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "fox", ForgettingAttention)  # as its line in model/mixers/__init__.py does


def model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_model_config(**{"mixer": "fox", "fox": FoxConfig(), **overrides})).eval()


def reference(attn: ForgettingAttention, x: torch.Tensor, position: str) -> torch.Tensor:
    """softmax_j(q_i . k_j / sqrt(d) + sum_{l=j+1}^{i} log f_l) v_j, the sum taken term by term (no cumsum, no SDPA)."""
    B, T, _ = x.shape
    H, Hk, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    k = attn.k_proj(x).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
    v = attn.v_proj(x).view(B, T, Hk, d).transpose(1, 2)
    q, k = POSITIONS[position](x.shape[-1]).rotate(q, k)
    k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)  # (B, H, T, d)
    log_f = torch.log(torch.sigmoid(attn.f_proj(x))).transpose(1, 2)  # (B, H, T)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, T, T)
    bias = torch.full((B, H, T, T), float("-inf"), dtype=x.dtype)
    for i in range(T):
        for j in range(i + 1):
            bias[:, :, i, j] = log_f[:, :, j + 1:i + 1].sum(-1)
    y = ((scores + bias).softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * d)
    return attn.o_proj(y)


@pytest.mark.parametrize("position", ["rope", "none"])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_a_forget_gate_of_one_is_softmax_attention(position, n_kv_heads):
    attn = fox(position, n_kv_heads)
    with torch.no_grad():
        attn.f_proj.weight.zero_()
        attn.f_proj.bias.fill_(100.0)  # f = sigmoid(100): log f = -4e-44, D = 0
    cfg = tiny_model_config(n_kv_heads=n_kv_heads)
    plain = SoftmaxAttention(cfg, POSITIONS[position](cfg.d_model)).eval()
    missing, unexpected = plain.load_state_dict(attn.state_dict(), strict=False)
    assert not missing and unexpected == ["f_proj.weight", "f_proj.bias"]
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x)[0], plain(x)[0], atol=1e-5, rtol=1e-5)
        attn.f_proj.bias.fill_(0.0)  # a real gate changes the output
        assert not torch.allclose(attn(x)[0], plain(x)[0], atol=1e-3)


@pytest.mark.parametrize("position", ["rope", "none"])
def test_equals_the_papers_equations_values_and_gradients(position):
    attn = fox(position, dtype=torch.float64).train()
    x = torch.randn(2, 12, 32, dtype=torch.float64, requires_grad=True)
    y = attn(x)[0]
    ref = reference(attn, x, position)
    torch.testing.assert_close(y, ref)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), [x, *attn.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [x, *attn.parameters()])
    for name, g, r in zip(["x", *(n for n, _ in attn.named_parameters())], grads, ref_grads):
        torch.testing.assert_close(g, r, msg=f"gradient of {name}")
    assert grads[-1].abs().sum() > 0  # the gate's bias is learned through the attention bias


@pytest.mark.parametrize("position", ["rope", "none"])
def test_causal(position):
    assert_mixer_is_causal(fox(position), 32)


@pytest.mark.parametrize("position", ["rope", "none"])
def test_cached_decoding_equals_full_forward_in_fp64(position):
    attn = fox(position, dtype=torch.float64)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    with torch.no_grad():
        full, _ = attn(x)
        pieces, (k, v, c) = decode_in_pieces(attn, x, [7, 1, 1, 8, 3])  # prefill, steps, a chunk, a short chunk
    torch.testing.assert_close(pieces, full, atol=1e-12, rtol=1e-12)
    assert k.shape == v.shape == (2, 2, 20, 8) and c.shape == (2, 4, 20) and c.dtype == torch.float64
    assert (c.diff(dim=-1) <= 0).all()  # c is a running sum of log f <= 0


@pytest.mark.parametrize("position", ["rope", "none"])
def test_a_fox_transformer_decodes_like_its_full_forward(registered, position):
    net = model(position=position)
    assert_decodes_like_full_forward(net, 97)
    state = net(torch.randint(0, 97, (2, 9)), net.init_state(2))[1]
    assert all(c.dtype == torch.float32 and c.shape == (2, 4, 9) for _, _, c in state.layers)


def test_cache_bytes_are_keys_values_and_the_log_forget_sums():
    attn = fox()
    cfg = tiny_model_config(n_kv_heads=2, fox=FoxConfig())
    with torch.no_grad():
        _, cache = decode_in_pieces(attn, torch.randn(1, 10, 32), [6, 4])
    measured = sum(t.numel() * t.element_size() for t in cache) / 10
    assert measured == ForgettingAttention.cache_bytes(cfg, 10, 4) / 10 == 4 * (2 * 2 * 8) + 4 * 4


def test_the_gate_bias_starts_at_its_option_and_the_model_trains(registered):
    net = model(fox=FoxConfig(gate_bias=3.0), position="none")
    for layer in net.layers:
        assert torch.equal(layer.mixer.f_proj.bias, torch.full((4,), 3.0))
    net.train()
    logits, _ = net(torch.randint(0, 97, (2, 16)))
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_hybrid_with_softmax_builds_and_decodes(registered):
    net = model(mixer=["fox", "softmax"], n_layers=4)
    assert [type(layer.mixer) for layer in net.layers] == [ForgettingAttention, SoftmaxAttention] * 2
    assert_decodes_like_full_forward(net, 97)
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(net.lora_targets())


def test_flops_add_the_bias_to_softmax_attention():
    cfg = tiny_model_config(fox=FoxConfig())
    assert ForgettingAttention.flops_per_token(cfg, 32) == SoftmaxAttention.flops_per_token(cfg, 32) + 3 * 4 * 32


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_estimate_with_grouped_heads_and_a_longer_sequence(registered, precision):
    """The registry-wide estimate test runs fp32 at T = 32 with H = Hk; here the H T term grows and Hk = H / 2."""
    T = 64
    net = model(vocab_size=200, d_model=64, n_kv_heads=2, max_seq_len=T)
    measured = saved_activation_bytes(net, 2, T, precision) - saved_activation_bytes(net, 1, T, precision)
    cfg = net.cfg
    layers = sum(layer_bytes(cfg, m, cfg.layer_ffn(m), T, precision) for m in cfg.layer_mixers())
    assert T * (layers + head_bytes(cfg, precision)[0]) == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("position", ["alibi", "t5"])
def test_a_position_score_bias_joins_the_forget_bias(registered, position):
    """Gate forced to 1: the model equals softmax attention under the same score-bias position; any gate: cached
    decoding equals the full forward."""
    net = model(position=position)
    assert_decodes_like_full_forward(net, 97, tol=1e-4)
    with torch.no_grad():
        for layer in net.layers:
            layer.mixer.f_proj.weight.zero_()
            layer.mixer.f_proj.bias.fill_(100.0)
    plain = Transformer(tiny_model_config(position=position)).eval()
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(".f_proj." in key for key in unexpected)
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], plain(x)[0], atol=1e-5, rtol=1e-5)


def test_the_fla_backend_refuses_a_score_bias_position_when_the_config_is_read():
    with pytest.raises(ValueError, match="position=alibi biases attention scores, which fox.backend=fla") as err:
        tiny_model_config(mixer="fox", position="alibi", fox=FoxConfig(backend="fla")).check()
    assert "\n" not in str(err.value)
