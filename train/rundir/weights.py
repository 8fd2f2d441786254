"""Model weights as safetensors: the run directory's `model.safetensors`.

A tied output head shares the embedding's storage, which safetensors refuses to store twice: it is
dropped on save and re-tied by the model on load. Loading checks names and shapes, and a mismatch
names the first differing tensor instead of failing deep inside `load_state_dict`. The check reads only the
file's header (`read_shapes`), so it can run before a model of the claimed size is allocated (train/rundir/load.py).
Every tensor read must then be floating point and finite (`check_values`) before it reaches the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from train.rundir.atomic import replacing

TOKENIZER_HASH = "tokenizer_hash"  # metadata key: the tokenizer the weights were trained with


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or made for another model; the CLI exits with code 2."""


def save_weights(model: nn.Module, path: str | Path, tied: bool = True, state: dict | None = None,
                 tokenizer_hash: str | None = None) -> None:
    """`state`: the model's full state dict when `model` itself is sharded (FSDP gathers it). `tokenizer_hash`
    (data.tokens.content_hash of the tokenizer's JSON) goes into the file's metadata, so a run directory whose
    tokenizer.json was swapped for another run's is refused when it is loaded."""
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    if tied:
        state.pop("lm_head.weight", None)
    with replacing(path) as tmp:  # temp + rename: a kill mid-write leaves the previous file, never half of one
        save_file(state, str(tmp), metadata={TOKENIZER_HASH: tokenizer_hash} if tokenizer_hash else None)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header's metadata ({} if none); the file is known readable (read_shapes ran first)."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, without reading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt or truncated files
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(err)[:160]}); re-export or "
                              "retrain") from None


def check_shapes(path: Path, saved: dict[str, tuple], expected: dict[str, tuple], tied: bool = True) -> None:
    """Raise CheckpointError naming the first tensor the file lacks, has extra, or has in another shape."""
    expected = {k: v for k, v in expected.items() if not (tied and k == "lm_head.weight")}
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                              "was it written with another model config?")
    for key, shape in saved.items():
        if tuple(shape) != tuple(expected[key]):
            raise CheckpointError(f"{path}: {key} has shape {tuple(shape)} but the model expects "
                                  f"{tuple(expected[key])}; check model.* in config.yaml")


def check_values(path: str | Path, key: str, tensor: torch.Tensor) -> None:
    """CheckpointError unless `tensor` (the weight `key` read from `path`) is floating point and finite: integer
    tensors of the right shape would be cast silently, and a NaN weight makes every output NaN."""
    if not tensor.is_floating_point():
        raise CheckpointError(f"{path}: {key} holds {str(tensor.dtype).replace('torch.', '')} values; weights must "
                              "be floating point (quantized or integer tensors are not loaded)")
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{path}: {key} holds {bad} NaN or infinite value(s) of {tensor.numel()}; the weights "
                              "are corrupt: re-export or retrain")


def load_weights(model: nn.Module, path: str | Path, tied: bool = True) -> None:
    path = Path(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes(path, read_shapes(path), expected, tied)
    try:
        state = load_file(str(path))
    except Exception as err:  # a header that reads but data that does not
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(err)[:160]}); re-export or "
                              "retrain") from None
    for key, tensor in state.items():
        check_values(path, key, tensor)
    model.load_state_dict(state, strict=False)
