"""`python -m train.check.record --config FILE --seeds 0 1 2 3 4 --out bands/NAME.json [--section.key=value ...]`:
train a recipe once per seed and write its band file (train/check/bands.py).

Seed s trains as `python -m <stage> --config FILE [overrides] --train.name=<name>-s<s> --train.seed=s` under
--out_dir (default runs/, name default bands-<band name>), --jobs at a time with --threads intra-op threads each;
a seed whose run has finished is reused, an unfinished one resumes. The stage's entry point follows the config's
folder (configs/pretrain: train, finetune: finetune, align/<name>.yaml: align.<name> where that module exists, else
align.dpo) or --stage. `--placeholder` writes a pretraining recipe's band without training: status "not measured yet",
its keys, and the command that measures it (for the GPU recipes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from inputs.errors import InputError, clip
from inputs.yaml import read_yaml
from train.check.bands import (
    FORMAT,
    MEASURED,
    UNMEASURED,
    band_metrics,
    differing,
    read_band,
    recipe_keys,
    run_curves,
    run_tokenizer,
)
from train.cli import ArgumentParser, user_errors_exit_2
from train.config import ConfigError, load_config
from train.rundir.atomic import write_text
from train.rundir.claim import FINISHED
from train.rundir.paths import FileKind, check_output, check_run_name, json_object

BAND = FileKind("a band file", json_object(lambda value: value.get("format") == FORMAT))
STAGES = {"pretrain": "train", "finetune": "finetune", "align": "align.dpo"}  # a config's folder -> entry point


def parse(argv: list[str]):
    parser = ArgumentParser(prog="python -m train.check.record", description=__doc__.split("\n\n")[0],
                            epilog="Other --section.key=value flags are config overrides for every seed.")
    parser.add_argument("--config", required=True, help="the recipe's YAML config")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="at least 2 seeds (5 for a band)")
    parser.add_argument("--out", required=True, help="the band file to write (bands/NAME.json)")
    parser.add_argument("--name", help="seed runs are <name>-s<seed> (default: bands-<band name>)")
    parser.add_argument("--out_dir", default="runs", help="folder of the seed runs (default: runs)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per seed (default: 1)")
    parser.add_argument("--stage", help="the entry point, e.g. align.grpo (default: by the config's folder)")
    parser.add_argument("--placeholder", action="store_true", help="write a 'not measured yet' band; train nothing")
    parser.add_argument("--force", action="store_true", help="replace an existing band file")
    args, overrides = parser.parse_known_args(argv)
    wrong = next((a for a in overrides if not (a.startswith("--") and "." in a.split("=")[0])), None)
    if wrong is not None:
        parser.error(f"unrecognized argument {wrong!r} (config overrides are --section.key=value)")
    if len(set(args.seeds)) < 2 or min(args.seeds) < 0 or args.jobs < 1 or args.threads < 1:
        parser.error("give at least 2 different seeds >= 0, --jobs >= 1 and --threads >= 1")
    return args, overrides


def stage_module(config: Path, stage: str | None) -> str:
    """--stage, else by the config's folder: configs/align/<name>.yaml runs align.<name> when that module exists
    (grpo, ppo), else align.dpo (dpo, kto, orpo: one entry point, align.loss_type)."""
    if stage:
        return stage
    folder = config.resolve().parent.name
    if folder == "align" and importlib.util.find_spec(f"align.{config.stem}") is not None:
        return f"align.{config.stem}"
    return STAGES.get(folder, "train")


def provenance(argv: list[str], threads: int) -> dict:
    """Command, date, commit and machine of a measurement."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=30).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    import torch

    machine = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
               else f"{os.cpu_count()}-core {platform.machine()} CPU, {threads} thread(s) per seed")
    return {"command": "python -m train.check.record " + shlex.join(argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "machine": machine}


def train_seed(module: str, config: str, overrides: list[str], run_dir: Path, seed: int, threads: int) -> Path:
    """Train (or resume) one seed's run in its own process; a finished run is reused as it is."""
    if (run_dir / FINISHED).is_file():
        print(f"seed {seed}: reusing {run_dir}", flush=True)
        return run_dir
    command = [sys.executable, "-m", module, "--config", config, *overrides, f"--train.name={run_dir.name}",
               f"--train.out_dir={run_dir.parent}", f"--train.seed={seed}", "--train.progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ConfigError(f"seed {seed} failed (exit code {done.returncode}): {clip(last, 300)}")
    print(f"seed {seed}: trained {run_dir}", flush=True)
    return run_dir


def measure(args, overrides: list[str]) -> dict:
    """Train every seed and return the band's keys, seeds and metrics."""
    name = check_run_name(args.name or f"bands-{Path(args.out).stem}", "--name")
    dirs = [Path(args.out_dir) / f"{name}-s{seed}" for seed in args.seeds]
    module = stage_module(Path(args.config), args.stage)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda d, s: train_seed(module, args.config, overrides, d, s, args.threads),
                             dirs, args.seeds))
    curves = [run_curves(run) for run in runs]
    keys = [recipe_keys(read_yaml(run / "config.yaml", "run config"), c, run_tokenizer(run))
            for run, c in zip(runs, curves)]
    for run, k in zip(runs[1:], keys[1:]):
        if differing(keys[0], k):
            raise ConfigError(f"{run} differs from {runs[0]} in {', '.join(differing(keys[0], k))}: seed runs of "
                              "one band must share their recipe (choose another --name)")
    return {"keys": keys[0], "seeds": args.seeds, "runs": [str(run) for run in runs], "metrics": band_metrics(curves)}


def placeholder(args, overrides: list[str]) -> dict:
    """The keys of a pretraining recipe, read from its config alone (no run)."""
    if "finetune" in read_yaml(args.config):
        raise ConfigError("--placeholder reads the recipe from the config alone: pretraining configs only")
    cfg = load_config(args.config, overrides)
    return {"keys": recipe_keys(asdict(cfg)), "seeds": args.seeds, "runs": [], "metrics": {}}


def dump(band: dict) -> str:
    """The band as JSON, one line per metric statistic (readable diffs)."""
    head = {k: v for k, v in band.items() if k != "metrics"}
    metrics = ",\n".join(f'  {json.dumps(name)}: {{\n' + ",\n".join(f'   "{k}": {json.dumps(v)}' for k, v in
                                                                   stats.items()) + "}"
                         for name, stats in band["metrics"].items())
    return json.dumps(head, indent=1)[:-2] + ',\n "metrics": {' + (f"\n{metrics}\n }}" if metrics else "}") + "\n}\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse(argv)
    with user_errors_exit_2():
        out = check_output(args.out, BAND, args.force, inputs=[args.config])
        if args.placeholder:
            measured = placeholder(args, overrides)
            meta = provenance([a for a in argv if a != "--placeholder"], args.threads)
            meta.update(date="", commit="", machine="")
        else:
            measured = measure(args, overrides)
            meta = provenance(argv, args.threads)
        if not measured["metrics"] and not args.placeholder:
            raise InputError("the seed runs logged no metric shared by every seed", out)
        band = {"format": FORMAT, "status": UNMEASURED if args.placeholder else MEASURED, **meta, **measured}
        write_text(out, dump(band))
        read_band(out)  # what was written reads back as a band
        print(f"band: {out} ({band['status']}; {len(measured['metrics'])} metrics, seeds {args.seeds})")


if __name__ == "__main__":
    main()
