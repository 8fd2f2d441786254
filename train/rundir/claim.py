"""Claiming a run folder for a training command, and the marker that says a run is finished.

A training command (pretrain, finetune, DPO, GRPO) writes `train.out_dir/<train.name>` and nothing else. Rerunning
a command continues its run, never a silent copy beside it; what happens depends on what the folder holds and on
`train.resume`:

    the folder holds    resume=auto (the default)          resume=false    resume=true, or one of its checkpoints
    nothing             a fresh run                        a fresh run     true: an error (nothing to resume)
    an unfinished run   resumed from its newest            refused         resumed from that checkpoint
                        checkpoint if config.yaml is the
                        same config (else refused)
    a finished run      refused: choose a new --train.name, or --train.resume=true to train it further

`resume=PATH` of another run's checkpoint starts a new run from it, so the folder must hold nothing. Keys of how
a run is launched or watched (`LAUNCH_KEYS`, the model's runtime fields such as kernel backends) may differ on a
rerun.

The claim is atomic: rank 0 creates the folder with an exclusive mkdir (or finds it) and takes its lock, an flock
held until the command ends (train/rundir/paths.py), before looking inside; of two processes started with the
same name one trains and the other is refused, naming the first's PID.

A run is finished when `finished.json` exists. It is written last (temp + rename), after the final weights (also
temp + rename), the final checkpoint, validation, metrics and the stage's own results (finetune's evaluation); a
run stopped anywhere before has none, and `resume=auto` resumes it from its newest checkpoint to write what is
missing.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import time
from pathlib import Path

from inputs.yaml import read_yaml
from train.config import ConfigError
from train.rundir.atomic import write_text
from train.rundir.paths import FINISHED, lock_run_dir, unlock_run_dir

LAUNCH_KEYS = ("train.resume", "train.progress_bar", "train.out_dir", "data.num_workers", "data.cache_dir", "log.")


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED).is_file()


def mark_finished(run_dir: Path, step: int) -> None:
    """Write the completion marker (after everything else the run writes)."""
    write_text(Path(run_dir) / FINISHED, json.dumps({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def finished_step(run_dir: Path) -> str:
    try:
        return str(json.loads((Path(run_dir) / FINISHED).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def resume_mode(resume: bool | str, run_dir: Path) -> str:
    """`train.resume` -> auto | fresh | continue (this run's checkpoint) | from (another run's checkpoint)."""
    if resume in (True, "true"):
        return "continue"
    if resume in (False, "false"):
        return "fresh"
    if resume == "auto":
        return "auto"
    return "continue" if Path(resume).resolve().parent == (run_dir / "checkpoints").resolve() else "from"


def claim_run_dir(run_dir: Path, resume: bool | str) -> Path:
    """Create (exclusively) or find `run_dir`, lock it for this process and check that `resume` may write there;
    a refusal (ConfigError, or CheckpointError when another process holds it) releases the lock."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
        created = True
    except FileExistsError:
        created = False
    lock_run_dir(run_dir)
    atexit.register(release_run_dir, run_dir)  # a stage that fails before `fit` releases it: leaves no empty folder
    try:
        if not created:
            check_claim(run_dir, resume_mode(resume, run_dir))
    except ConfigError:
        release_run_dir(run_dir)
        raise
    return run_dir


def release_run_dir(run_dir: Path) -> None:
    """Unlock `run_dir` (a no-op where this process holds no lock) and remove it if it is empty: a start refused
    before it wrote anything leaves no folder behind."""
    unlock_run_dir(run_dir)
    try:
        run_dir.rmdir()
    except OSError:  # not empty (or already gone)
        pass


def check_claim(run_dir: Path, mode: str) -> None:
    if mode == "continue":
        return
    if is_finished(run_dir):
        raise ConfigError(f"{run_dir} is a finished run (step {finished_step(run_dir)}); choose another "
                          "--train.name for a new run, or rerun with --train.resume=true (and a higher "
                          "--train.max_steps) to train it further")
    checkpoints = any((run_dir / "checkpoints").glob("*.ckpt"))
    if not ((run_dir / "config.yaml").is_file() or checkpoints):
        return  # nothing of a run (a folder claimed by a start that was refused, a worker's train.log)
    if not checkpoints and ((run_dir / "model.safetensors").is_file() or (run_dir / "adapter").is_dir()):
        raise ConfigError(f"{run_dir} holds weights but no checkpoint to resume from (an imported or merged run?); "
                          "choose another --train.name")
    if mode == "fresh":
        raise ConfigError(f"{run_dir} holds an unfinished run; resume it with --train.resume=auto, or choose another "
                          "--train.name")
    if mode == "from":
        raise ConfigError(f"{run_dir} holds a run, and a run started from another run's checkpoint needs a new "
                          "folder: choose another --train.name")


def flat(values: dict, prefix: str = "") -> dict:
    """{'model': {'mixer': 'x'}} -> {'model.mixer': 'x'}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def runtime_keys(cfg, prefix: str = "") -> set[str]:
    """The dotted config fields declared `runtime` (model/options.py: how the model runs, not what it is)."""
    out = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("runtime"):
            out.add(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(value):
            out |= runtime_keys(value, f"{prefix}{f.name}.")
    return out


def config_difference(saved: dict, new: dict, ignore: set[str] = frozenset()) -> tuple[str, object, object] | None:
    """The first dotted key (key, saved value, new value) that differs between two config trees, leaving out
    LAUNCH_KEYS, `ignore` and keys only one of them has (a field added or removed since); None if none does."""
    saved, new = flat(saved), flat(new)
    for key, value in new.items():
        if key in saved and saved[key] != value and key not in ignore and not key.startswith(LAUNCH_KEYS):
            return key, saved[key], value
    return None


def check_same_config(run_dir: Path, cfg) -> None:
    """A run resumed by `resume=auto` must be the one its folder holds: ConfigError naming the first differing key."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    diff = config_difference(read_yaml(path, "run config"), dataclasses.asdict(cfg), runtime_keys(cfg))
    if diff:
        key, before, now = diff
        raise ConfigError(f"{run_dir} holds an unfinished run with {key}={before!r}, not {now!r}; rerun with its "
                          "config to resume it, --train.resume=true to continue it with this one, or choose "
                          "another --train.name")
