"""The memory estimate (`python -m train.estimate`): parameter counts match the real model, the activation
formulas match the tensors autograd actually keeps (measured on CPU with saved-tensor hooks), sharding
divides the model state, and the CLI prints its table."""

from __future__ import annotations

import pytest
import torch
from conftest import saved_activation_bytes

from model.config import ModelConfig
from model.ffn import FFNS
from model.ffn.moe import MoEConfig
from model.mixers import MIXERS
from model.mixers.gau import GAUConfig
from model.mixers.linear import LinearAttentionConfig
from model.mixers.mamba import MambaConfig
from model.transformer import Transformer
from train.config import load_config
from train.estimate.breakdown import estimate, head_bytes, layer_bytes, main, parse_size
from train.estimate.sizes import count_params, model_config
from train.optim import build_optimizer, param_groups, remember_shapes
from train.optimizers import OPTIMIZERS

MODELS = {
    "softmax": dict(mixer="softmax", ffn="swiglu"),
    "gqa-gelu": dict(mixer="softmax", ffn="gelu", n_kv_heads=1),
    "moe": dict(mixer="softmax", ffn="moe", moe=MoEConfig(num_experts=4, top_k=2, shared_expert=True)),
    "linear": dict(mixer="linear", ffn="swiglu", linear=LinearAttentionConfig(chunk_size=16)),  # T > chunk
    "gau": dict(mixer="gau", ffn="auto"),
    "gau-chunked": dict(mixer="gau", ffn="auto", gau=GAUConfig(form="chunked", chunk_size=16, qk_dim=32)),
    "mamba-hybrid": dict(mixer=["mamba", "softmax"], ffn="swiglu", mamba=MambaConfig(d_state=8, chunk_size=8)),
    "untied-sinusoidal": dict(tie_embeddings=False, position="sinusoidal"),
}


def config(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, max_seq_len=32, **kw)


@pytest.mark.parametrize("name", MODELS)
def test_param_count_matches_the_model(name):
    cfg = config(**MODELS[name])
    model = Transformer(cfg)
    counted = count_params(cfg)
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    assert counted["block"] == max(sum(p.numel() for p in layer.parameters()) for layer in model.layers)
    assert counted["non_embedding"] == model.num_params(non_embedding=True)
    param_groups(model, 0.0)  # tags the hidden matrices
    assert counted["hidden_matrix"] == sum(p.numel() for p in model.parameters() if p._hidden_matrix)


REGISTERED = {f"mixer-{name}": dict(mixer=name) for name in MIXERS} | {f"ffn-{name}": dict(ffn=name) for name in FFNS}
MODELS.update({k: v for k, v in REGISTERED.items() if k not in MODELS})  # every registered component, at defaults

MEASURED = [(name, "32") for name in REGISTERED] + [
    (name, precision) for name in ["softmax", "gqa-gelu", "moe", "linear", "gau", "gau-chunked", "mamba-hybrid"]
            for precision in ["32", "bf16-mixed", "bf16-true"]
            if (name, precision) not in {("moe", "bf16-true"), ("mamba-hybrid", "bf16-true")}]  # slow bf16 CPU kernels


@pytest.mark.parametrize(("name", "precision"), MEASURED)
def test_activation_estimate_matches_a_measured_forward(name, precision):
    torch.manual_seed(0)
    cfg = config(**MODELS[name])
    model = Transformer(cfg).to(torch.bfloat16 if precision == "bf16-true" else torch.float32)
    T = cfg.max_seq_len
    # one sample's worth = the difference between batch 2 and batch 1 (drops per-step constants: weight casts)
    measured = saved_activation_bytes(model, 2, T, precision) - saved_activation_bytes(model, 1, T, precision)
    layers = sum(layer_bytes(cfg, m, cfg.layer_ffn(m), T, precision) for m in cfg.layer_mixers())
    estimated = T * (layers + head_bytes(cfg, precision)[0])
    assert estimated == pytest.approx(measured, rel=0.1), (estimated / measured)


def test_sharding_divides_the_model_state(tiny_corpus):
    cfg = load_config(None, {"model": {"d_model": 256, "n_layers": 4, "n_heads": 4},
                             "data": {"vocab_size": 1000, "seq_len": 128}, "train": {"precision": "bf16-mixed"}})
    single = estimate(cfg, world=1)
    cfg.train.strategy = "fsdp"
    sharded = estimate(cfg, world=8)
    P = single["params"]["total"]
    assert single["static"] == pytest.approx((4 + 4 + 8 + 2) * P)  # fp32 weights, grads, AdamW + bf16 copies
    gathered = 2 * (sharded["params"]["root"] + 2 * sharded["params"]["block"])
    assert sharded["static"] == pytest.approx(16 * P / 8 + gathered)
    assert sharded["activations_per_sample"] == single["activations_per_sample"]  # FSDP does not shard activations


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_optimizer_state_is_what_its_recipe_declares(name):
    """The state an optimizer really keeps after a step, per parameter (hidden matrices and the rest), is what its
    recipe's `state` says, and the estimate's row names it and counts it."""
    if name == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    cfg = load_config(None, {"model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "mixer": ["mamba", "softmax"]},
                             "data": {"vocab_size": 64, "seq_len": 16}, "train": {"optimizer": name}})
    torch.manual_seed(0)
    model = Transformer(model_config(cfg))
    remember_shapes(model)
    optimizer, _ = build_optimizer(model, cfg.train)
    model(torch.randint(0, 64, (2, 16)))[0].float().logsumexp(-1).mean().backward()
    optimizer.step()
    kept = {kind: 0 for kind in ("hidden", "other")}  # state elements, by the kind of their parameter
    for p in model.parameters():
        kind = "hidden" if p._hidden_matrix else "other"
        kept[kind] += sum(t.numel() for t in optimizer.state[p].values() if torch.is_tensor(t) and t.dim() > 0)
    hidden = sum(p.numel() for p in model.parameters() if p._hidden_matrix)
    recipe, P = OPTIMIZERS[name], model.num_params()
    assert kept == {kind: len(recipe.state[kind]) * n for kind, n in (("hidden", hidden), ("other", P - hidden))}
    rows = {row: full for row, _, full in estimate(cfg, world=1)["rows"]}
    assert rows[f"{name} {recipe.describe_state()}"] == 4 * sum(kept.values())


def test_muon_state_differs_from_adamw_and_is_named():
    cfg = load_config(None, {"data": {"vocab_size": 1000, "seq_len": 128}})
    adamw = estimate(cfg, world=1)
    cfg.train.optimizer = "muon"
    muon = estimate(cfg, world=1)
    P, H = muon["params"]["total"], muon["params"]["hidden_matrix"]
    assert dict((r[0], r[1]) for r in adamw["rows"])["adamw m, v"] == 8 * P
    assert dict((r[0], r[1]) for r in muon["rows"])["muon momentum (matrices), m, v (rest)"] == 4 * H + 8 * (P - H)
    assert 0 < H < P and muon["static"] == adamw["static"] - 4 * H


def test_cli_prints_the_table_and_the_largest_batch(capsys):
    main(["--config", "configs/pretrain/fsdp_110m.yaml", "--memory", "80GiB", "--devices", "4"])
    out = capsys.readouterr().out
    assert "strategy fsdp, 4 device(s)" in out and "FSDP gathered units" in out
    assert "adamw m, v" in out and "activations (B=32, T=1024)" in out
    largest = int(out.rsplit("the largest that fits: ", 1)[1].split()[0])
    assert 32 <= largest < 1000
    main(["--config", "configs/pretrain/fsdp_110m.yaml", "--memory", "8GiB", "--train.strategy=ddp"])
    assert "does NOT fit" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/pretrain/fsdp_110m.yaml", "--memory", "lots"])
    assert exit_info.value.code == 2 and "--memory 'lots'" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("80GiB") == 80 * 2**30 and parse_size("24GB") == 24 * 10**9 and parse_size("512mib") == 2**29
