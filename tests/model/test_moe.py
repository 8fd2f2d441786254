"""MoE FFN: dense equivalence, routing against a per-token reference, aux losses by hand, gradients; the sync-free
dispatch (grouped GEMM, dense fallback, one graph under torch.compile) and balance=bias (DeepSeek-V3 loss-free)."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.ffn import FFNS
from model.ffn.moe import MoE, MoEConfig, dense_ffns
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


@pytest.mark.parametrize("expert", sorted(dense_ffns()))  # every FFN an expert can be
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
    x = torch.randn(2, 10, 16)
    _, _, top_i, gates = m.route(x.reshape(-1, 16))
    assert top_i.shape == (20, 2) and torch.all(top_i[:, 0] != top_i[:, 1])  # two slots, two distinct experts
    torch.testing.assert_close(gates.sum(-1), torch.ones(20))
    m(x)
    counts = torch.bincount(top_i.flatten(), minlength=4)
    torch.testing.assert_close(m.expert_share, counts.float() / 40)


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


# --- sync-free dispatch: the grouped GEMM and the dense fallback, one graph under torch.compile ---------------


def dense_only(m: MoE) -> MoE:
    m.grouped_linears = lambda dtype: None  # force the dense fallback
    return m


@pytest.mark.parametrize("path", ["grouped", "dense"])
@pytest.mark.parametrize("top_k,expert,shared", [(1, "swiglu", False), (2, "gelu", True), (3, "swiglu", False)])
def test_both_dispatch_paths_match_the_reference(path, top_k, expert, shared):
    m = make_moe(num_experts=4, top_k=top_k, expert=expert, shared_expert=shared, aux_loss_coef=0.0,
                 z_loss_coef=0.0)
    assert m.grouped_linears(torch.float32) is not None  # eager fp32 on CPU: the grouped GEMM
    if path == "dense":
        dense_only(m)
    x = torch.randn(3, 7, 16, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, reference(m, x), rtol=1e-5, atol=1e-6)
    y.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    x2 = x.detach().requires_grad_()
    reference(m, x2).pow(2).sum().backward()  # token by token: the gradients of the routing as written
    for name, p in m.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-6)


def test_grouped_and_dense_agree_under_bf16_autocast():
    m = make_moe(num_experts=4, top_k=2)
    x = torch.randn(2, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.grouped_linears(torch.bfloat16) is not None
        grouped = m(x)
        dense = dense_only(m)(x)
    torch.testing.assert_close(grouped.float(), dense.float(), rtol=2e-2, atol=2e-2)


def test_lora_or_unaligned_experts_take_the_dense_path():
    from model.lora import LoRALinear

    m = make_moe(num_experts=2, top_k=1)
    m.experts[1].up_proj = LoRALinear(m.experts[1].up_proj, r=2, alpha=4)
    assert m.grouped_linears(torch.float32) is None
    assert torch.isfinite(m(torch.randn(1, 4, 16))).all()
    odd = MoE(ModelConfig(vocab_size=41, d_model=12, n_layers=1, n_heads=2, d_ff=20, ffn="moe"))
    assert odd.grouped_linears(torch.float32) is None  # rows not a multiple of 8: grouped_mm's 16-byte alignment


@pytest.mark.parametrize("balance", ["aux", "bias"])
def test_forward_is_one_graph_under_torch_compile(balance):
    """fullgraph=True fails on any graph break: no .item(), no data-dependent shapes or Python branches (the
    'eager' backend runs Dynamo's tracing only, quick on CPU)."""
    torch._dynamo.reset()
    m = make_moe(num_experts=4, top_k=2, balance=balance).train()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    x = torch.randn(2, 5, 16)
    y = compiled(x)  # fp32: the dense path (grouped_mm's compiled form is bf16 only)
    torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compiled(x)  # bf16: the grouped GEMM
    explained = torch._dynamo.explain(m)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


# --- balance=bias: DeepSeek-V3's auxiliary-loss-free balancing ------------------------------------------------


def imbalance(load: torch.Tensor) -> float:
    """max load / mean load: 1 is perfectly even."""
    return float(load.max() / load.float().mean())


def test_bias_balancing_evens_a_skewed_router():

    m = make_moe(num_experts=4, top_k=1, balance="bias", bias_update_rate=0.05).train()
    m.router.weight.requires_grad_(False)  # frozen: only the bias can move the load
    shift = torch.randn(16)
    with torch.no_grad():
        m.router.weight[0] += 0.3 * shift  # expert 0 scores higher on every token of the shifted inputs
    gen = torch.Generator().manual_seed(0)
    loads = []
    for _ in range(150):
        m(torch.randn(4, 16, 16, generator=gen) + shift)  # one simulated optimizer step, one micro-batch
        m.micro_batch_end()
        loads.append(m.step_load.clone())
        m.optimizer_step_end()
        assert m.step_load is None and m.load is None
    first, last = imbalance(loads[0]), imbalance(torch.stack(loads[-20:]).sum(0))
    print(f"imbalance (max / mean load): step 1 {first:.2f}, last 20 steps {last:.3f}")
    assert first > 2.0 and last < 1.15, (first, last)
    assert m.route_bias[0] < 0 and m.route_bias.argmin() == 0  # the favoured expert is pushed down


def test_gates_use_the_unbiased_probabilities():
    m = make_moe(num_experts=4, top_k=2, balance="bias")
    with torch.no_grad():
        m.route_bias.copy_(torch.tensor([100.0, 100.0, 0.0, 0.0]))  # forces experts 0 and 1 for every token
    x = torch.randn(2, 6, 16)
    _, probs, top_i, gates = m.route(x.reshape(-1, 16))
    assert torch.equal(top_i.sort(-1).values, torch.tensor([[0, 1]]).expand(12, 2))
    chosen = probs.gather(-1, top_i)
    torch.testing.assert_close(gates, chosen / chosen.sum(-1, keepdim=True))  # the router's own probs
    y = m(x)  # and the output is the per-token sum with those experts and gates
    expected = sum(gates[:, j, None] * torch.stack([m.experts[int(e)](t[None])[0] for e, t in
                                                    zip(top_i[:, j], x.reshape(-1, 16))]) for j in range(2))
    torch.testing.assert_close(y.reshape(-1, 16), expected, rtol=1e-5, atol=1e-6)
    m.route_bias.zero_()  # no bias: the same routing as balance=aux
    aux = make_moe(num_experts=4, top_k=2)
    torch.testing.assert_close(m(x), aux(x))


def test_bias_mode_loss_is_the_z_loss_alone():
    m = make_moe(num_experts=3, top_k=2, balance="bias", aux_loss_coef=0.5, z_loss_coef=0.01)
    x = torch.randn(1, 5, 16)
    m(x)
    logits = x[0] @ m.router.weight.T
    torch.testing.assert_close(m.aux_loss, 0.01 * (torch.logsumexp(logits, -1) ** 2).mean())


def test_loads_count_training_forwards_with_gradients_only():

    m = make_moe(num_experts=4, top_k=2, balance="bias").train()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        m(x)  # a reference or sampling pass
    m.eval()
    m(x)
    assert m.load is None
    m.train()
    m(x)
    m(x)  # two micro-batches' worth
    m.micro_batch_end()
    assert m.step_load.sum() == 2 * 2 * 10 and m.load is None
    m.step_skipped()  # a skipped step forgets them
    assert m.step_load is None


def test_route_bias_is_checkpoint_state():
    m = make_moe(num_experts=4, top_k=2, balance="bias")
    assert "route_bias" in m.state_dict() and "route_bias" not in make_moe().state_dict()  # aux runs: keys as before
    with torch.no_grad():
        m.route_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    other = MoE(make_cfg(num_experts=4, top_k=2, balance="bias"))
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.route_bias, m.route_bias)
    m = m.to(torch.bfloat16)  # bf16-true: the weights are cast, the bias keeps its fp32 steps
    assert m.router.weight.dtype == torch.bfloat16 and m.route_bias.dtype == torch.float32
    assert torch.equal(m.route_bias, other.route_bias)


def test_resumed_run_continues_the_bias_exactly(tiny_corpus, tmp_path):
    from conftest import stop_at, tiny_train_overrides

    from train.config import load_config
    from train.run import pretrain
    from train.rundir.checkpoint import read_checkpoint

    extra = {"model.ffn": "moe", "model.moe.balance": "bias", "model.moe.bias_update_rate": 0.01,
             "train.max_steps": 6, "train.ckpt_every": 3, "train.val_every": 6, "train.num_samples": 0}

    def biases(path):
        state = read_checkpoint(path)["state_dict"]
        return {k: v for k, v in state.items() if k.endswith("route_bias")}

    full = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path / "full", **extra)))
    expected = biases(full / "checkpoints" / "last.ckpt")
    assert len(expected) == 2 and all(v.abs().sum() > 0 for v in expected.values())  # both layers moved
    halted = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path / "part", **extra)), [stop_at(3)])
    assert read_checkpoint(halted / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert all(v.abs().sum() > 0 for v in biases(halted / "checkpoints" / "last.ckpt").values())
    resumed = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path / "part",
                                                              **{**extra, "train.resume": True})))
    got = biases(resumed / "checkpoints" / "last.ckpt")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-7)
    from train.rundir.load import load_run

    _, _, model = load_run(resumed)  # the final weights carry the bias too
    torch.testing.assert_close(model.layers[0].ffn.route_bias, expected["model.layers.0.ffn.route_bias"])


def _all_reduce_worker(rank: int, world: int, store_path: str, out_path: str) -> None:
    import torch.distributed as dist


    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    m = MoE(make_cfg(num_experts=4, top_k=1, balance="bias", bias_update_rate=0.1))
    m.step_load = torch.tensor([[9, 1, 1, 1], [0, 0, 0, 12]][rank])  # rank 0 overloads expert 0, rank 1 expert 3
    m.optimizer_step_end()
    torch.save(m.route_bias, f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_bias_update_is_all_reduced_and_identical_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "bias")), nprocs=2)
    b0, b1 = (torch.load(tmp_path / f"bias.{r}") for r in range(2))
    assert torch.equal(b0, b1)  # summed loads [9, 1, 1, 13], mean 6: experts 0 and 3 down, 1 and 2 up
    torch.testing.assert_close(b0, torch.tensor([-0.1, 0.1, 0.1, -0.1]))


def test_bad_balance_values_are_refused_in_one_line():
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, ["--model.moe.balance=no-such-balance"])
    assert str(err.value) == "model.moe.balance: invalid choice 'no-such-balance'; valid choices: aux, bias"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["--model.moe.bias_update_rate=-0.001"])
    assert str(err.value) == "model.moe.bias_update_rate=-0.001: must be at least 0.0"
    assert "\n" not in str(err.value)
    assert load_config(None, ["--model.moe.balance=bias"]).model.moe.balance == "bias"
