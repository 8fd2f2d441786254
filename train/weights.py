"""Model weights as safetensors: the run directory's `model.safetensors`.

A tied output head shares the embedding's storage, which safetensors refuses to store twice: it is
dropped on save and re-tied by the model on load. Loading checks names and shapes, and a mismatch
names the first differing tensor instead of failing deep inside `load_state_dict`.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or made for another model; the CLI exits with code 2."""


def save_weights(model: nn.Module, path: str | Path, tied: bool = True, state: dict | None = None) -> None:
    """`state`: the model's full state dict when `model` itself is sharded (FSDP gathers it)."""
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, str(path))


def load_weights(model: nn.Module, path: str | Path, tied: bool = True) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-export or retrain") from None
    expected = model.state_dict()
    if tied:
        expected.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                              "was it written with another model config?")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(tensor.shape)} but the model expects "
                                  f"{tuple(expected[key].shape)}; check model.* in config.yaml")
    model.load_state_dict(state, strict=False)
