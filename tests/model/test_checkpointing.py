"""Activation checkpointing per block (`model.checkpoint_blocks`): the same loss and gradients, fewer bytes kept
for backward, training only, and the config's values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import saved_activation_bytes, tiny_model_config

import model.transformer as transformer
from model.ffn.moe import MoEConfig
from model.transformer import Transformer
from train.config import ConfigError, load_config


def build(checkpoint_blocks, **overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_model_config(n_layers=4, checkpoint_blocks=checkpoint_blocks, **overrides))


def loss_and_grads(model: Transformer, idx: torch.Tensor, seed: int = 1):
    torch.manual_seed(seed)  # the dropout masks
    logits, _ = model(idx)
    loss = F.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()) + model.aux_loss()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("every", [True, 2, 3])
@pytest.mark.parametrize("overrides", [{}, {"dropout": 0.1}, {"ffn": "moe", "moe": MoEConfig(num_experts=4)},
                                       {"mixer": ["linear", "softmax"]}])
def test_same_loss_and_gradients(every, overrides):
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    plain_loss, plain_grads = loss_and_grads(build(False, **overrides), idx)
    model = build(every, **overrides)
    assert [model.checkpointed(i) for i in range(4)] == [i % int(every) == 0 for i in range(4)]
    loss, grads = loss_and_grads(model, idx)
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_fewer_activation_bytes_are_kept():
    plain = saved_activation_bytes(build(False), 2, 64)
    every_block = saved_activation_bytes(build(True), 2, 64)
    every_other = saved_activation_bytes(build(2), 2, 64)
    assert every_block < every_other < plain
    assert every_block < 0.5 * plain, (every_block, plain)  # the blocks' share is gone, the head's stays


def test_only_in_training_with_gradients(monkeypatch):
    model = build(True)
    calls = []
    real = transformer.checkpoint
    monkeypatch.setattr(transformer, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    idx = torch.randint(0, 97, (1, 8))
    model(idx)
    assert len(calls) == 4
    with torch.no_grad():
        model(idx)
    model.eval()
    model(idx)
    model.train()
    model(idx[:, :4], model.init_state(1))  # decoding
    assert len(calls) == 4


def test_an_moe_recompute_does_not_count_its_routing_twice():
    cfg = {"ffn": "moe", "moe": MoEConfig(num_experts=4, balance="bias")}
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    counts = []
    for every in (False, True):
        model = build(every, **cfg)
        layers = [layer.ffn for layer in model.layers]
        logits, _ = model(idx)
        model.notify("micro_batch_end")  # what LanguageModel.training_step does after the loss, before backward
        logits.sum().backward()  # the recompute leaves its loads in `load`; the next step clears them
        counts.append(torch.stack([m.step_load for m in layers]))
    assert torch.equal(counts[0], counts[1]) and counts[0].sum() == 4 * 2 * 16 * 2


def test_config_values():
    assert load_config(None, ["--model.checkpoint_blocks=true"]).model.checkpoint_blocks is True
    assert load_config(None, ["--model.checkpoint_blocks=2"]).model.checkpoint_blocks == 2
    assert load_config(None, {}).model.checkpoint_blocks is False
    with pytest.raises(ConfigError) as err:
        load_config(None, ["--model.checkpoint_blocks=-1"])
    assert str(err.value) == "model.checkpoint_blocks=-1: must be at least 0"
    with pytest.raises(ConfigError, match="model.checkpoint_blocks"):
        load_config(None, ["--model.checkpoint_blocks=often"])
