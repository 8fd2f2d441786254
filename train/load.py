"""Load a self-contained run directory: its config, tokenizer and weights (optionally a LoRA adapter)."""

from __future__ import annotations

from pathlib import Path

import torch

from data.corpus import DataError
from data.tokenizer import load_tokenizer
from model.transformer import Transformer
from train.config import Config, ConfigError, load_config
from train.weights import CheckpointError, load_weights


def load_run(run_dir: str | Path, device: str = "cpu", adapter: str | Path | None = None
             ) -> tuple[Config, object, Transformer]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml); pass --run runs/<name>")
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise DataError(f"{run_dir}/tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model only "
                        f"{cfg.model.vocab_size}; the run directory mixes files from different runs")
    model = Transformer(cfg.model)
    load_weights(model, run_dir / "model.safetensors", tied=cfg.model.tie_embeddings)
    if adapter is not None:
        from finetune.adapter import load_adapter  # LoRA is optional for plain sampling

        try:
            load_adapter(model, adapter)
        except (ValueError, FileNotFoundError) as err:
            raise CheckpointError(f"adapter {adapter}: {err}") from None
    return cfg, tokenizer, model.to(device).eval()


def pick_device(name: str = "auto") -> str:
    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device=cuda but no CUDA GPU is visible; use --device=cpu")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"
