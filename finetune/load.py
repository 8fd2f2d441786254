"""Resolve and load fine-tuned runs: a full fine-tune is a plain run directory; a LoRA run directory holds

    config.yaml (finetune.base = the base run it adapts)  tokenizer.json (the base's)  adapter/ (PEFT format)

and no model.safetensors, so sharing it costs only the adapter (r (d_in + d_out) numbers per adapted
Linear) while the base run stays the single copy of the frozen weights.
"""

from __future__ import annotations

from pathlib import Path

from train.config import Config, load_config
from train.load import load_run
from train.weights import CheckpointError

ADAPTER_DIR = "adapter"
WEIGHTS = "model.safetensors"


def is_lora_run(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / ADAPTER_DIR).is_dir() and not (run_dir / WEIGHTS).is_file()


def base_of(run_dir: str | Path) -> Path:
    """The base run a LoRA run adapts (finetune.base in its config.yaml; relative paths are as trained)."""
    run_dir = Path(run_dir)
    base = load_config(run_dir / "config.yaml").finetune.base
    if not base or not (Path(base) / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is a LoRA run whose base run {base!r} is not here; copy the base run "
                              f"to that path or pass --run <base> --adapter {run_dir / ADAPTER_DIR}")
    return Path(base)


def resolve(run: str | Path, adapter: str | Path | None = None) -> tuple[Path, Path | None]:
    """(run, adapter) as given on a command line -> (run directory with weights, adapter directory or None).

    `--run <lora run>` means `--run <its base> --adapter <lora run>/adapter`."""
    run = Path(run)
    if adapter is None and (run / "config.yaml").is_file() and is_lora_run(run):
        return base_of(run), run / ADAPTER_DIR
    return run, None if adapter is None else Path(adapter)


def load_finetuned(run: str | Path, adapter: str | Path | None = None, device: str = "cpu"
                   ) -> tuple[Config, object, object]:
    """load_run for any run directory, including LoRA run directories -> (config, tokenizer, model)."""
    weights_dir, adapter_dir = resolve(run, adapter)
    return load_run(weights_dir, device, adapter_dir)
