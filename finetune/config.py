"""The fine-tuning config: the user's file and overrides on top of what the base run fixes.

A fine-tuning YAML needs only `data.path`, `finetune.*` and `train.*`; the rest comes from the base run's
config.yaml (`finetune.base`), because the weights and the tokenizer fix it:

    values = merge({model: base.model, data: {vocab_size, seq_len, eos_token: base.data}}, file, --overrides)

so `model.*`, `data.vocab_size` and `data.eos_token` (its tokenizer's end of text) follow the base run, and
`data.seq_len` does unless the user sets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from inputs.schema import require_mapping
from inputs.yaml import read_yaml
from model.lora import LoRAConfig, apply_lora, store_base_weights
from model.options import Options, option
from train.config import Config, ConfigError, extend, load_config, merge, parse_overrides

INHERITED_DATA = ("vocab_size", "seq_len", "eos_token")


@dataclass
class LoRASection(Options):
    r: int = option(8, min=1)  # rank of the update B A
    alpha: float = option(16.0, above=0.0)  # scaling alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = option(0.0, min=0.0, below=1.0)  # dropout on the LoRA branch input
    target_modules: str | list[str] = "auto"  # auto (every component's own lora_targets), module names/suffixes,
    # a regex, or "all-linear"
    rslora: bool = False  # rank-stabilised scaling (Kalajdzievski 2023)
    base_dtype: str = option("float32", choices=("float32", "bfloat16"))  # storage of the adapted layers' frozen
    # weights: bfloat16 = half the memory, no per-step autocast copies; needs train.precision=bf16-mixed


@dataclass
class FinetuneConfig(Options):
    base: str = ""  # the pretrained run directory to start from
    method: str = option("lora", choices=("lora", "full"))
    lora: LoRASection = field(default_factory=LoRASection)
    eval_prompts: int = option(100, min=0)  # held-out prompts for word inclusion
    eval_tokens: int = option(160, min=1)  # max new tokens per evaluated story


FinetuneTree = extend(Config, finetune=FinetuneConfig)  # the config tree of a fine-tuning run


def check_base(base: str) -> Path:
    """The base run directory, or a ConfigError saying how to get one."""
    if not base:
        raise ConfigError("finetune.base is not set: give a pretrained run directory, e.g. --finetune.base runs/demo")
    path = Path(base)
    missing = [name for name in ("config.yaml", "tokenizer.json", "model.safetensors") if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"finetune.base={base} is not a finished run directory (no {', '.join(missing)}); "
                          "pretrain one first: python -m train --config configs/pretrain/demo.yaml --train.name=demo")
    return path


def read_run_config(run_dir: str | Path) -> Config:
    """A run directory's config.yaml as a fine-tuning tree (a pretraining run's has the defaults of `finetune`)."""
    return load_config(Path(run_dir) / "config.yaml", tree=FinetuneTree, run_file=True)


def finetune_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                    tree: type = FinetuneTree) -> Config:
    """Load a fine-tuning config (same CLI contract as train.config.load_config) merged over the base run;
    `tree`: a later stage's extension of FinetuneTree (align/config.py)."""
    user = read_yaml(path, fix="see configs/finetune/ for examples") if path is not None else {}
    user = merge(user, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or [])))
    if "model" in user:
        raise ConfigError("model.* is set, but fine-tuning keeps the base run's model (its config.yaml); "
                          "remove the model section from the fine-tuning config and overrides")
    section = user.get("finetune") or {}
    base = check_base(str(section.get("base", "")) if isinstance(section, dict) else "")
    base_values = read_yaml(base / "config.yaml", "run config")
    data = require_mapping(base_values.get("data") or {}, base / "config.yaml", "its data section",
                           "the base run's config.yaml is damaged; copy the run again")
    inherited = {"model": base_values.get("model") or {}, "data": {k: data[k] for k in INHERITED_DATA if k in data}}
    cfg = load_config(None, merge(inherited, user), tree=tree)
    if not cfg.train.name:
        cfg.train.name = Path(path).stem if path is not None else f"{base.name}-{cfg.finetune.method}"
    return cfg


def adapt(model, cfg: Config) -> LoRAConfig:
    """Wrap the layers finetune.lora.target_modules names in LoRA (freezing the rest) and store their frozen
    weights in finetune.lora.base_dtype -> the LoRAConfig used; a bad setting raises ConfigError. `auto` targets
    are the model's components' own `lora_targets` (model/component.py)."""
    section = cfg.finetune.lora
    if section.base_dtype == "bfloat16" and cfg.train.precision != "bf16-mixed":
        raise ConfigError(f"finetune.lora.base_dtype=bfloat16 needs --train.precision=bf16-mixed (got "
                          f"{cfg.train.precision!r}): the bf16 weights are read under autocast")
    targets = model.lora_targets() if section.target_modules == "auto" else section.target_modules
    lora_cfg = lora_config(section, targets)
    try:
        apply_lora(model, lora_cfg)
    except ValueError as err:  # a target pattern matching nothing, a tied target, ...
        raise ConfigError(str(err)) from None
    store_base_weights(model, getattr(torch, section.base_dtype))
    return lora_cfg


def lora_config(section: LoRASection, target_modules: str | list[str]) -> LoRAConfig:
    """The config section (plain data) and the resolved targets (`auto`: every component's own `lora_targets`)
    -> LoRAConfig; invalid values raise ConfigError."""
    try:
        return LoRAConfig(r=section.r, alpha=section.alpha, dropout=section.dropout,
                          target_modules=target_modules, rslora=section.rslora)
    except ValueError as err:
        raise ConfigError(str(err)) from None
