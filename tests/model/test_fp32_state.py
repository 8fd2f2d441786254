"""The recurrent mixers that keep their state in fp32 (gated_deltanet, rwkv7): every parameter gets a gradient,
bf16 autocast keeps the state in fp32, and bf16 weights meet the fp32 core without a dtype error."""

from __future__ import annotations

import pytest
import torch
from test_gated_deltanet import make as make_gated_deltanet
from test_rwkv7 import make as make_rwkv7
from torch.testing import assert_close

MAKE = {"gated_deltanet": make_gated_deltanet, "rwkv7": make_rwkv7}  # a small mixer of width 32 each


@pytest.mark.parametrize("name", MAKE)
def test_every_parameter_gets_a_gradient(name):
    m = MAKE[name]().train()
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for param_name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", MAKE)
def test_bf16_autocast_keeps_fp32_state(name):
    m = MAKE[name]()
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (_, M) = m(x, m.init_cache(1, x.device, torch.bfloat16))
    assert M.dtype == torch.float32 and torch.isfinite(y).all()
    assert_close(y.float(), m(x)[0], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", MAKE)
def test_bf16_weights_run_with_an_fp32_core(name):
    """bf16-true: bf16 parameters (norm weights included) meet the fp32 core without a dtype error."""
    m = MAKE[name]().to(torch.bfloat16).train()
    y, _ = m(torch.randn(2, 12, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
