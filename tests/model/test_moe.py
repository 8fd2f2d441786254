"""MoE FFN: dense equivalence, routing against a per-token reference, aux losses by hand, gradients."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.ffn import FFNS
from model.ffn.moe import MoE, MoEConfig
from model.transformer import Transformer


def make_cfg(ffn="moe", **moe) -> ModelConfig:
    return ModelConfig(vocab_size=41, d_model=16, n_layers=2, n_heads=2, d_ff=24, ffn=ffn, moe=MoEConfig(**moe))


def make_moe(**moe) -> MoE:
    torch.manual_seed(0)
    m = MoE(make_cfg(**moe))
    with torch.no_grad():
        m.router.weight.normal_(0, 1.0)  # spread the router so that routing varies across tokens
    return m


def reference(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax router, top-k, renormalise for k > 1, weighted sum of experts (+ shared)."""
    out = []
    for tok in x.reshape(-1, x.shape[-1]):
        p = (m.router.weight @ tok).softmax(-1)
        top_p, top_i = p.topk(m.top_k)
        g = top_p / top_p.sum() if m.top_k > 1 else top_p
        y = sum(g[j] * m.experts[int(top_i[j])](tok[None])[0] for j in range(m.top_k))
        if m.shared_expert is not None:
            y = y + m.shared_expert(tok[None])[0]
        out.append(y)
    return torch.stack(out).view_as(x)


@pytest.mark.parametrize("expert", ["swiglu", "gelu"])
def test_one_expert_top1_equals_dense_ffn(expert):
    torch.manual_seed(0)
    cfg = make_cfg(num_experts=1, top_k=1, expert=expert)
    moe, dense = MoE(cfg), FFNS[expert](cfg)
    moe.experts[0].load_state_dict(dense.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(moe(x), dense(x))


@pytest.mark.parametrize("top_k,expert,shared", [(1, "swiglu", False), (2, "swiglu", False), (2, "gelu", True),
                                                 (1, "gelu", True), (4, "swiglu", False)])
def test_matches_per_token_reference(top_k, expert, shared):
    m = make_moe(num_experts=4, top_k=top_k, expert=expert, shared_expert=shared)
    x = torch.randn(3, 7, 16)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y, reference(m, x), rtol=1e-5, atol=1e-6)
    assert m.expert_share.shape == (4,) and torch.isclose(m.expert_share.sum(), torch.tensor(1.0))


def test_top2_routes_each_token_to_two_distinct_experts():
    m = make_moe(num_experts=4, top_k=2)
    seen = [[] for _ in m.experts]
    for e, expert in enumerate(m.experts):
        expert.register_forward_hook(lambda mod, inp, out, e=e: seen[e].append(inp[0]))
    x = torch.randn(2, 10, 16)
    m(x)
    tokens = x.reshape(-1, 16)
    hits = torch.zeros(len(tokens), dtype=torch.long)
    for rows in seen:
        for row in torch.cat(rows) if rows else []:
            match = (tokens == row).all(-1)
            assert match.sum() == 1
            hits += match.long()
    assert torch.all(hits == 2)  # two slots per token, and a token meets an expert at most once (rows match once)
    for rows in seen:
        if rows:
            assert len(torch.cat(rows).unique(dim=0)) == len(torch.cat(rows))


def test_aux_loss_matches_hand_computation():
    m = make_moe(num_experts=3, top_k=2, aux_loss_coef=0.1, z_loss_coef=0.01)
    x = torch.randn(1, 5, 16)
    m(x)
    logits = x[0] @ m.router.weight.T  # (5, 3)
    p = logits.softmax(-1)
    chosen = torch.zeros(3)
    for s in range(5):
        for e in p[s].topk(2).indices:
            chosen[e] += 1
    f = chosen / 10  # 5 tokens x 2 slots
    balance = 3 * sum(f[i] * p[:, i].mean() for i in range(3))
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    torch.testing.assert_close(m.aux_loss, 0.1 * balance + 0.01 * z)
    torch.testing.assert_close(m.expert_share, f)


def test_balanced_routing_gives_coef():
    m = make_moe(num_experts=2, top_k=1, aux_loss_coef=0.3, z_loss_coef=0.0)
    with torch.no_grad():
        m.router.weight[1] = -m.router.weight[0]  # logits (a, -a) for x and (-a, a) for -x
    x = torch.randn(1, 3, 16)
    m(torch.cat([x, -x], dim=1))
    torch.testing.assert_close(m.expert_share, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(m.aux_loss, torch.tensor(0.3))


def test_all_experts_and_router_get_gradients():
    m = make_moe(num_experts=4, top_k=2, shared_expert=True)
    y = m(torch.randn(4, 16, 16))
    (y.pow(2).mean() + m.aux_loss).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_top1_router_gets_gradient_from_the_output():
    m = make_moe(num_experts=4, top_k=1, aux_loss_coef=0.0, z_loss_coef=0.0)
    m(torch.randn(2, 8, 16)).sum().backward()
    assert m.router.weight.grad.abs().sum() > 0  # through the raw softmax gate (Switch)


def test_causal_in_model_and_aux_loss_collected():
    torch.manual_seed(0)
    model = Transformer(make_cfg(num_experts=4, top_k=2))
    idx = torch.randint(0, 41, (2, 12))
    other = idx.clone()
    other[:, 6:] = torch.randint(0, 41, (2, 6))
    a, b = model(idx)[0], model(other)[0]
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=1e-5, atol=1e-6)  # an expert's batch changes: rounding
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-2
    aux = model.aux_loss()
    assert aux.ndim == 0 and aux > 0 and aux.requires_grad


def test_inactive_params_and_flops():
    cfg = make_cfg(num_experts=4, top_k=1)
    m = MoE(cfg)
    per_expert = sum(p.numel() for p in m.experts[0].parameters())
    assert per_expert == 3 * 16 * 24 and m.inactive_params == 3 * per_expert
    moe_model, dense_model = Transformer(cfg), Transformer(make_cfg(ffn="swiglu"))
    router = 2 * 16 * 4  # a token pays for the router and exactly one expert: dense FLOPs + router
    assert moe_model.flops_per_token(8) == dense_model.flops_per_token(8) + 6 * router


def test_bad_config_messages():
    with pytest.raises(ValueError, match="swiglu, gelu"):
        MoE(make_cfg(expert="relu"))
    with pytest.raises(ValueError, match="top_k"):
        MoE(make_cfg(num_experts=2, top_k=3))


def test_bf16_autocast_routes_in_fp32():
    m = make_moe(num_experts=4, top_k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 6, 16))
    assert torch.isfinite(y).all() and m.aux_loss.dtype == torch.float32
