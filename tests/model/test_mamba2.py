"""Mamba-2 mixer: the chunked SSD form vs the token-by-token recurrence (outputs, states, gradients), causality,
cached decoding in pieces, strong decays, init, config errors, the kernel backends' CPU messages, the activation
estimate. Kernel parity on a GPU is tests/model/test_kernels.py (every registered backend, mamba2's included)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_decodes_like_full_forward, assert_mixer_is_causal, decode_in_pieces, saved_activation_bytes
from torch.testing import assert_close

from model.config import ModelConfig
from model.mixers import kernels
from model.mixers.mamba2 import CausalConv, Mamba2, Mamba2Config, ssd_chunked
from model.transformer import Transformer
from train.ablate.param_match import count_non_embedding, solve_width, width_knob
from train.config import ConfigError, load_config
from train.estimate.breakdown import layer_bytes

F64 = dict(rtol=1e-10, atol=1e-10)


def config(**mamba2) -> ModelConfig:
    mamba2 = {"d_state": 8, "headdim": 16, "chunk_size": 8, **mamba2}  # E = 64: H = 4 heads of 16, N = 8
    return ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, mamba2=Mamba2Config(**mamba2))


def make(dtype=torch.float64, dt_bias=(-3.0, 2.0), **mamba2) -> Mamba2:
    torch.manual_seed(0)
    m = Mamba2(config(**mamba2)).to(dtype)
    with torch.no_grad():  # larger weights than the 0.02 init, and steps dt from 0.05 to 2 (a_t down to e^-32)
        for lin in (m.in_proj, m.out_proj):
            lin.weight.normal_(0, 0.3)
        m.dt_bias.uniform_(*dt_bias)
        m.D.normal_()
        m.norm_weight.normal_(1, 0.2)
    return m


def recurrence(x, dt, A, D, Bm, Cm, h):
    """h_t = e^{dt_t A} h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t one token at a time -> (y, h_T)."""
    ys = []
    for t in range(x.shape[1]):
        new = torch.einsum("bhp,bn->bhpn", dt[:, t, :, None] * x[:, t], Bm[:, t])  # dt_t x_t B_t^T
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + new
        ys.append(torch.einsum("bhpn,bn->bhp", h, Cm[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), h


def reference(m: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """The block from the module's weights with conv1d, the recurrence one token at a time and the gated norm."""
    B, T, _ = u.shape
    E, N, H, P, K = m.d_inner, m.d_state, m.n_heads, m.headdim, m.d_conv
    z, xBC, dt = m.in_proj(u).split([E, E + 2 * N, H], dim=-1)
    xBC = F.conv1d(xBC.transpose(1, 2), m.conv_weight[:, None], m.conv_bias, padding=K - 1, groups=E + 2 * N)
    x, Bm, Cm = F.silu(xBC[..., :T]).transpose(1, 2).split([E, N, N], dim=-1)
    x = x.reshape(B, T, H, P)
    dt = F.softplus(dt + m.dt_bias)  # (B, T, H)
    y, _ = recurrence(x, dt, -torch.exp(m.A_log), m.D, Bm, Cm, u.new_zeros(B, H, P, N))
    y = y.reshape(B, T, E) * F.silu(z)
    return m.out_proj(y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.eps) * m.norm_weight)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 21, 32])  # T = 21: not a multiple of 5 or 8, below 32
def test_chunked_matches_recurrence(chunk_size):
    m = make(chunk_size=chunk_size)
    u = torch.randn(2, 21, 32, dtype=torch.float64)
    y, cache = m(u)
    assert cache is None and y.shape == u.shape
    assert_close(y, reference(m, u), **F64)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
def test_ssd_continues_a_state_and_returns_the_last(chunk_size):
    torch.manual_seed(0)
    B, T, H, P, N = 2, 13, 3, 4, 5
    d = dict(dtype=torch.float64)
    x, dt, Bm, Cm = torch.randn(B, T, H, P, **d), 2 * torch.rand(B, T, H, **d), torch.randn(B, T, N, **d), \
        torch.randn(B, T, N, **d)  # dt up to 2, A down to -4: a_t from 1 to e^-8
    A, D, h0 = -4 * torch.rand(H, **d), torch.randn(H, **d), torch.randn(B, H, P, N, **d)
    y, last = ssd_chunked(x, dt, A, D, Bm, Cm, h0, chunk_size)
    y_ref, last_ref = recurrence(x, dt, A, D, Bm, Cm, h0)
    assert_close(y, y_ref, **F64)
    assert_close(last, last_ref, **F64)
    assert ssd_chunked(x, dt, A, D, Bm, Cm, None, chunk_size)[1] is None  # training: no final state


def test_long_strong_decay_keeps_fp32_precision():
    """Steps of 4 for 96 tokens, then of 1e-3: the log-decay from the start reaches -6000, while the decays
    between the later chunks stay near 1. The chunk-to-chunk decays are summed from chunk log-decays, not taken
    as differences of sums from the start (in fp32 those lose ~|c| * 6e-8 in the exponent: 4e-4 here)."""
    torch.manual_seed(0)
    B, T, H, P, N = 1, 160, 2, 4, 3
    x, Bm, Cm = torch.randn(B, T, H, P), torch.randn(B, T, N), torch.randn(B, T, N)
    dt = torch.where(torch.arange(T)[:, None] < 96, 4.0, 1e-3).expand(B, T, H).contiguous()
    A, D = torch.tensor([-16.0, -1.0]), torch.zeros(H)
    y, _ = ssd_chunked(x, dt, A, D, Bm, Cm, None, 8)
    args = [t.double() for t in (x, dt, A, D, Bm, Cm)]
    y_ref, _ = recurrence(*args, torch.zeros(B, H, P, N, dtype=torch.float64))
    assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)


def test_gradients_match_recurrence():
    m = make(chunk_size=5)
    u = torch.randn(2, 13, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 13, 32, dtype=torch.float64)
    grads = torch.autograd.grad((m(u)[0] * w).sum(), [u, *m.parameters()])
    expected = torch.autograd.grad((reference(m, u) * w).sum(), [u, *m.parameters()])
    for name, g, r in zip(["input", *dict(m.named_parameters())], grads, expected):
        assert_close(g, r, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("past,T", [(0, 6), (3, 6), (1, 6), (0, 2), (3, 1)])  # K = 4; T = 1, 2: below K - 1
def test_causal_conv_matches_conv1d_and_gradcheck(past, T):
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(2, past + T, 5, **d), torch.randn(5, 4, **d), torch.randn(5, **d)
    expected = F.conv1d(F.pad(x.transpose(1, 2), (3 - past, 0)), w[:, None], b, groups=5).transpose(1, 2)
    assert_close(CausalConv.apply(x, w, b, past), expected, **F64)
    assert torch.autograd.gradcheck(lambda *a: CausalConv.apply(*a, past), (x, w, b))


def test_strong_decay_stays_finite_in_fp32():
    m = make(torch.float32, dt_bias=(4.0, 6.0), chunk_size=32)  # dt ~ 5, A up to 16: a_t ~ e^-80 per token
    u = torch.randn(2, 40, 32)
    y = m(u)[0]
    y.square().sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.no_grad():
        assert_close(y.double(), reference(m.double(), u.double()), rtol=1e-4, atol=1e-4)


def test_causal():
    assert_mixer_is_causal(make(torch.float32), 32)


@pytest.mark.parametrize("sizes", [[21], [7] + [1] * 14, [3, 9, 1, 8], [2, 2, 17], [8, 8, 5], [1] * 21])
def test_cached_decoding_equals_full_forward(sizes):
    m = make(torch.float32)
    u = torch.randn(2, 21, 32)
    with torch.no_grad():
        y, (conv_state, ssm_state) = decode_in_pieces(m, u, sizes)
        assert_close(y, m(u)[0], rtol=1e-5, atol=1e-5)
    assert conv_state.shape == (2, 3, 64 + 2 * 8) and ssm_state.shape == (2, 4, 16, 8)
    assert ssm_state.dtype == torch.float32


def test_every_parameter_gets_a_gradient():
    m = make(torch.float32)
    m(torch.randn(2, 21, 32))[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_keeps_fp32_state():
    m = make(torch.float32)
    u = torch.randn(1, 12, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (_, ssm_state) = m(u, m.init_cache(1, u.device, torch.float32))
    assert ssm_state.dtype == torch.float32 and torch.isfinite(y).all()
    y32 = m(u)[0]
    assert (y.float() - y32).norm() / y32.norm() < 0.02  # bf16 projections and conv, fp32 core


def test_init_survives_model_init():
    cfg = config(chunk_size=4)
    cfg.mixer = "mamba2"
    model = Transformer(cfg)
    m = model.layers[0].mixer
    A = torch.exp(m.A_log)
    assert A.min() >= 1 and A.max() <= 16 and torch.all(m.D == 1) and torch.all(m.norm_weight == 1)
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert m.conv_weight.abs().max() <= 0.5 and m.conv_weight.std() > 0  # U(+-1/sqrt(4))
    assert m.out_proj.weight.std() < model.cfg.init_std  # the residual projection is scaled
    assert {id(p) for p in (m.A_log, m.D, m.dt_bias)} <= {id(p) for p in model.no_decay_parameters()}
    assert {"in_proj", "out_proj"} <= set(model.lora_targets())


@pytest.mark.parametrize("mixer", ["mamba2", ["mamba2", "softmax"]])
def test_tiny_transformer_decodes_and_generates(mixer):
    torch.manual_seed(0)
    cfg = config(chunk_size=4)
    cfg.mixer = mixer
    assert_decodes_like_full_forward(Transformer(cfg).eval(), 50)


def test_bad_headdim_is_one_line():
    with pytest.raises(ConfigError, match=r"model\.mamba2\.headdim=48 must divide .* = 64; .*model\.mamba2\.heads") \
            as err:  # when the config is read, before any model is built
        load_config(None, {"model": {"mixer": ["softmax", "mamba2"], "d_model": 32, "mamba2": {"headdim": 48}}})
    assert "\n" not in str(err.value)
    load_config(None, {"model": {"mixer": "softmax", "d_model": 32, "mamba2": {"headdim": 48}}})  # mamba2 unused
    with pytest.raises(ConfigError, match=r"model\.mamba2\.headdim=0: must be at least 1"):
        load_config(None, {"model": {"mixer": "mamba2", "mamba2": {"headdim": 0}}})
    with pytest.raises(ConfigError, match=r"model\.mamba2\.backend: invalid choice 'cuda'"):
        load_config(None, {"model": {"mamba2": {"backend": "cuda"}}})


def test_heads_is_the_width_knob_of_match_params():
    m = Mamba2(config(heads=3))  # E = 3 * 16 = 48: not expand * d_model, and no divisibility to meet
    assert m.d_inner == 48 and m(torch.randn(1, 5, 32))[0].shape == (1, 5, 32)
    cfg = load_config(None, {"model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "mixer": "mamba2", "ffn": "none",
                                       "mamba2": {"headdim": 16}}, "data": {"vocab_size": 64}})
    assert width_knob(cfg) == "model.mamba2.heads"
    counts = []
    for heads in range(1, 6):  # every integer width builds
        cfg.model.mamba2.heads = heads
        counts.append(count_non_embedding(cfg))
    assert counts == sorted(set(counts))
    target = (counts[2] + counts[3]) / 2
    assert solve_width(cfg, "model.mamba2.heads", target)[0] in (3, 4)


@pytest.mark.parametrize("backend", ["fla", "mamba_ssm"])
def test_a_missing_kernel_package_is_one_line(monkeypatch, backend):
    for module in [m for m in sys.modules if m.split(".")[0] == backend]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, backend, None)  # `import backend...` raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[kernels\]"\); use model\.mamba2\.backend=torch') \
            as err:
        Mamba2(config(backend=backend))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("backend", ["fla", "mamba_ssm"])
def test_cpu_tensors_with_a_kernel_backend_are_one_line(monkeypatch, backend):
    def kernel(*args, **kwargs):
        raise AssertionError("the kernel was called with CPU tensors")

    monkeypatch.setattr(kernels, "load", lambda *args: kernel)
    m = Mamba2(config(backend=backend))
    with pytest.raises(RuntimeError, match=rf"model\.mamba2\.backend={backend} runs on CUDA tensors only") as err:
        m(torch.randn(2, 8, 32))
    assert "\n" not in str(err.value) and "backend=torch" in str(err.value)
    with torch.no_grad():  # decoding always runs the torch path
        assert m(torch.randn(2, 3, 32), m.init_cache(2, "cpu", torch.float32))[0].shape == (2, 3, 32)


@pytest.mark.parametrize("chunk_size,precision", [(8, "32"), (32, "32"), (8, "bf16-mixed")])
def test_activation_estimate_within_10_percent(chunk_size, precision):
    torch.manual_seed(0)
    cfg = config(chunk_size=chunk_size)
    cfg.mixer, cfg.max_seq_len = "mamba2", 32
    model = Transformer(cfg)
    measured = saved_activation_bytes(model, 2, 32, precision) - saved_activation_bytes(model, 1, 32, precision)
    s = 4 if precision == "32" else 2
    kept = (4 + 4) * cfg.d_model + s * cfg.d_model + 4 * cfg.vocab_size  # final norm, head input, log-softmax
    layers = sum(layer_bytes(cfg, m, cfg.layer_ffn(m), 32, precision) for m in cfg.layer_mixers())
    assert 32 * (layers + kept) == pytest.approx(measured, rel=0.1)
