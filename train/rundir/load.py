"""Load any self-contained run directory the stack writes: its config, tokenizer and weights, plus a LoRA
adapter when the run is a LoRA run (adapter/ on a base, train/rundir/adapter.py) or one is passed.

A run directory may come from someone else, so nothing in it is trusted before it is checked: the weights
file's header (names and shapes, read without loading a tensor) is compared with the shapes config.yaml implies,
computed on the meta device, BEFORE the model is allocated. A config.yaml saying `d_model: 65536` is refused in
one line instead of allocating gigabytes first; before that, config.yaml's sizes are checked against this machine's
memory (train/estimate/memory.py), so `n_layers: 1000000000` is refused before even a meta-device model of it is built.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from data.corpus import DataError
from data.tokenizer import load_tokenizer
from data.tokens import content_hash
from model.transformer import Transformer
from train.config import Config, ConfigError, load_config
from train.estimate.memory import check_memory
from train.rundir.adapter import check_adapter_base, load_adapter, resolve
from train.rundir.weights import TOKENIZER_HASH, CheckpointError, check_shapes, load_weights, read_metadata, read_shapes


def load_run(run_dir: str | Path, device: str = "cpu", adapter: str | Path | None = None
             ) -> tuple[Config, object, Transformer]:
    """(config, tokenizer, model in eval mode) of a run directory (pretrained, full or LoRA fine-tuned, aligned,
    merged). The config returned is the weights' run's (a LoRA run's base); `adapter` adds an adapter on top."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml); pass --run runs/<name>")
    weights_dir, adapter_dir = resolve(run_dir, adapter)
    cfg = load_config(weights_dir / "config.yaml", run_file=True)
    check_memory(cfg, device, source=str(weights_dir / "config.yaml"))  # its sizes against this machine, first
    tokenizer = _tokenizer(run_dir, weights_dir, cfg)
    weights = weights_dir / "model.safetensors"
    check_fits(weights, read_shapes(weights), cfg)
    trained_with = read_metadata(weights).get(TOKENIZER_HASH)
    if trained_with and trained_with != content_hash(tokenizer.to_str()):
        raise DataError(f"{run_dir}/tokenizer.json is not the tokenizer {weights} was trained with (hash "
                        f"{trained_with}); the run directory mixes files from different runs: copy its own back")
    model = Transformer(cfg.model)
    load_weights(model, weights, tied=cfg.model.tie_embeddings)
    if adapter_dir is not None:
        try:
            load_adapter(model, adapter_dir)
            check_adapter_base(adapter_dir, weights_dir)
        except (ValueError, FileNotFoundError) as err:
            raise CheckpointError(f"adapter {adapter_dir}: {err}") from None
    return cfg, tokenizer, model.to(device).eval()


def _tokenizer(run_dir: Path, weights_dir: Path, cfg: Config):
    """The run's tokenizer, refused where it visibly belongs to another run: more tokens than the model, or a
    LoRA run's copy that differs from its base's."""
    tokenizer = load_tokenizer(run_dir / "tokenizer.json", cfg.data.eos_token)
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise DataError(f"{run_dir}/tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model only "
                        f"{cfg.model.vocab_size}; the run directory mixes files from different runs")
    base_file = weights_dir / "tokenizer.json"
    if weights_dir != run_dir and base_file.is_file() and load_tokenizer(base_file).to_str() != tokenizer.to_str():
        raise DataError(f"{run_dir}/tokenizer.json differs from its base's {base_file}; the adapter was trained "
                        "with the base's tokenizer: copy it back")
    return tokenizer


def check_fits(weights: Path, saved: dict[str, tuple], cfg: Config) -> None:
    """Refuse weights whose header disagrees with config.yaml before the model is built: the layer count first
    (a huge n_layers would take long even on the meta device), then every shape, from a meta-device model."""
    layers = {key.split(".")[1] for key in saved if key.startswith("layers.")}
    if len(layers) != cfg.model.n_layers:
        raise CheckpointError(f"{weights} holds {len(layers)} layers but config.yaml says model.n_layers="
                              f"{cfg.model.n_layers}; the run directory mixes files from different runs")
    with torch.device("meta"):  # the shapes config.yaml implies, without allocating them
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg.model).state_dict().items()}
    check_shapes(weights, saved, expected, tied=cfg.model.tie_embeddings)


def pick_device(name: str = "auto") -> str:
    """`--device`: auto (a GPU if one is visible), cpu, cuda, cuda:N of a visible GPU, or mps where it is built."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", name)
    kind, index = (match.group(1), match.group(2)) if match else (None, None)
    if kind is None or kind != "cuda" and index is not None:
        raise ConfigError(f"--device={name!r}: give auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise ConfigError(f"--device={name} but {visible} CUDA GPU(s) are visible; use --device=cpu"
                          + (f" or cuda:0..{visible - 1}" if visible else ""))
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device={name} but MPS is not available on this machine; use --device=cpu")
    return name
