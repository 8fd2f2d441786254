"""Training checkpoints: atomic writes, finding the newest complete one, and compatibility checks.

Lightning writes `checkpoints/step=N.ckpt` and `last.ckpt`. Each file is written to a temporary name and
renamed into place (rename is atomic on POSIX), so a kill during a save never leaves a file that looks
valid but is not. `train.resume`: `true` takes this run's `last.ckpt`, `auto` the newest checkpoint that
loads (skipping truncated ones), a path that file. Before resuming, the checkpoint's model config and
tokenizer are compared with the current ones and a difference is named.

A `.ckpt` is a pickle, and unpickling runs whatever the file says (`__reduce__`), so every load here and in
Lightning's own resume path (`AtomicCheckpointIO.load_checkpoint`) uses `weights_only=True`: tensors, dicts and
primitive types only. A file that needs more is refused (or skipped by `auto`), never executed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from train.rundir.weights import CheckpointError

STEP = re.compile(r"step=(\d+)")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException:  # a failed write (disk full, an exception) leaves the previous file in place
            tmp.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """What `trainer.fit(ckpt_path=...)` calls: always the safe loader, whatever the caller asks."""
        return read_checkpoint(Path(path))


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, wrong format, a pickle that wants to run code (UnpicklingError)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first[:200]}); "
                              "only weights-only checkpoints are loaded") from None


def _step(path: Path) -> int:
    match = STEP.search(path.name)
    return int(match.group(1)) if match else -1


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint under ckpt_dir that loads; corrupt ones are reported and skipped."""
    candidates = [p for p in ckpt_dir.glob("*.ckpt")] if ckpt_dir.is_dir() else []
    by_step = []
    for path in candidates:
        try:
            by_step.append((read_checkpoint(path)["global_step"], path.name != "last.ckpt", path))
        except (CheckpointError, KeyError) as err:
            print(f"warning: skipping unreadable checkpoint {path}: {err}")
    return max(by_step)[2] if by_step else None


def resolve_resume(resume: bool | str, ckpt_dir: Path) -> Path | None:
    if resume is False or resume == "false":
        return None
    if resume is True or resume == "true":
        path = ckpt_dir / "last.ckpt"
        if not path.is_file():
            raise CheckpointError(f"train.resume=true but {path} does not exist; use train.resume=auto to start "
                                  "fresh when there is nothing to resume")
        read_checkpoint(path)
        return path
    if resume == "auto":
        return newest_checkpoint(ckpt_dir)
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"train.resume: checkpoint {path} not found")
    read_checkpoint(path)
    return path


def check_compatible(path: Path, model_cfg, tokenizer_hash: str, state_keys: set[str] | None = None) -> None:
    """Refuse a checkpoint of another model, tokenizer or stage (`state_keys`: the module's state-dict names, so
    a LoRA fine-tune's checkpoint never resumes a pretraining run or the reverse). Every field of `model_cfg`
    (a ModelConfig) that defines the model must match; a field the checkpoint predates counts as its default, and
    runtime fields (kernel backends, activation checkpointing) may differ."""
    from model.options import identity

    checkpoint = read_checkpoint(path)
    saved = checkpoint.get("tinystack", {})
    if not saved:
        raise CheckpointError(f"{path} was not written by this tool (no 'tinystack' section)")
    for key, (value, default) in identity(model_cfg).items():
        node = saved["model"]
        for part in key.split("."):
            node = node.get(part, default) if isinstance(node, dict) else default
        if node != value:
            raise CheckpointError(f"{path} was trained with model.{key}={node!r} but the config "
                                  f"says {value!r}; use the same model config or start a new run")
    if saved.get("tokenizer_hash") != tokenizer_hash:
        raise CheckpointError(f"{path} was trained with another tokenizer (hash {saved.get('tokenizer_hash')} != "
                              f"{tokenizer_hash}); use the same data.path and data.vocab_size")
    keys = set(checkpoint.get("state_dict", {}))
    if state_keys is not None and keys != state_keys:
        extra, missing = sorted(keys - state_keys), sorted(state_keys - keys)
        lora = any(".lora_" in k for k in extra)
        lora = " (it holds LoRA adapters: resume it with python -m finetune)" if lora else ""
        raise CheckpointError(f"{path} was written by another kind of run{lora}: unexpected {extra[:2]}, missing "
                              f"{missing[:2]}; resume with the stage and config that wrote it")
