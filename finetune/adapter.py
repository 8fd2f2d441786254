"""Save and load LoRA adapters in PEFT's on-disk format (`adapter_config.json` + `adapter_model.safetensors`).

PEFT (Hugging Face) stores only the adapter: tensors named `base_model.model.<module path>.lora_A.weight`
(A: (r, in)) and `.lora_B.weight` (B: (out, r)), without the adapter name, next to a LoraConfig JSON. Writing
the same layout lets `peft.LoraConfig.from_pretrained(dir)` and `PeftModel.from_pretrained(model, dir)` read
our adapters, and lets `load_adapter` read PEFT's, as long as the module paths are this stack's
(`layers.0.mixer.q_proj`, not Llama's `model.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from finetune.lora import ALL_LINEAR, LoRAConfig, apply_lora, find_targets, lora_modules, lora_state_dict

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"\.lora_[AB]\.weight$")  # PeftModel -> LoraModel -> the base model, as in PEFT's saved keys


def _peft_config(lora_cfg: LoRAConfig, target_modules, base_model_name_or_path: str | None) -> dict:
    """The subset of peft.LoraConfig.to_dict() (peft 0.21) that describes plain LoRA; defaults for the rest."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": lora_cfg.r,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "target_modules": target_modules,
        "exclude_modules": None,
        "use_rslora": lora_cfg.rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
    }


def save_adapter(model: nn.Module, lora_cfg: LoRAConfig, out_dir: str | Path,
                 base_model_name_or_path: str | None = None, state: dict | None = None) -> Path:
    """Write the adapter weights and config of `model` (after `apply_lora`) to `out_dir`; returns the dir.

    `state`: the model's full state dict when its parameters are sharded (FSDP); the LoRA entries are taken from it."""
    layers = dict(lora_modules(model))
    if not layers:
        raise ValueError("save_adapter: the model has no LoRA layers; call finetune.lora.apply_lora(model, cfg) first")
    if any(m.merged for m in layers.values()):
        raise ValueError("save_adapter: some LoRA layers are merged into their weights; unmerge() them before saving")
    ranks = {m.r for m in layers.values()}
    if ranks != {lora_cfg.r}:
        raise ValueError(f"save_adapter: lora_cfg.r={lora_cfg.r} but the model's adapters have rank {sorted(ranks)}; "
                         "pass the LoRAConfig the model was adapted with")
    lora = lora_state_dict(model) if state is None else {k: v for k, v in state.items() if _LORA_KEY.search(k)}
    targets = lora_cfg.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = sorted({k.rsplit(".lora_", 1)[0] for k in lora})  # as PEFT does: the module names it resolved to
    elif not isinstance(targets, str):
        targets = sorted(targets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + k: v.detach().contiguous().cpu() for k, v in lora.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config = _peft_config(lora_cfg, targets, None if base_model_name_or_path is None else str(base_model_name_or_path))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def read_adapter_config(adapter_dir: str | Path) -> LoRAConfig:
    """Parse a PEFT adapter_config.json into a LoRAConfig; features this stack lacks raise ValueError."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {adapter_dir}: point to a folder written by save_adapter "
                                "(or PEFT's save_pretrained)")
    raw = json.loads(path.read_text())
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {raw.get('peft_type')!r}; only LORA adapters can be loaded")
    unsupported = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                   "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "modules_to_save": None,
                   "exclude_modules": None, "target_parameters": None}
    for key, plain in unsupported.items():
        if raw.get(key, plain) not in (plain, None, {}, []):
            raise ValueError(f"{path}: {key}={raw[key]!r} is not supported here (only plain LoRA); "
                             "re-train the adapter without it")
    return LoRAConfig(r=int(raw["r"]), alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0),
                      target_modules=raw["target_modules"], rslora=bool(raw.get("use_rslora", False)))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoRAConfig:
    """Adapt the base `model` as the saved config says and load the saved A/B weights (strict); in place."""
    cfg = read_adapter_config(adapter_dir)
    weights = Path(adapter_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {adapter_dir}: save the adapter with save_adapter "
                                "(or PEFT's save_pretrained(safe_serialization=True))")
    saved = load_file(str(weights))
    bad_prefix = sorted(k for k in saved if not k.startswith(PREFIX))
    if bad_prefix:
        raise ValueError(f"{weights}: keys {bad_prefix[:3]} lack PEFT's '{PREFIX}' prefix; not a PEFT adapter file")
    saved = {k[len(PREFIX):]: v for k, v in saved.items()}
    modules = dict(model.named_modules())
    shapes = {}  # checked before the model is touched, so a bad adapter leaves it as it was
    for name in find_targets(model, cfg.target_modules):
        shapes[f"{name}.lora_A.weight"] = (cfg.r, modules[name].in_features)
        shapes[f"{name}.lora_B.weight"] = (modules[name].out_features, cfg.r)
    missing, unexpected = sorted(shapes.keys() - saved.keys()), sorted(saved.keys() - shapes.keys())
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit this model: missing {missing[:4]} ({len(missing)}), unexpected "
                         f"{unexpected[:4]} ({len(unexpected)}); load it into the base model it was trained on")
    wrong = [f"{k} {tuple(saved[k].shape)} vs {s}" for k, s in shapes.items() if tuple(saved[k].shape) != s]
    if wrong:
        raise ValueError(f"{weights}: shape mismatch {wrong[:3]}; the base model's sizes differ from the adapter's")
    apply_lora(model, cfg)
    with torch.no_grad():
        for key, param in lora_state_dict(model).items():
            param.copy_(saved[key])
    return cfg
