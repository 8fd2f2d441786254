"""Where an ablation's runs train: one after another here, N at once in worker processes, or on a cluster.

    launcher: local   jobs: 1   in this process, one run after another
    launcher: local   jobs: N   N worker processes at a time (each run in its own), threads split between
                                them (`threads`, default cores // N); on GPUs one run per device (slot i sees GPU
                                i mod #GPUs through CUDA_VISIBLE_DEVICES)
    launcher: slurm             every run one job of a submitit array on Slurm (`slurm:` holds the executor's
                                parameters, e.g. {partition: gpu, gpus_per_node: 1, timeout_min: 60}), at most
                                `jobs` at a time; see docs/distributed.md
    launcher: submitit-local    the same through submitit's LocalExecutor (subprocesses here): the cluster path,
                                testable without a cluster

Every run is the same function (`train_one`): `pretrain(cfg)`, then the split scores (train/ablate/splits.py), then
`ablate.json` in the run folder, written last and atomically: a run folder with `ablate.json` is finished, any
other is resumed from its last checkpoint by the next sweep (a job of another stage brings its own `work`, which
ends the same way: align/ablate/scores.py). A worker's output goes to `<run>/train.log`.

Workers are forked from a forkserver that has imported the training stack once (Linux; spawned elsewhere), so a
run starts in milliseconds, not the ~5 s of a fresh interpreter. Faults: a worker dies with its driver (Linux: it
watches the driver through a pidfd and sends itself SIGTERM, so it checkpoints and stops, and the next sweep
resumes it); SIGTERM to the driver is passed to the workers, which checkpoint at their next step; a worker
killed outright (SIGKILL, OOM) is reported, the others go on, and the sweep exits 1 naming what to re-run.
On CPU with the same `threads` a run gives the same numbers bit for bit whichever launcher trains it: each run
is seeded by its own train.seed and nothing is shared between runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from train.errors import TrainingHalted

LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class Job:
    label: str  # e.g. "softmax-lr0.003-s1"
    cfg: object  # train.config.Config (or what the job's `work` reads: an alignment run's plain values)
    run_dir: Path
    splits: tuple[str, ...] = ("selection", "test")  # the held-out halves scored (train/ablate/splits.py)
    work: Callable | None = None  # work(cfg, threads) runs instead of train_one: another stage's run (align/ablate)


def run_job(job: Job, threads: int) -> None:
    """Train, score and finish one job: `train_one`, or the job's own `work`."""
    if job.work is not None:
        job.work(job.cfg, threads)
    else:
        train_one(job.cfg, threads, job.splits)


def _die_with(driver: int) -> None:
    """SIGTERM this worker when the driver process `driver` exits (the worker then checkpoints and stops; the
    next sweep resumes it). A thread waits on a pidfd of the driver (Linux >= 5.3; elsewhere: no watch). The
    worker's parent is the forkserver, which a dead driver does not stop, so the parent cannot be watched."""
    if not hasattr(os, "pidfd_open"):
        return
    try:
        fd = os.pidfd_open(driver)
    except ProcessLookupError:  # the driver is already gone
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except OSError:  # a kernel without pidfds
        return

    def watch() -> None:
        select.select([fd], [], [])  # readable once the driver has exited
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()


def train_one(cfg, threads: int, splits: tuple[str, ...] = ("selection", "test")) -> dict:
    """Train one run to the end (or resume it), score the named splits and write `ablate.json`; returns its
    info."""
    import torch

    from train.ablate.param_match import count_flops
    from train.ablate.splits import split_scores
    from train.estimate.sizes import count_params, model_config
    from train.quiet import quiet
    from train.run import pretrain
    from train.rundir.claim import is_finished

    quiet()  # in every process that trains: a worker forked from the forkserver starts with Python's defaults
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    t0, halted = time.perf_counter(), None
    try:
        if not is_finished(run_dir):  # finished but unscored (stopped before ablate.json): score it
            pretrain(cfg)
    except TrainingHalted as err:  # a diverged variant is a result too: NaN in the table
        halted = str(err)
        print(f"warning: {cfg.train.name} halted: {err}", file=sys.stderr)
    params = count_params(model_config(cfg))
    info = {"wall_s": time.perf_counter() - t0, "params": params["total"],
            "non_embedding_params": params["non_embedding"],
            "flops_per_token": count_flops(cfg), "halted": halted, "threads": torch.get_num_threads(),
            "tokens_per_step": cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len,
            "splits": None if halted else split_scores(run_dir, splits)}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "ablate.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(run_dir / "ablate.json")
    return info


def _worker(job: Job, threads: int, env: dict, driver: int) -> None:
    """A worker: dies with the driver, writes its output to <run>/train.log, trains one run."""
    _die_with(driver)
    os.environ.update(env)
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log = os.open(run_dir / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):  # the C libraries' output too
        os.dup2(log, fd)
    run_job(job, threads)


def worker_context() -> multiprocessing.context.BaseContext:
    """Fresh worker processes, started fast: on Linux each is forked from a forkserver (a clean interpreter that
    has imported torch and the training stack once, never touched CUDA or a thread pool), so a run costs no
    interpreter start or imports (~5 s each on 2 cores); elsewhere spawned (a new interpreter per run)."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["train.ablate.launch", "train.run", "train.ablate.splits"])
        return ctx
    return multiprocessing.get_context("spawn")


def default_jobs() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else (os.cpu_count() or 1)


def launch(jobs: list[Job], n_parallel: int, threads: int, launcher: str = "local", slurm: dict | None = None,
           folder: Path | None = None) -> list[str]:
    """Train every job; returns the labels of those that did not finish (killed, failed, interrupted)."""
    if launcher != "local":
        return _submitit(jobs, n_parallel, threads, launcher, slurm or {}, folder)
    if n_parallel <= 1:
        for i, job in enumerate(jobs):
            print(f"[{i + 1}/{len(jobs)}] {job.label}", flush=True)
            run_job(job, threads)
        return []
    return _pool(jobs, n_parallel, threads)


def _pool(jobs: list[Job], n_parallel: int, threads: int) -> list[str]:
    import torch

    ctx, gpus = worker_context(), torch.cuda.device_count() if torch.cuda.is_available() else 0
    pending, running, failed, done, start = list(jobs), {}, [], 0, time.perf_counter()
    stop = {"signal": None}

    def forward(signum, frame):  # checkpoint and stop every worker; the next sweep resumes them
        stop["signal"] = signum
        for proc in running:
            proc.terminate()

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while pending or running:
            while pending and len(running) < n_parallel and stop["signal"] is None:
                job, slot = pending.pop(0), len(running)
                env = {"CUDA_VISIBLE_DEVICES": str(slot % gpus)} if gpus else {}
                args = (job, threads, env, os.getpid())
                proc = ctx.Process(target=_worker, args=args, name=job.label)
                proc.start()
                running[proc] = job
                print(f"[start {len(jobs) - len(pending)}/{len(jobs)}] {job.label} (log: {job.run_dir}/train.log)",
                      flush=True)
            if not running:
                break
            for sentinel in wait([p.sentinel for p in running]):
                proc = next(p for p in running if p.sentinel == sentinel)
                proc.join()
                job = running.pop(proc)
                if (job.run_dir / "ablate.json").is_file():
                    done += 1
                    elapsed = time.perf_counter() - start
                    print(f"[done {done}/{len(jobs)}] {job.label} after {elapsed:.0f} s", flush=True)
                else:
                    failed.append(job.label)
                    how = f"signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit code {proc.exitcode}"
                    print(f"warning: {job.label} did not finish ({how}; see {job.run_dir}/train.log)",
                          file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failed + [job.label for job in pending]


def _submitit(jobs: list[Job], n_parallel: int, threads: int, launcher: str, slurm: dict, folder: Path) -> list[str]:
    try:
        import submitit
    except ImportError:
        from train.config import ConfigError

        raise ConfigError(f"launcher: {launcher} needs submitit (pip install -e \".[cluster]\"); "
                          "or use launcher: local") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm" if launcher == "slurm" else "local")
    if launcher == "slurm":
        executor.update_parameters(slurm_array_parallelism=n_parallel, **slurm)
    else:
        executor.update_parameters(timeout_min=int(slurm.get("timeout_min", 24 * 60)))
    submitted = executor.map_array(run_job, jobs, [threads] * len(jobs))
    print(f"submitted {len(submitted)} runs through submitit ({launcher}); logs in {folder}", flush=True)
    failed = []
    for i, (job, handle) in enumerate(zip(jobs, submitted)):
        try:
            handle.result()
            print(f"[done {i + 1}/{len(jobs)}] {job.label}", flush=True)
        except Exception as err:  # noqa: BLE001 - a failed run is reported; the sweep is re-run to resume it
            failed.append(job.label)
            print(f"warning: {job.label} did not finish ({str(err).splitlines()[0] if str(err) else err!r})",
                  file=sys.stderr, flush=True)
    return failed
