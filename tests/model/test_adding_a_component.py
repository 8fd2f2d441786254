"""The component contract end to end: a mixer, an FFN and an optimizer defined HERE, registered with one line each,
get causality, cached decoding, gradients, init, LoRA targets, `train.estimate`, FLOPs, `match: params`, training
and an ablation run with no edit to any other file. A component that leaves a piece of the contract out is
refused when it is registered."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import (
    assert_decodes_like_full_forward,
    assert_mixer_is_causal,
    saved_activation_bytes,
    tiny_model_config,
    tiny_train_overrides,
)
from test_cache_bytes import assert_caches_are_declared
from torch import Tensor, nn

from model.component import FFN, Mixer
from model.ffn import FFNS
from model.mixers import MIXERS
from model.positions import POSITIONS
from model.transformer import Transformer
from train.ablate.param_match import count_non_embedding, match_params
from train.config import load_config
from train.estimate.breakdown import layer_bytes
from train.optimizers import OPTIMIZERS
from train.optimizers.recipe import OptimizerRecipe

WIDTH = 4  # taps of the toy mixer


class Shift(Mixer):
    """A causal depthwise convolution over the last WIDTH tokens (a "token shift"): y = W_o (sum_j w_j * v_{t-j}),
    v = W_v x. Shapes: x (B, T, D) -> v (B, D, T) -> y (B, T, D). Cache: the last WIDTH - 1 values (B, D, W - 1)."""

    lora_targets = ("v_proj", "o_proj")

    def __init__(self, cfg, position):
        super().__init__()
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.taps = nn.Parameter(torch.randn(cfg.d_model, 1, WIDTH) / WIDTH)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def residual_projections(self) -> list[nn.Linear]:
        return [self.o_proj]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.taps]

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        return 0.0  # the taps are parameters: 6 N counts them

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        return 3 * s * cfg.d_model  # the input, the padded values (the conv's input) and the conv output

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        return s * cfg.d_model * (WIDTH - 1)  # the last WIDTH - 1 values, whatever the length

    def init_cache(self, batch_size: int, device, dtype) -> Tensor:
        return torch.zeros(batch_size, self.taps.shape[0], WIDTH - 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: Tensor | None = None, offset: int = 0):
        v = self.v_proj(x).transpose(1, 2)  # (B, D, T)
        past = F.pad(v[..., :0], (WIDTH - 1, 0)) if cache is None else cache
        v = torch.cat([past, v], dim=-1)  # (B, D, W - 1 + T)
        y = F.conv1d(v, self.taps, groups=v.shape[1]).transpose(1, 2)  # (B, T, D)
        return self.o_proj(y), (None if cache is None else v[..., v.shape[-1] - (WIDTH - 1):])


class SquaredReLU(FFN):
    """FFN(x) = W_down relu(W_up x)^2 (So et al. 2021, "Primer"). Shapes: (B, T, D) -> (B, T, F) -> (B, T, D)."""

    width_knob = "d_ff"
    lora_targets = ("up_proj", "down_proj")

    def __init__(self, cfg):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, self.hidden_width(cfg), bias=False)
        self.down_proj = nn.Linear(self.hidden_width(cfg), cfg.d_model, bias=False)

    @staticmethod
    def hidden_width(cfg) -> int:
        return cfg.d_ff or 4 * cfg.d_model

    @staticmethod
    def activation_bytes(cfg, s: int, mixed: bool) -> float:
        return s * (cfg.d_model + 2 * SquaredReLU.hidden_width(cfg))  # input, relu output, its square

    def residual_projections(self) -> list[nn.Linear]:
        return [self.down_proj]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


class SignSGD(OptimizerRecipe):
    """signSGD (Bernstein et al. 2018): theta -= lr sign(g)."""

    state = {"hidden": (), "other": ()}  # stateless

    @staticmethod
    def build(groups, train_cfg, fused):
        class Sign(torch.optim.Optimizer):
            def __init__(self, params, lr):
                super().__init__(params, {"lr": lr})

            @torch.no_grad()
            def step(self, closure=None):
                loss = closure() if closure is not None else None
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.add_(p.grad.sign(), alpha=-group["lr"])
                return loss

        return Sign(groups, train_cfg.lr)


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(MIXERS, "shift", Shift)  # the one registry line each
    monkeypatch.setitem(FFNS, "sqrelu", SquaredReLU)
    monkeypatch.setitem(OPTIMIZERS, "signsgd", SignSGD)


def test_registration_refuses_an_incomplete_component():
    class NoFlops(Mixer):
        lora_targets = ()

        def residual_projections(self):
            return []

        @staticmethod
        def activation_bytes(cfg, seq_len, s):
            return 0.0

        def init_cache(self, batch_size, device, dtype):
            return None

        def forward(self, x, cache=None, offset=0):
            return x, cache

    with pytest.raises(TypeError, match="does not declare flops_per_token"):
        MIXERS["noflops"] = NoFlops
    with pytest.raises(TypeError, match="must subclass"):
        FFNS["plain"] = nn.Linear

    class NoState(OptimizerRecipe):  # builds, but does not say what state it keeps (train.estimate reads it)
        build = SignSGD.build

    with pytest.raises(TypeError, match="does not declare state"):
        OPTIMIZERS["nostate"] = NoState
    assert "noflops" not in MIXERS and "plain" not in FFNS and "nostate" not in OPTIMIZERS


def test_toy_mixer_and_ffn_get_the_model_battery(toys):
    torch.manual_seed(0)
    cfg = tiny_model_config(mixer=["shift", "softmax"], ffn="sqrelu")
    assert_mixer_is_causal(Shift(cfg, POSITIONS["rope"](cfg.d_model)), cfg.d_model)
    model = Transformer(cfg).eval()
    assert_decodes_like_full_forward(model, cfg.vocab_size)
    assert_caches_are_declared(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    model.train()
    model(idx)[0].logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # the declared residual projections got 1/sqrt(2L)
    assert model.layers[0].mixer.o_proj.weight.std().item() == pytest.approx(residual_std, rel=0.2)
    assert model.layers[0].ffn.down_proj.weight.std().item() == pytest.approx(residual_std, rel=0.2)
    assert model.layers[0].mixer.v_proj.weight.std().item() == pytest.approx(cfg.init_std, rel=0.2)
    assert {"v_proj", "o_proj", "up_proj", "down_proj", "q_proj"} <= set(model.lora_targets())
    assert any(p is model.layers[0].mixer.taps for p in model.no_decay_parameters())


@pytest.mark.parametrize("mixer,ffn", [("shift", "sqrelu"), ("shift", "swiglu"), ("softmax", "sqrelu")])
def test_toy_components_in_the_estimate_and_flops(toys, mixer, ffn):
    cfg = tiny_model_config(mixer=mixer, ffn=ffn, max_seq_len=32)
    model = Transformer(cfg)
    measured = saved_activation_bytes(model, 2, 32) - saved_activation_bytes(model, 1, 32)
    kept = 4 * cfg.d_model + 4 * cfg.d_model + 4 * cfg.vocab_size  # the final norm, head input, fp32 log-softmax
    estimated = 32 * (sum(layer_bytes(cfg, m, cfg.layer_ffn(m), 32, "32") for m in cfg.layer_mixers()) + kept)
    assert estimated == pytest.approx(measured, rel=0.1)
    assert model.flops_per_token(32) == 6 * model.num_params(non_embedding=True) + 6 * model.lm_head.weight.numel() \
        + sum(MIXERS[m].flops_per_token(cfg, 32) for m in cfg.layer_mixers())


def test_toy_components_train_match_and_ablate(toys, tiny_corpus, tmp_path):
    from train.ablate.sweep import main as ablate
    from train.run import pretrain

    values = tiny_train_overrides(tiny_corpus, tmp_path, **{"model.mixer": "shift", "model.ffn": "sqrelu",
                                                             "train.optimizer": "signsgd", "train.lr": 1e-3,
                                                             "train.num_samples": 0})
    run = pretrain(load_config(None, values))
    assert (run / "model.safetensors").is_file()
    losses = [line for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert losses, "no metrics were written"

    base = tiny_train_overrides(tiny_corpus, tmp_path, **{"train.max_steps": 2, "train.val_every": 1,
                                                          "train.val_batches": 1, "train.num_samples": 0})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    variants = {"softmax": {"model.mixer": "softmax"}, "shift": {"model.mixer": "shift", "model.ffn": "sqrelu"}}
    configs = {name: {0: load_config(None, {**base, "model": {**base["model"], **{k.split(".")[1]: v
                                                                                 for k, v in over.items()}}})}
               for name, over in variants.items()}
    widths = match_params(configs)
    assert widths["shift"].startswith("d_ff=")
    reference = count_non_embedding(configs["softmax"][0])
    assert count_non_embedding(configs["shift"][0]) == pytest.approx(reference, rel=0.02)
    sweep = {"base": "base.yaml", "seeds": [0], "match": "params", "jobs": 1,  # in this process: toys live here
             "variants": variants}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    ablate(["--config", str(tmp_path / "sweep.yaml")])
    table = (tmp_path / "ablate-sweep" / "results.md").read_text()
    assert "shift" in table and "d_ff=" in table
