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
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from packaging.version import InvalidVersion, Version

from inputs.errors import InputError, clip
from inputs.files import regular_file
from inputs.schema import require_field, require_mapping
from train.rundir.weights import CheckpointError

STEP = re.compile(r"step=(\d+)")
FIELDS = {"global_step": int, "epoch": int, "pytorch-lightning_version": str, "state_dict": Mapping,
          "optimizer_states": list, "lr_schedulers": list, "loops": Mapping, "callbacks": Mapping,
          "tinystack": Mapping}  # their types, wherever present; resuming needs them all (check_resumable)
NOT_OURS = ("resume from a checkpoint this stack wrote (checkpoints/*.ckpt), or start a new run under another "
            "--train.name")


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
    """The checkpoint at `path`, loaded with the safe unpickler and checked (`check_structure`) before any field is
    used; a FIFO or folder is refused from its stat, before an open that could block."""
    regular_file(path, "checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, wrong format, a pickle that wants to run code (UnpicklingError)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first[:200]}); "
                              "only weights-only checkpoints are loaded") from None
    return check_structure(checkpoint, path)


def check_structure(checkpoint, path: Path, required: tuple[str, ...] = ("global_step",)) -> dict:
    """`checkpoint` if it is what Lightning and this stack wrote: a mapping whose fields have their types
    (`global_step` an integer >= 0, `state_dict` tensors by name, ...) and holds the `required` ones; else
    InputError naming the field."""
    values = require_mapping(checkpoint, path, "checkpoint", NOT_OURS)
    for key, kind in FIELDS.items():
        require_field(values, key, kind, path, NOT_OURS, required=key in required, minimum=0 if kind is int else None)
    state = values.get("state_dict") or {}
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise InputError(f"state_dict entry {bad!r} is not a tensor by name", path, fix=NOT_OURS)
    saved = values.get("tinystack")
    if saved is not None:
        require_field(saved, "model", dict, path, NOT_OURS)
        require_field(saved, "tokenizer_hash", str, path, NOT_OURS, required=False)
    return values


def check_resumable(checkpoint: dict, path: Path, shapes: Mapping[str, tuple] | None) -> None:
    """Everything `trainer.fit(ckpt_path=...)` restores is there with its type, and the weights have the model's
    `shapes`: a damaged checkpoint is refused here, in one line, not inside Lightning."""
    check_structure(checkpoint, path, required=tuple(key for key in FIELDS if key != "tinystack"))
    try:  # Lightning upgrades a checkpoint by its version before reading it
        Version(checkpoint["pytorch-lightning_version"])
    except InvalidVersion:
        raise InputError(f"pytorch-lightning_version {clip(checkpoint['pytorch-lightning_version'], 40)!r} is not a "
                         "version", path, fix=NOT_OURS) from None
    require_field(checkpoint["loops"], "fit_loop", Mapping, path, NOT_OURS)
    for state in (*checkpoint["optimizer_states"], *checkpoint["lr_schedulers"]):
        require_mapping(state, path, "an optimizer or schedule state", NOT_OURS)
    for state in checkpoint["optimizer_states"]:
        _check_optimizer_state(state, path)
    for key, shape in (shapes or {}).items():
        saved = tuple(checkpoint["state_dict"][key].shape)
        if saved != tuple(shape):
            raise CheckpointError(f"{path}: {key} has shape {saved} but the model's is {tuple(shape)}; resume with "
                                  "the config that wrote the checkpoint")


def _check_optimizer_state(state: Mapping, path: Path) -> None:
    """A torch optimizer's state_dict (`state` + `param_groups`), or a composite's: one such state per part (Muon
    with AdamW for the rest, train/optimizers/muon.py)."""
    if "state" in state or "param_groups" in state or not state:
        require_field(state, "state", Mapping, path, NOT_OURS)
        require_field(state, "param_groups", list, path, NOT_OURS)
        return
    for part in state.values():
        require_mapping(part, path, "a part of a composite optimizer's state", NOT_OURS)
        require_field(part, "state", Mapping, path, NOT_OURS)
        require_field(part, "param_groups", list, path, NOT_OURS)


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
        except ValueError as err:  # CheckpointError, InputError: not a file, not loadable, not a checkpoint
            print(f"warning: skipping unreadable checkpoint {path}: {err}")
    return max(by_step)[2] if by_step else None


def resolve_resume(resume: bool | str, ckpt_dir: Path) -> Path | None:
    if resume is False or resume == "false":
        return None
    if resume is True or resume == "true":
        path = ckpt_dir / "last.ckpt"
        if not path.exists():  # a FIFO or folder in its place: read_checkpoint says what it is
            raise CheckpointError(f"train.resume=true but {path} does not exist; use train.resume=auto to start "
                                  "fresh when there is nothing to resume")
        read_checkpoint(path)
        return path
    if resume == "auto":
        return newest_checkpoint(ckpt_dir)
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"train.resume: checkpoint {path} not found")
    read_checkpoint(path)
    return path


def check_compatible(path: Path, model_cfg, tokenizer_hash: str,
                     state_keys: set[str] | Mapping[str, tuple] | None = None) -> None:
    """Refuse a checkpoint of another model, tokenizer or stage (`state_keys`: the module's state-dict names, so
    a LoRA fine-tune's checkpoint never resumes a pretraining run or the reverse; with their shapes, also a
    checkpoint that cannot be restored: `check_resumable`). Every field of `model_cfg` (a ModelConfig) that defines
    the model must match; a field the checkpoint predates counts as its default, and runtime fields (kernel
    backends, activation checkpointing) may differ."""
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
    if state_keys is not None and keys != set(state_keys):
        extra, missing = sorted(keys - set(state_keys)), sorted(set(state_keys) - keys)
        lora = any(".lora_" in k for k in extra)
        lora = " (it holds LoRA adapters: resume it with python -m finetune)" if lora else ""
        raise CheckpointError(f"{path} was written by another kind of run{lora}: unexpected {extra[:2]}, missing "
                              f"{missing[:2]}; resume with the stage and config that wrote it")
    if isinstance(state_keys, Mapping):
        check_resumable(checkpoint, path, state_keys)
