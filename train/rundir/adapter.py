"""Save and load LoRA adapters in PEFT's on-disk format (`adapter_config.json` + `adapter_model.safetensors`).

PEFT (Hugging Face) stores only the adapter: tensors named `base_model.model.<module path>.lora_A.weight`
(A: (r, in)) and `.lora_B.weight` (B: (out, r)), without the adapter name, next to a LoraConfig JSON. Writing
the same layout lets `peft.LoraConfig.from_pretrained(dir)` and `PeftModel.from_pretrained(model, dir)` read
our adapters, and lets `load_adapter` read PEFT's, as long as the module paths are this stack's
(`layers.0.mixer.q_proj`, not Llama's `model.layers.0.self_attn.q_proj`).

Adapter folders come from other people, so reading one trusts nothing: a JSON or safetensors problem is one
ValueError line, and `target_modules` from a file is never run as a regex (a pattern such as `(.|.|.|.)*z`
backtracks for hours): the weights file names the adapted modules exactly, and those names are the targets.

A LoRA run directory holds

    config.yaml (finetune.base = the run it adapts)  tokenizer.json (the base's)  adapter/ (PEFT format)

and no model.safetensors; `resolve` turns any run directory into (weights dir, adapter dir), so everything
that loads a run (train.generate, export, merge, evaluation) accepts LoRA runs too.
"""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from inputs.json import read_json
from inputs.yaml import read_yaml
from model.lora import ALL_LINEAR, LoRAConfig, apply_lora, find_targets, lora_modules, lora_state_dict
from train.rundir.atomic import replacing, write_text
from train.rundir.weights import CheckpointError, check_values

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"
REFERENCE_DIR = "reference"  # a LoRA alignment run's own base: the merged SFT weights (align/policy.py)
WEIGHTS = "model.safetensors"
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
        raise ValueError("save_adapter: the model has no LoRA layers; call model.lora.apply_lora(model, cfg) first")
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
    with replacing(out / WEIGHTS_NAME) as tmp:  # temp + rename: never a half-written adapter
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = _peft_config(lora_cfg, targets, None if base_model_name_or_path is None else str(base_model_name_or_path))
    write_text(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def read_adapter_config(adapter_dir: str | Path) -> LoRAConfig:
    """Parse a PEFT adapter_config.json into a LoRAConfig; a malformed file or a feature this stack lacks raises
    ValueError. A regex `target_modules` is kept as text and never evaluated here (see `load_adapter`)."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {adapter_dir}: point to a folder written by save_adapter "
                                "(or PEFT's save_pretrained)")
    raw = read_json(path, "adapter config")  # an InputError (a ValueError) names the problem
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {raw.get('peft_type')!r}; only LORA adapters can be loaded")
    unsupported = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                   "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "modules_to_save": None,
                   "exclude_modules": None, "target_parameters": None}
    for key, plain in unsupported.items():
        if raw.get(key, plain) not in (plain, None, {}, []):
            raise ValueError(f"{path}: {key}={raw[key]!r} is not supported here (only plain LoRA); "
                             "re-train the adapter without it")
    missing = [key for key in ("r", "lora_alpha", "target_modules") if key not in raw]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; not a complete PEFT LoRA config")
    targets = raw["target_modules"]
    if not (isinstance(targets, str) or isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise ValueError(f"{path}: target_modules must be a string or a list of names, got {targets!r}")
    try:
        return LoRAConfig(r=raw["r"], alpha=float(raw["lora_alpha"]), dropout=float(raw.get("lora_dropout", 0.0)),
                          target_modules=targets, rslora=bool(raw.get("use_rslora", False)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path.parent}: save the adapter with save_adapter "
                                "(or PEFT's save_pretrained(safe_serialization=True))")
    try:
        saved = load_file(str(path))
    except Exception as err:  # safetensors raises its own types for truncated or garbage files
        raise ValueError(f"{path} is not a readable safetensors file ({err}); re-save the adapter") from None
    bad_prefix = sorted(k for k in saved if not (k.startswith(PREFIX) and _LORA_KEY.search(k)))
    if bad_prefix:
        raise ValueError(f"{path}: keys {bad_prefix[:3]} are not PEFT LoRA weights ('{PREFIX}<module>.lora_A"
                         ".weight'); not a PEFT adapter file")
    return {k[len(PREFIX):]: v for k, v in saved.items()}


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoRAConfig:
    """Adapt the base `model` where the saved weights say and load them (strict); in place. Returns the config
    with `target_modules` = the adapted module names. Everything is checked before the model is touched."""
    cfg = read_adapter_config(adapter_dir)
    saved = _read_weights(Path(adapter_dir) / WEIGHTS_NAME)
    names = sorted({k.rsplit(".lora_", 1)[0] for k in saved})
    modules = dict(model.named_modules())
    strangers = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if strangers or not names:
        raise ValueError(f"{adapter_dir}: adapted modules {strangers[:3] or names} are not nn.Linear layers of this "
                         "model; load it into the base model it was trained on")
    if not isinstance(cfg.target_modules, str) or cfg.target_modules.lower() == ALL_LINEAR:  # no regex to run
        declared = set(find_targets(model, cfg.target_modules))
        if declared != set(names):
            raise ValueError(f"{adapter_dir}: the weights do not fit target_modules={cfg.target_modules!r}: unexpected "
                             f"{sorted(set(names) - declared)[:3]}, missing {sorted(declared - set(names))[:3]}; "
                             "load it into the base model it was trained on")
    shapes = {}
    for name in names:
        shapes[f"{name}.lora_A.weight"] = (cfg.r, modules[name].in_features)
        shapes[f"{name}.lora_B.weight"] = (modules[name].out_features, cfg.r)
    missing = sorted(shapes.keys() - saved.keys())
    if missing:
        raise ValueError(f"{adapter_dir}: missing {missing[:4]} ({len(missing)}); the adapter file is incomplete")
    wrong = [f"{k} {tuple(saved[k].shape)} vs {s}" for k, s in shapes.items() if tuple(saved[k].shape) != s]
    if wrong:
        raise ValueError(f"{adapter_dir}: shape mismatch {wrong[:3]}; the base model's sizes differ from the adapter's")
    for key in shapes:
        check_values(Path(adapter_dir) / WEIGHTS_NAME, key, saved[key])
    cfg.target_modules = names
    apply_lora(model, cfg)
    with torch.no_grad():
        for key, param in lora_state_dict(model).items():
            param.copy_(saved[key])
    return cfg


def check_adapter_base(adapter_dir: Path, weights_dir: Path) -> None:
    """ValueError for an adapter whose config names another existing base run than `weights_dir` (same weights file
    bytes count as the same base: a copied run). A base that is not on this machine cannot be compared."""
    named = read_json(adapter_dir / CONFIG_NAME, "adapter config").get("base_model_name_or_path") if (
        adapter_dir / CONFIG_NAME).is_file() else None
    if not isinstance(named, str) or not (Path(named) / WEIGHTS).is_file() or \
            Path(named).resolve() == weights_dir.resolve():
        return
    if not (weights_dir / WEIGHTS).is_file() or not filecmp.cmp(Path(named) / WEIGHTS, weights_dir / WEIGHTS,
                                                                shallow=False):
        raise ValueError(f"trained on {named}, not on {weights_dir}; pass --run {named}")


def is_lora_run(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / ADAPTER_DIR).is_dir() and not (run_dir / WEIGHTS).is_file()


def base_of(run_dir: str | Path) -> Path:
    """The run a LoRA run adapts: its own reference/ (LoRA alignment runs carry their base), else finetune.base
    from its config.yaml (relative paths are as trained)."""
    run_dir = Path(run_dir)
    if (run_dir / REFERENCE_DIR / WEIGHTS).is_file():
        return run_dir / REFERENCE_DIR
    section = read_yaml(run_dir / "config.yaml", "run config").get("finetune")  # plain data: train/ reads only the
    base = str(section.get("base") or "") if isinstance(section, dict) else ""  # key it needs, not the typed config
    if not base or not (Path(base) / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is a LoRA run (adapter/, no {WEIGHTS}) whose base run {base!r} is not "
                              f"here; copy the base run to that path or pass --run <base> --adapter "
                              f"{run_dir / ADAPTER_DIR}")
    if is_lora_run(base):
        raise CheckpointError(f"{run_dir} adapts {base}, itself a LoRA run; merge it first (python -m finetune.merge)")
    return Path(base)


def resolve(run: str | Path, adapter: str | Path | None = None) -> tuple[Path, Path | None]:
    """(run, adapter) as given on a command line -> (run directory with weights, adapter directory or None).

    `--run <lora run>` means `--run <its base> --adapter <lora run>/adapter`."""
    run = Path(run)
    if adapter is None and (run / "config.yaml").is_file() and is_lora_run(run):
        return base_of(run), run / ADAPTER_DIR
    return run, None if adapter is None else Path(adapter)
