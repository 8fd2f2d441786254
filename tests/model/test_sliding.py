"""Sliding-window attention (`model.mixer=sliding`): softmax attention when W >= T, a naive per-query window
reference when W < T, a receptive field of exactly W tokens, cached decoding (one-token steps and chunks after a
truncated cache) == full forward, a cache bounded by W - 1, generation, a hybrid, the activation estimate on the
mask path, FLOPs and the config section."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_decodes_like_full_forward, assert_mixer_is_causal, saved_activation_bytes, tiny_model_config

from model.mixers.sliding import SlidingConfig, SlidingWindowAttention
from model.mixers.softmax import SoftmaxAttention
from model.positions import RotaryPosition
from model.transformer import Transformer
from train.config import ConfigError, load_config
from train.estimate.breakdown import head_bytes, layer_bytes


def sliding(window: int, n_kv_heads: int = 2) -> SlidingWindowAttention:
    torch.manual_seed(0)
    cfg = tiny_model_config(n_kv_heads=n_kv_heads, sliding=SlidingConfig(window=window))
    return SlidingWindowAttention(cfg, RotaryPosition(cfg.d_model)).eval()


def model(window: int, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = tiny_model_config(**{"mixer": "sliding", "sliding": SlidingConfig(window=window), **overrides})
    return Transformer(cfg).eval()


def reference(attn: SlidingWindowAttention, x: torch.Tensor, window: int) -> torch.Tensor:
    """A_ij = softmax over j in [max(0, i-W+1), i], one query at a time (no SDPA, no mask)."""
    B, T, _ = x.shape
    H, Hk, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    k = attn.k_proj(x).view(B, T, Hk, d).transpose(1, 2)  # (B, Hk, T, d)
    v = attn.v_proj(x).view(B, T, Hk, d).transpose(1, 2)
    q, k = RotaryPosition(x.shape[-1]).rotate(q, k)
    k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)  # (B, H, T, d)
    rows = []
    for i in range(T):
        lo = max(0, i - window + 1)
        scores = (q[:, :, i:i + 1] @ k[:, :, lo:i + 1].transpose(-1, -2)) / math.sqrt(d)  # (B, H, 1, i - lo + 1)
        rows.append(scores.softmax(-1) @ v[:, :, lo:i + 1])  # (B, H, 1, d)
    y = torch.cat(rows, dim=2).transpose(1, 2).reshape(B, T, H * d)
    return attn.o_proj(y)


@pytest.mark.parametrize("window", [16, 17, 256])
def test_equals_softmax_attention_when_the_window_covers_the_sequence(window):
    attn = sliding(window)
    cfg = tiny_model_config(n_kv_heads=2)
    full = SoftmaxAttention(cfg, RotaryPosition(cfg.d_model)).eval()
    full.load_state_dict(attn.state_dict())
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x)[0], full(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window,n_kv_heads", [(1, 4), (3, 2), (5, 1), (15, 4)])
def test_equals_a_naive_window_reference(window, n_kv_heads):
    attn = sliding(window, n_kv_heads)
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x)[0], reference(attn, x, window), atol=1e-5, rtol=1e-5)


def test_causal_and_sees_exactly_the_last_w_tokens():
    W = 5
    attn = sliding(W)
    assert_mixer_is_causal(attn, 32)
    x = torch.randn(1, 20, 32)
    x2 = x.clone()
    x2[:, 6] = torch.randn(32)  # token 6 is seen by queries 6 .. 6 + W - 1 only
    with torch.no_grad():
        y, y2 = attn(x)[0], attn(x2)[0]
    changed = (y - y2).abs().amax(-1)[0] > 1e-6  # (T,)
    assert changed.nonzero().flatten().tolist() == list(range(6, 6 + W))


@pytest.mark.parametrize("window", [1, 3, 4])
def test_cached_decoding_equals_full_forward_with_a_short_window(window):
    net = model(window, n_kv_heads=2)
    assert_decodes_like_full_forward(net, 97)  # 6-token prefill (> W), then one-token steps
    x = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full, _ = net(x)
        state, pieces = net.init_state(2), []
        # prefill, steps, chunks shorter and longer than W after a truncated cache, steps
        for start, end in [(0, 7), (7, 8), (8, 9), (9, 11), (11, 20), (20, 21), (21, 30)]:
            logits, state = net(x[:, start:end], state)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert state.offset == 30


def test_the_cache_stays_bounded_by_the_window():
    W = 4
    net = model(W)
    x = torch.randint(0, 97, (1, 80))
    with torch.no_grad():
        full, _ = net(x)
        state, pieces = net.init_state(1), []
        logits, state = net(x[:, :10], state)
        pieces.append(logits)
        for t in range(10, 80):
            logits, state = net(x[:, t:t + 1], state)
            pieces.append(logits)
            for k, v in state.layers:
                assert k.shape == v.shape == (1, 4, W - 1, 8), k.shape  # (B, Hk, W - 1, d), never more
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)  # 80 tokens > max_seq_len 64
    _, state = net(x[:, :2], net.init_state(1))
    assert state.layers[0][0].shape[2] == 2  # a short prompt keeps what it has
    _, state = model(1)(x[:, :5], model(1).init_state(1))
    assert state.layers[0][0].shape[2] == 0  # W = 1: a token sees only itself, nothing is cached


def test_a_tiny_sliding_transformer_generates():
    net = model(3)
    out = net.generate(torch.ones(2, 5, dtype=torch.long), 12, temperature=0.8, top_k=10)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], torch.ones(2, 5, dtype=torch.long))
    greedy = [net.generate(torch.ones(1, 4, dtype=torch.long), 8, temperature=0) for _ in range(2)]
    assert torch.equal(*greedy)


def test_hybrid_with_softmax_builds_and_decodes():
    net = model(3, mixer=["sliding", "softmax"], n_layers=4)
    kinds = [type(layer.mixer) for layer in net.layers]
    assert kinds == [SlidingWindowAttention, SoftmaxAttention] * 2
    assert_decodes_like_full_forward(net, 97)
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(net.lora_targets())


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_estimate_on_the_blocked_path(precision):
    """W < T: blocked local attention (the registry-wide estimate test runs W >= T, the causal path)."""
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer="sliding", sliding=SlidingConfig(window=8), vocab_size=200, d_model=64,
                            max_seq_len=32)
    net = Transformer(cfg)
    T = 32
    measured = saved_activation_bytes(net, 2, T, precision) - saved_activation_bytes(net, 1, T, precision)
    layers = sum(layer_bytes(cfg, m, cfg.layer_ffn(m), T, precision) for m in cfg.layer_mixers())
    assert T * (layers + head_bytes(cfg, precision)[0]) == pytest.approx(measured, rel=0.1)


def test_flops_count_at_most_w_keys():
    cfg = tiny_model_config(mixer="sliding", sliding=SlidingConfig(window=8))
    H_d = cfg.n_heads * cfg.head_dim
    assert SlidingWindowAttention.flops_per_token(cfg, 32) == 12 * H_d * 8
    assert SlidingWindowAttention.flops_per_token(cfg, 4) == SoftmaxAttention.flops_per_token(cfg, 4)


def test_the_window_is_a_config_option(tiny_corpus, tmp_path):
    cfg = load_config(None, {"model": {"mixer": "sliding", "sliding": {"window": 64}}})
    assert cfg.model.sliding.window == 64
    with pytest.raises(ConfigError, match=r"model\.sliding\.window=0: must be at least 1"):
        load_config(None, {"model": {"mixer": "sliding", "sliding": {"window": 0}}})
