"""Multi-process training: the Lightning strategy for `train.strategy`, one run directory for all ranks, and the
final weights as one full state dict.

    train.strategy=auto | ddp       Lightning's names (DDP: every rank holds the whole model, gradients all-reduced)
    train.strategy=fsdp             FSDPStrategy, one FSDP unit per `Block`; checkpoints hold the full (unsharded)
                                    state dict, so they load on one device
    train.strategy=deepspeed        Lightning's DeepSpeed (ZeRO stage 2), where `deepspeed` is installed

Only rank 0 claims the run directory (train/rundir/claim.py: it decides whether the folder may be written, and
locks it); the other ranks take its decision. With `train.devices > 1` Lightning re-executes the script for ranks
1..N-1 *after* rank 0 has claimed `runs/<name>`, which would refuse them: rank 0 publishes its folder in the
environment (`TINYSTACK_RUN_DIR`), which the workers it launches inherit. Under an external launcher (torchrun,
SLURM srun) all ranks start at once: rank 0 writes `<run dir>/.launch` holding a key of the launch (job id,
rendezvous address) once its claim succeeded, and the other ranks wait for the folder to carry their key.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from train.config import ConfigError

RUN_DIR_ENV = "TINYSTACK_RUN_DIR"
LAUNCH_FILE = ".launch"
STARTED = time.time()


def launch_rank() -> int:
    """This process's global rank as the launcher's environment tells it (0 for a plain `python -m train`)."""
    if "RANK" in os.environ:  # torchrun
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # srun
        return int(os.environ.get("SLURM_PROCID", "0"))
    return int(os.environ.get("NODE_RANK", "0")) + int(os.environ.get("LOCAL_RANK", "0"))  # zero-ness only


def external_launch() -> bool:
    """All ranks were started by torchrun / srun (not by Lightning from rank 0)."""
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return torchrun or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def launch_key() -> str:
    names = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
             "MASTER_ADDR", "MASTER_PORT")
    return hashlib.sha256("|".join(os.environ.get(n, "") for n in names).encode()).hexdigest()[:16]


def shared_run_dir(choose: Callable[[], Path], base: Path, timeout: float = 600.0) -> Path:
    """The run directory `choose()` picks on rank 0, the same path on every rank."""
    rank = launch_rank()
    inherited = os.environ.get(RUN_DIR_ENV)
    if rank > 0 and inherited:  # a worker Lightning launched from rank 0
        return Path(inherited)
    if rank > 0 and external_launch():
        return _wait_for_launch_dir(base, launch_key(), timeout)
    path = choose()
    os.environ[RUN_DIR_ENV] = str(path)  # inherited by the workers `trainer.fit` launches
    if external_launch():
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f"{LAUNCH_FILE}.tmp{os.getpid()}"
        tmp.write_text(launch_key())
        os.replace(tmp, path / LAUNCH_FILE)
    return path


def _wait_for_launch_dir(base: Path, key: str, timeout: float) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        marker = base / LAUNCH_FILE
        if marker.is_file() and marker.stat().st_mtime > STARTED - timeout and marker.read_text() == key:
            return base
        time.sleep(0.5)
    raise ConfigError(f"rank {launch_rank()}: rank 0 did not create the run directory under {base.parent} within "
                      f"{timeout:.0f}s; is the output folder shared between nodes (train.out_dir)?")


def build_strategy(name: str, accelerator: str = "auto"):
    """`train.strategy` -> what `L.Trainer(strategy=...)` takes; FSDP wraps each transformer `Block`."""
    if name == "fsdp":
        import torch
        from lightning.pytorch.strategies import FSDPStrategy

        from model.block import Block

        if accelerator == "cpu" or not torch.cuda.is_available():
            raise ConfigError("train.strategy=fsdp needs CUDA GPUs (FSDP shards over accelerator devices); "
                              "use --train.strategy=ddp on CPU")
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    if name == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("train.strategy=deepspeed needs the deepspeed package (pip install deepspeed); "
                              "or use --train.strategy=fsdp") from None
    return name


def is_sharded(trainer) -> bool:
    """The model is sharded across ranks (FSDP): gathering weights needs every rank."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


def full_state_dict(trainer, module) -> dict | None:
    """The module's full state dict (every rank must call this under FSDP); None on ranks other than 0."""
    if is_sharded(trainer):
        state = trainer.strategy.lightning_module_state_dict()  # gathered to rank 0, on CPU
        return state if trainer.is_global_zero else None
    return module.state_dict() if trainer.is_global_zero else None
