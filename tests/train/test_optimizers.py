"""Optimizers and schedules as recipes: Muon's parameter split (hidden matrices vs the rest), Muon training and
exact resume, and the WSD schedule's factor by hand (warm-up, stable, decay endpoints, branching budgets)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import stop_at, tiny_train_overrides, train_losses
from safetensors.torch import load_file

from model.config import ModelConfig
from model.transformer import Transformer
from train.config import load_config
from train.optim import build_optimizer, remember_shapes
from train.optimizers.muon import MuonAdamW
from train.run import pretrain
from train.schedules import SCHEDULES
from train.schedules.wsd import WSDConfig

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")


def hybrid(tie: bool, ffn: str = "swiglu") -> Transformer:
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=3, n_heads=4, max_seq_len=64,
                      mixer=["softmax", "mamba", "gau"], ffn=ffn, tie_embeddings=tie)
    return Transformer(cfg)


def muon_cfg(**extra):
    return load_config(None, {"train": {"optimizer": "muon", "lr": 1e-3, **extra}}).train


@pytest.mark.parametrize("tie,ffn", [(True, "swiglu"), (False, "moe")])
def test_muon_gets_every_hidden_matrix_and_nothing_else(tie, ffn):
    model = hybrid(tie, ffn)
    remember_shapes(model)
    optimizer, scheduler = build_optimizer(model, muon_cfg())
    assert isinstance(optimizer, MuonAdamW) and isinstance(optimizer, torch.optim.Optimizer)
    muon_ids = {id(p) for g in optimizer.children_[0].param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in optimizer.children_[1].param_groups for p in g["params"]}
    assert not muon_ids & adamw_ids and muon_ids | adamw_ids == {id(p) for p in model.parameters()}

    names = {id(p): n for n, p in model.named_parameters()}
    declared = {id(p) for p in model.no_decay_parameters()}
    head_and_embeddings = {id(model.lm_head.weight), id(model.embed_tokens.weight)}
    for n, p in model.named_parameters():
        hidden = p.ndim == 2 and id(p) not in declared and id(p) not in head_and_embeddings
        assert (id(p) in muon_ids) == hidden, n
    in_adamw = {names[i].rsplit(".", 1)[-1] for i in adamw_ids}
    assert {"A_log", "D", "gamma", "beta", "weight"} <= in_adamw  # SSM, GAU scales, norms (and embeddings)
    assert any(p.ndim == 3 for p in model.parameters() if id(p) in adamw_ids)  # Mamba's depthwise conv kernel
    assert all(p.ndim == 2 for i in muon_ids for p in [dict(model.named_parameters())[names[i]]])
    assert id(model.lm_head.weight) in adamw_ids and id(model.embed_tokens.weight) in adamw_ids
    assert len(muon_ids) > 10

    # the schedule scales both optimizers: Muon at lr * lr_ratio, AdamW at lr, both by the same factor
    muon_lr, adamw_lr = optimizer.children_[0].param_groups[0]["lr"], optimizer.children_[1].param_groups[0]["lr"]
    factor = SCHEDULES["cosine"].factor(0, muon_cfg())
    assert muon_lr == pytest.approx(1e-3 * 20 * factor) and adamw_lr == pytest.approx(1e-3 * factor)


def test_muon_adamw_state_dict_round_trips():
    model = hybrid(False)
    remember_shapes(model)
    opt, _ = build_optimizer(model, muon_cfg())
    x = torch.randint(0, 97, (2, 16))
    model(x)[0].float().logsumexp(-1).mean().backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())  # state_dict() holds references to the live buffers
    assert set(state) == {"muon", "adamw"} and len(opt.state) == sum(1 for p in model.parameters())

    twin = hybrid(False)
    twin.load_state_dict(model.state_dict())
    remember_shapes(twin)
    opt2, sched2 = build_optimizer(twin, muon_cfg())
    opt2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    for group in opt2.param_groups:  # still the children's dicts after loading
        assert any(group is g for o in opt2.children_ for g in o.param_groups)
    for a, b in zip(model.parameters(), twin.parameters()):
        a.grad = torch.ones_like(a)
        b.grad = torch.ones_like(b)
    opt.step()
    opt2.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_muon_on_a_model_without_untied_head_or_adamw_params_is_fine():
    lin = torch.nn.Linear(8, 8, bias=False)
    lin.weight._hidden_matrix = True
    opt = muon_cfg()
    from train.optimizers import OPTIMIZERS
    built = OPTIMIZERS["muon"].build([{"params": [lin.weight], "weight_decay": 0.1}], opt, False)
    assert built.names_ == ["muon"]


def run(corpus, out, callbacks=(), **extra):
    extra = {"train.optimizer": "muon", "train.muon.lr_ratio": 10.0, **extra}
    return pretrain(load_config(None, tiny_train_overrides(corpus, out, **extra)), callbacks)


@pytest.fixture(scope="module")
def muon_run(tiny_corpus, tmp_path_factory):
    return run(tiny_corpus, tmp_path_factory.mktemp("muon"))


def test_muon_training_reduces_the_loss(muon_run):
    losses = train_losses(muon_run)
    assert sorted(losses) == list(range(8))
    assert all(math.isfinite(v) for v in losses.values())
    assert losses[7] < losses[0] - 0.3, losses


def test_muon_resume_is_exact(tiny_corpus, muon_run, tmp_path):
    first = run(tiny_corpus, tmp_path, callbacks=[stop_at(4)])
    assert sorted(train_losses(first)) == list(range(4))
    resumed = run(tiny_corpus, tmp_path, **{"train.resume": True})
    assert resumed == first
    expected, got = train_losses(muon_run), train_losses(resumed)
    assert sorted(got) == sorted(expected) == list(range(8))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    a, b = load_file(muon_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def wsd_cfg(max_steps=100, shape="linear", warmup=10, fraction=0.2, m=0.1):
    return SimpleNamespace(max_steps=max_steps, warmup_steps=warmup, min_lr_ratio=m,
                           wsd=WSDConfig(decay_fraction=fraction, shape=shape))


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_factor_by_hand(shape):
    f, cfg = SCHEDULES["wsd"].factor, wsd_cfg(shape=shape)
    assert f(0, cfg) == pytest.approx(0.1) and f(4, cfg) == pytest.approx(0.5) and f(9, cfg) == pytest.approx(1.0)
    assert f(10, cfg) == f(50, cfg) == f(79, cfg) == 1.0  # stable until the last 20 of 100 steps
    assert f(80, cfg) == pytest.approx(1.0)  # decay starts at 80: p = 0
    assert f(100, cfg) == pytest.approx(0.1)  # ends at min_lr_ratio
    p = 0.25  # step 85
    expected = 0.1 + 0.9 * (1 - (p if shape == "linear" else math.sqrt(p)))
    assert f(85, cfg) == pytest.approx(expected)
    values = [f(s, cfg) for s in range(80, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_branches_budgets_from_one_stable_phase():
    f = SCHEDULES["wsd"].factor
    short, long = wsd_cfg(max_steps=100), wsd_cfg(max_steps=200)
    for step in range(80):  # before the short run's decay, both budgets give the same factor
        assert f(step, short) == f(step, long), step
    assert f(90, short) < 1.0 == f(90, long)


def test_wsd_is_reachable_from_the_config():
    cfg = load_config(None, ["--train.schedule=wsd", "--train.wsd.shape=1-sqrt", "--train.wsd.decay_fraction=0.5",
                             "--train.max_steps=100", "--train.warmup_steps=0"]).train
    f = SCHEDULES["wsd"].factor
    m = cfg.min_lr_ratio
    assert f(49, cfg) == 1.0 and f(75, cfg) == pytest.approx(m + (1 - m) * (1 - 0.5 ** 0.5))
