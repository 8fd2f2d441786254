"""LoRA layers, targeting, merging and PEFT-format adapters (model/lora.py, train/rundir/adapter.py)."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.config import ModelConfig
from model.lora import (
    LoRAConfig,
    LoRALinear,
    adapters_disabled,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from model.transformer import Transformer
from train.rundir.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter, save_adapter

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture
def base() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4)).eval()


@pytest.fixture
def idx() -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


def adapted(base, **cfg) -> tuple[Transformer, LoRAConfig]:
    """A copy of `base` with LoRA whose B is random, so the adapters actually change the output."""
    model, lora_cfg = copy.deepcopy(base), LoRAConfig(**cfg)
    apply_lora(model, lora_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model, lora_cfg


def test_step0_output_equals_base(base, idx):
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig())
    assert torch.equal(logits(model, idx), logits(base, idx))


def test_training_updates_only_adapters(base, idx):
    model = copy.deepcopy(base).train()
    apply_lora(model, LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    params = lora_parameters(model)
    assert trainable == {id(p) for p in params} and len(params) == 2 * 2 * 2  # (A, B) x 2 modules x 2 layers
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = F.cross_entropy(model(idx[:, :-1])[0].flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k]), k
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(m.lora_B.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_is_w_plus_scaled_ba(rslora):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=4, alpha=8, rslora=rslora)
    nn.init.normal_(layer.lora_B.weight)
    w = layer.base_layer.weight.detach().clone()
    scaling = 8 / math.sqrt(4) if rslora else 8 / 4
    assert layer.scaling == scaling
    x = torch.randn(3, 5, 16)
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, F.linear(x, w + scaling * layer.lora_B.weight @ layer.lora_A.weight,
                                                  layer.base_layer.bias))
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w + scaling * layer.lora_B.weight @ layer.lora_A.weight)
    torch.testing.assert_close(layer(x), unmerged)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w)


def test_merge_lora_gives_plain_model(base, idx):
    model, _ = adapted(base)
    expected = logits(model, idx)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert merged.state_dict().keys() == base.state_dict().keys()
    torch.testing.assert_close(logits(merged, idx), expected)
    assert merged.lm_head.weight is merged.embed_tokens.weight  # tying survives


def test_adapters_disabled_gives_base_output(base, idx):
    model, _ = adapted(base)
    assert not torch.allclose(logits(model, idx), logits(base, idx))
    with adapters_disabled(model):
        torch.testing.assert_close(logits(model, idx), logits(base, idx))
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.merge()  # also off when merged (the update is subtracted back out)
        torch.testing.assert_close(logits(model, idx), logits(base, idx))
    assert not any(m.disabled for m in model.modules() if isinstance(m, LoRALinear))


def layer_names(kinds, layers=(0, 1)):
    return sorted(f"layers.{i}.{'mixer' if k in ATTN else 'ffn'}.{k}" for i in layers for k in kinds)


@pytest.mark.parametrize("targets, expected", [
    (["q_proj", "v_proj"], layer_names(["q_proj", "v_proj"])),
    (["layers.1.ffn.down_proj"], ["layers.1.ffn.down_proj"]),
    (r"layers\.0\.ffn\..*_proj", layer_names(FFN, layers=(0,))),
    (r".*\.(q|k)_proj", layer_names(["q_proj", "k_proj"])),
    ("all-linear", layer_names(ATTN + FFN)),
])
def test_target_selection(base, targets, expected):
    model = copy.deepcopy(base)
    assert sorted(apply_lora(model, LoRAConfig(target_modules=targets))) == expected
    assert sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear)) == expected


@pytest.mark.parametrize("targets", [["proj"], ["nonexistent"], r"q_proj"])  # suffixes are whole dotted names
def test_nothing_matches_raises(base, targets):
    with pytest.raises(ValueError, match=r"matches no nn.Linear.*q_proj"):
        apply_lora(copy.deepcopy(base), LoRAConfig(target_modules=targets))


def test_tied_head_and_double_apply_rejected(base):
    with pytest.raises(ValueError, match="tied"):
        apply_lora(copy.deepcopy(base), LoRAConfig(target_modules=["lm_head"]))
    model, cfg = adapted(base)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, cfg)
    with pytest.raises(ValueError, match="r must be a positive"):
        LoRAConfig(r=0)


def test_save_load_roundtrip(base, idx, tmp_path):
    model, cfg = adapted(base, r=4, alpha=8, target_modules="all-linear")
    save_adapter(model, cfg, tmp_path, base_model_name_or_path="runs/base")
    fresh = copy.deepcopy(base)
    loaded = load_adapter(fresh, tmp_path)
    assert (loaded.r, loaded.alpha, loaded.rslora) == (4, 8, False)
    assert torch.equal(logits(fresh, idx), logits(model, idx))
    assert lora_state_dict(fresh).keys() == lora_state_dict(model).keys()


def test_saved_files_follow_peft_format(base, tmp_path):
    peft = pytest.importorskip("peft")
    model, cfg = adapted(base, r=4, alpha=16, dropout=0.05, target_modules=["q_proj", "down_proj"], rslora=True)
    save_adapter(model, cfg, tmp_path, base_model_name_or_path="runs/base")
    keys = load_file(str(tmp_path / WEIGHTS_NAME)).keys()
    assert len(keys) == 2 * 2 * 2 and all(re.match(r"^base_model\.model\..+\.lora_[AB]\.weight$", k) for k in keys)
    assert "base_model.model.layers.0.mixer.q_proj.lora_A.weight" in keys
    pc = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert (pc.peft_type, pc.task_type, pc.r, pc.lora_alpha, pc.lora_dropout, pc.use_rslora) == (
        peft.PeftType.LORA, "CAUSAL_LM", 4, 16, 0.05, True)
    assert set(pc.target_modules) == {"q_proj", "down_proj"}
    assert (pc.bias, pc.fan_in_fan_out, pc.base_model_name_or_path) == ("none", False, "runs/base")


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_reads_our_adapter(base, idx, tmp_path, rslora):
    """PEFT's own LoRA layers, loaded from our files, give our outputs (format and math parity)."""
    peft = pytest.importorskip("peft")
    model, cfg = adapted(base, r=4, alpha=8, target_modules="all-linear", rslora=rslora)
    save_adapter(model, cfg, tmp_path)
    pc = peft.LoraConfig.from_pretrained(str(tmp_path))
    pc.task_type = None  # CAUSAL_LM expects a transformers model; the plain PeftModel wraps any nn.Module
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path), config=pc)
    torch.testing.assert_close(logits(theirs, idx), logits(model, idx))


def test_we_read_peft_adapter(base, idx, tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    theirs.save_pretrained(str(tmp_path))
    ours = copy.deepcopy(base)
    load_adapter(ours, tmp_path)
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx))


def test_load_errors_leave_model_untouched(base, tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_adapter(copy.deepcopy(base), tmp_path / "missing")
    model, cfg = adapted(base, r=4, target_modules=["q_proj"])
    save_adapter(model, cfg, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    save_file({**tensors, "base_model.model.layers.0.mixer.k_proj.lora_A.weight": torch.zeros(4, 32)},
              str(tmp_path / WEIGHTS_NAME))
    fresh = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"unexpected \['layers.0.mixer.k_proj"):
        load_adapter(fresh, tmp_path)
    assert not any(isinstance(m, LoRALinear) for m in fresh.modules())
    wider = Transformer(ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4))
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_adapter(wider, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(copy.deepcopy(base), tmp_path)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(copy.deepcopy(base), cfg, tmp_path)
