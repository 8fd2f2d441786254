"""Softmax attention vs SDPA-free math, RoPE relativity, causality/cache/gradients for every registered
mixer and FFN, sampling filters, overfitting one batch."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model_config

from model.ffn import FFNS
from model.generate import filter_logits
from model.mixers import MIXERS
from model.positions import POSITIONS, RotaryPosition, SinusoidalPosition
from model.transformer import Transformer

VARIANTS = [dict(mixer=m) for m in MIXERS] + [dict(ffn=f) for f in FFNS] + [
    dict(position=p) for p in POSITIONS] + [dict(mixer=list(MIXERS)), dict(n_kv_heads=2)]
IDS = [",".join(f"{k}={v}" for k, v in d.items()) for d in VARIANTS]


def build(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_model_config(**overrides)).eval()


def test_softmax_attention_equals_explicit_math():
    model = build(n_kv_heads=2)
    attn = model.layers[0].mixer
    x = torch.randn(2, 10, 32)
    y, _ = attn(x)
    B, T, H, Hk, d = 2, 10, 4, 2, 8
    q = attn.q_proj(x).view(B, T, H, d).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, Hk, d).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, Hk, d).transpose(1, 2)
    q, k = RotaryPosition(32).rotate(q, k)
    k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)  # (B, H, T, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * d)
    torch.testing.assert_close(y, attn.o_proj(ref), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryPosition(64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def score(m, n):
        qm, _ = rope.rotate(q, q, offset=m)
        _, kn = rope.rotate(k, k, offset=n)
        return (qm * kn).sum()
    torch.testing.assert_close(score(5, 2), score(13, 10))
    torch.testing.assert_close(score(0, 7), score(20, 27))
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_sinusoidal_matches_vaswani_and_scales_token_embeddings():
    """PE(m, 2i) = sin(m / base^(2i/D)), PE(m, 2i+1) = cos(...), added to sqrt(D) * E[idx] (Vaswani §3.4-3.5),
    with the configured base; the scaled tokens are not drowned by the order-1 positions."""
    D, base = 6, 500.0
    pos = SinusoidalPosition(D, base)
    h = torch.randn(2, 4, D) * 0.02
    out = pos.embed(h, offset=3)
    expected = torch.empty(4, D)
    for m in range(4):
        for i in range(D // 2):
            angle = (m + 3) / base ** (2 * i / D)
            expected[m, 2 * i], expected[m, 2 * i + 1] = math.sin(angle), math.cos(angle)
    torch.testing.assert_close(out, h * math.sqrt(D) + expected)
    odd = SinusoidalPosition(5).table(3, 0, "cpu")  # odd D: the last column is a sine
    torch.testing.assert_close(odd[:, 4], torch.sin(torch.arange(3.0) / 10000 ** (4 / 5)))
    model = build(position="sinusoidal", d_model=64)  # embeddings at the model's own init
    idx = torch.randint(0, 97, (2, 16))
    pe = model.position.table(16, 0, "cpu")
    tokens = model.position.embed(model.embed_tokens(idx)) - pe  # (B, T, D): what h_0 carries of the tokens
    ratio = (tokens.std() / pe.std()).item()
    assert ratio > 0.1, f"tokens enter h_0 at {ratio:.3f} of the positions' scale: the positions drown them"


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_causality(overrides):
    model = build(**overrides)
    x = torch.randint(0, 97, (2, 24))
    y = x.clone()
    y[:, 13:] = torch.randint(0, 97, (2, 11))
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[:, :13], b[:, :13], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 13:], b[:, 13:])


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_cached_decoding_equals_full_forward(overrides):
    model = build(**overrides)
    x = torch.randint(0, 97, (2, 21))
    full, _ = model(x)
    state = model.init_state(2)
    pieces = []
    for start, end in [(0, 7), (7, 8), (8, 9), (9, 17), (17, 21)]:  # prefill, steps, a chunk, steps
        logits, state = model(x[:, start:end], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=1e-4)
    assert state.offset == 21


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_every_parameter_gets_a_gradient(overrides):
    model = build(**overrides).train()
    x = torch.randint(0, 97, (4, 32))
    logits, _ = model(x)
    (logits.logsumexp(-1).mean() + model.aux_loss()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_generation_end_to_end(overrides):
    model = build(**overrides)
    out = model.generate(torch.zeros(3, 4, dtype=torch.long), 6, temperature=0.9, top_k=20, top_p=0.9)
    assert out.shape == (3, 10)
    greedy_a = model.generate(torch.ones(1, 3, dtype=torch.long), 5, temperature=0)
    greedy_b = model.generate(torch.ones(1, 3, dtype=torch.long), 5, temperature=0)
    assert torch.equal(greedy_a, greedy_b)


def test_generation_stops_at_end_of_story():
    model = build()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: logits all 0 ...
    model.norm.weight.data.zero_()
    out = model.generate(torch.ones(2, 3, dtype=torch.long), 50, temperature=0, eos_id=0)
    assert out.shape[1] == 4 and (out[:, 3] == 0).all()  # argmax of all-equal logits is token 0 = eos


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(logits, 1.0, 2, None)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    nucleus = filter_logits(logits, 1.0, None, 0.7)  # 0.5 < 0.7 <= 0.8: keep the first two
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()


def test_tiny_model_overfits_one_batch():
    model = build().train()
    x = torch.randint(0, 97, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits, _ = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_param_count_and_flops():
    model = build()
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.flops_per_token(64) > 6 * model.num_params(non_embedding=True)
