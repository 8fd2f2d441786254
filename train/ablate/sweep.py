"""`python -m train.ablate --config configs/ablations/<name>.yaml [--section.key=value ...]`: run a sweep.

An ablation file names a base config and the variants to compare; every variant is trained once per seed:

    base: configs/pretrain/demo.yaml   # the config every variant starts from (path from the cwd or this file)
    name: mixer                        # optional; default: the file's name. Runs: <train.out_dir>/ablate-<name>/
    overrides: {train.max_steps: 300}  # optional, applied to every variant (dotted keys or nested mappings)
    seeds: [0, 1]                      # train.seed of each run: same init and data order for every variant
    match: params                      # optional: params | flops (training FLOPs per token) | none (default)
    lrs: [1.0e-3, 3.0e-3]              # optional: train every variant at each train.lr, choose each one's best
                                       # on the selection split, report the test split (train/ablate/grid.py)
    lr_seeds: [0]                      # optional, with lrs: only these seeds train at every lr (the choice
                                       # reads them); the other seeds train at each variant's chosen lr only
    jobs: 2                            # optional: runs at once (default: the CPU cores, or one per GPU)
    threads: 1                         # optional: torch CPU threads per run (default: cores // jobs)
    launcher: local                    # optional: local | slurm | submitit-local (train/ablate/launch.py)
    slurm: {partition: gpu, timeout_min: 60}   # optional: submitit executor parameters for launcher: slurm
    ladder: [{depth: 1}, {depth: 2}]   # optional: a scaling ladder, with `tokens`, `lr_rule` (train/ablate/ladder.py)
    variants:                          # name -> overrides; the first variant is the reference
      softmax: {model.mixer: softmax}
      gau: {model.mixer: gau, model.ffn: none}

Values merge in this order: base < overrides < command-line overrides < variant < the sweep's own keys
(train.seed, train.name = <variant>-s<seed> or, with `lrs`, <variant>-lr<lr>-s<seed>, train.lr from `lrs`,
train.out_dir = the sweep folder, train.resume = auto). A command-line key that a variant also sets is an error
(it would erase the difference). Sweep keys can be overridden too: `--seeds=[0] --match=none --jobs=1
--name=mixer-big`. `match: flops` resizes the same knob to the reference's
training FLOPs per token instead (train/ablate/param_match.py).

Fair comparison: every variant shares the token budget and the data (train.max_steps, batch_size,
grad_accum, data.seq_len, data.path, data.max_stories), checked up front. `match: params` resizes one width
knob per variant so its non-embedding parameter count is within 2% of the reference variant's (the tied
embedding is the same for all, so the totals match too): the `width_knob` its components declare (`model.d_ff`
for an FFN, else its mixer's own, e.g. `model.gau.hidden`), replacing any value the variant sets; see
train/ablate/param_match.py.

Every variant's config is built and validated (and its parameters matched) before anything trains, so a typo
fails in a second with exit code 2. Re-running a sweep reuses finished runs and resumes interrupted ones
whose config.yaml matches (each finished run leaves `ablate.json`: wall time, parameters); a run folder from a
different config is an error. A run halted by non-finite losses is reported with NaN losses and the sweep
goes on. SIGTERM stops the sweep after every running run's checkpoint, a killed worker is reported: run the
same command again to resume (train/ablate/launch.py). Every finished run is scored on two halves of the
validation text (train/ablate/splits.py): the selection half picks learning rates, the table reports the test
half. Results in the sweep folder: results.csv, results.md (printed at the end), val_loss.png,
val_loss_vs_compute.png and, with `lrs`, lr_grid.csv and lr_grid.png (train/ablate/report.py).

An ablation file whose base is an alignment config (configs/align/*.yaml) compares alignment methods from one SFT
run, scored by reward on held-out prompts: `python -m align.ablate --config configs/ablations/align.yaml`
(align/ablate/sweep.py documents its keys); this command refuses it with that line.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import time
from pathlib import Path

from inputs.yaml import read_yaml
from train.ablate.launch import LAUNCHERS, Job, default_jobs, launch
from train.ablate.param_match import MEASURES, get, match_params
from train.cli import parse_args, user_errors_exit_2
from train.config import Config, ConfigError, load_config, merge, parse_overrides, to_dict
from train.generate.flags import SEED_MAX
from train.rundir.claim import flat

SWEEP_KEYS = ("base", "name", "overrides", "seeds", "match", "lrs", "lr_seeds", "jobs", "threads", "launcher", "slurm",
              "variants", "ladder", "tokens", "lr_rule")  # the last three: a scaling ladder (train/ablate/ladder.py)
SHARED = ("train.max_steps", "train.batch_size", "train.grad_accum", "data.seq_len", "data.path", "data.max_stories")
OWNED = ("train.seed", "train.name", "train.out_dir", "train.resume")  # set by the sweep, per run
Runs = dict[str, dict[tuple[float, int], Config]]  # variant -> (train.lr, seed) -> its run's config


def nest(values: dict) -> dict:
    """{'model.mixer': 'x', 'train': {'lr': 1}} -> {'model': {'mixer': 'x'}, 'train': {'lr': 1}}."""
    out: dict = {}
    for key, value in values.items():
        *parents, leaf = str(key).split(".")
        node = {leaf: nest(value) if isinstance(value, dict) else value}
        for part in reversed(parents):
            node = {part: node}
        out = merge(out, node)
    return out


def load_sweep(path: str | None, argv: list[str], keys: tuple[str, ...] = SWEEP_KEYS) -> tuple[dict, dict]:
    """The ablation file (validated, with command-line sweep keys applied) and the command-line config overrides;
    `keys`: the sweep keys a file may hold (another stage's runner adds its own, align/ablate/sweep.py)."""
    if path is None:
        raise ConfigError("no ablation file: pass --config configs/ablations/<name>.yaml")
    sweep = read_yaml(path, "ablation file", fix="see configs/ablations/ for examples")
    cli = parse_overrides(argv)
    sweep.update({k: cli.pop(k) for k in list(cli) if k in keys and k not in ("base", "variants")})
    for key, value in cli.items():
        if not isinstance(value, dict):
            raise ConfigError(f"unknown override --{key}; sweep keys: seeds, match, lrs, lr_seeds, jobs, threads, "
                              "launcher, name; config keys look like --section.key=value")
    base = Path(str(sweep.get("base", "")))
    if not base.is_file() and (Path(path).parent / base).is_file():
        base = Path(path).parent / base
    sweep["base"] = base
    if keys == SWEEP_KEYS and base.is_file() and "align" in read_yaml(base):
        raise ConfigError(f"base {base} is an alignment config: run python -m align.ablate --config {path}")
    unknown = sorted(set(sweep) - set(keys))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(keys)}")
    sweep.setdefault("name", Path(path).stem)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(sweep["name"])) or str(sweep["name"]).strip(".") == "":
        raise ConfigError(f"name {sweep['name']!r}: a sweep name uses letters, digits, _ . + - (it names the folder "
                          "<train.out_dir>/ablate-<name>, and nothing outside it)")
    if "seeds" not in sweep:
        raise ConfigError(f"{path}: no `seeds`; give the seeds every variant trains with, e.g. seeds: [0, 1, 2]")
    seeds, variants = sweep["seeds"], sweep.get("variants")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          and 0 <= s <= SEED_MAX for s in seeds):
        raise ConfigError(f"seeds: expected a list of integers in [0, {SEED_MAX}], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds!r} repeats a seed; each seed is one independent run")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: `variants` must map at least one name to its overrides")
    if not isinstance(sweep.get("overrides") or {}, dict):
        raise ConfigError(f"{path}: `overrides` must map config keys to values (e.g. overrides: {{train.max_steps: "
                          f"300}}), got {str(sweep['overrides'])[:60]!r}")
    for name, values in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(name)) or not isinstance(values or {}, dict):
            raise ConfigError(f"variant {name!r}: names use letters, digits, _ . + -, and map to overrides")
    names = [str(name) for name in variants]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # `1` and `"1"` are two YAML keys but one run folder
        raise ConfigError(f"variants: two variants are named {twice!r}; each variant needs its own name")
    sweep["match"] = sweep.get("match") or "none"
    if sweep["match"] not in (*MEASURES, "none"):
        raise ConfigError(f"match: invalid choice {sweep['match']!r}; valid choices: {', '.join(MEASURES)}, none")
    check_run_keys(sweep)
    return sweep, cli


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _lr(value, lrs) -> float:
    """One entry of `lrs` as a float in (0, 1): a number, or a string YAML 1.1 left unparsed (`1e-3`)."""
    try:
        lr = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        lr = math.nan
    if not 0 < lr < 1:
        raise ConfigError(f"lrs: expected a list of learning rates in (0, 1), e.g. [1.0e-3, 3.0e-3], got {lrs!r}")
    return lr


def lr_label(lr: float) -> str:
    """How a learning rate appears in its runs' names (<variant>-lr<label>-s<seed>)."""
    return f"{lr:g}"


def check_run_keys(sweep: dict) -> None:
    """lrs, jobs, threads, launcher and slurm: how the runs train (train/ablate/launch.py)."""
    lrs = sweep.get("lrs")
    if lrs is not None:
        sweep["lrs"] = lrs = [_lr(lr, lrs) for lr in lrs] if isinstance(lrs, list) and lrs else _lr(None, lrs)
        labels = [lr_label(lr) for lr in lrs]
        twice = next((label for label in labels if labels.count(label) > 1), None)
        if twice is not None:  # one run folder <variant>-lr<label>-s<seed> for two learning rates
            same = [lr for lr, label in zip(lrs, labels) if label == twice]
            raise ConfigError(f"lrs: {' and '.join(map(repr, same))} both name runs '-lr{twice}-'; give learning "
                              "rates that differ in their first 6 significant digits, each once")
    lr_seeds = sweep.get("lr_seeds")
    if lr_seeds is not None:
        if lrs is None:
            raise ConfigError("lr_seeds: needs `lrs` (it names the seeds that train at every learning rate)")
        if not isinstance(lr_seeds, list) or not lr_seeds or not all(_count(x) for x in lr_seeds) \
                or not set(lr_seeds) <= set(sweep["seeds"]):
            raise ConfigError(f"lr_seeds: expected a non-empty list of seeds from seeds {sweep['seeds']!r}, "
                              f"got {lr_seeds!r}")
    for key, low in (("jobs", 1), ("threads", 0)):
        if sweep.get(key) is not None and not (_count(sweep[key]) and sweep[key] >= low):
            raise ConfigError(f"{key}: expected an integer >= {low}, got {sweep[key]!r}")
    sweep.setdefault("launcher", "local")
    if sweep["launcher"] not in LAUNCHERS:
        raise ConfigError(f"launcher: invalid choice {sweep['launcher']!r}; valid choices: {', '.join(LAUNCHERS)}")
    if not isinstance(sweep.get("slurm") or {}, dict):
        raise ConfigError("slurm: expected a mapping of submitit executor parameters, e.g. {partition: gpu}")


def build_configs(sweep: dict, cli: dict) -> Runs:
    """variant -> (train.lr, seed) -> validated Config, in the order of the file; raises ConfigError on any
    problem. Without `lrs` every run of a variant has the variant's own train.lr."""
    common = merge(nest(sweep.get("overrides") or {}), cli)
    out_dir = load_config(sweep["base"], common).train.out_dir
    sweep_dir = Path(out_dir) / f"ablate-{sweep['name']}"
    owned = (*OWNED, "train.lr") if sweep.get("lrs") else OWNED
    configs: Runs = {}
    for name, values in sweep["variants"].items():
        variant = nest(values or {})
        for keys, why in ((flat(cli), "set on the command line for every variant"), (owned, "set by the sweep")):
            clash = sorted(set(flat(variant)).intersection(keys))
            if clash:
                raise ConfigError(f"variant {name!r} sets {', '.join(clash)}, which is {why}")
        try:
            cfg = load_config(sweep["base"], merge(common, variant))
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
        configs[name] = {}
        for lr in sweep.get("lrs") or [cfg.train.lr]:
            for seed in sweep["seeds"]:
                run = copy.deepcopy(cfg)
                label = f"{name}-lr{lr_label(lr)}-s{seed}" if sweep.get("lrs") else f"{name}-s{seed}"
                run.train.seed, run.train.name, run.train.lr = seed, label, float(lr)
                run.train.out_dir, run.train.resume = str(sweep_dir), "auto"
                configs[name][float(lr), seed] = run
    first = next(iter(next(iter(configs.values())).values()))
    for name, runs in configs.items():
        for key in SHARED:
            if get(next(iter(runs.values())), key) != get(first, key):
                raise ConfigError(f"variant {name!r} changes {key}; variants must share the token budget and data")
    return configs


def check_existing(cfg: Config) -> Path:
    """The run folder; a leftover from a different config is a ConfigError (resuming would mix two runs). A key the
    saved config lacks (an option added since that run) counts as its default: the run trained with it."""
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    saved_file = run_dir / "config.yaml"
    if saved_file.exists():
        saved, new = flat(read_yaml(saved_file, "run config")), to_dict(cfg)
        for key in ("vocab_size", "max_seq_len"):  # resolved from the data when the run starts
            if not new["model"][key]:
                new["model"][key] = saved.get(f"model.{key}")
        defaults = flat(to_dict(type(cfg)()))
        diff = [k for k, v in flat(new).items() if saved.get(k, defaults.get(k)) != v]
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({diff[0]}: "
                              f"{saved.get(diff[0])!r} there, {flat(new)[diff[0]]!r} now); "
                              "remove it or pick another --train.out_dir")
    return run_dir


def run_sweep(sweep: dict, configs: Runs, widths: dict[str, str]) -> str:
    """Train the runs, choose each variant's lr on the selection split, write and return the results table.
    With `lr_seeds` the grid trains those seeds only; the other seeds then train at each variant's chosen lr."""
    from train.ablate.grid import choose_lrs
    from train.ablate.report import RunResult, write_results
    from train.ablate.splits import SPLITS

    seeds = sweep["seeds"]
    grid_seeds = sweep.get("lr_seeds") or seeds
    splits = SPLITS if sweep.get("lrs") else ("test",)  # without a choice to make, the selection half is unused
    start = time.perf_counter()
    grid_runs = {(name, lr, seed): cfg for name, runs in configs.items() for (lr, seed), cfg in runs.items()
                 if seed in grid_seeds}
    train_runs(sweep, grid_runs, splits)
    grid = [RunResult.read(name, seed, run_dir(cfg), widths[name], lr) for (name, lr, seed), cfg in grid_runs.items()]
    chosen = choose_lrs(grid)
    rest = {(name, chosen[name], seed): configs[name][chosen[name], seed] for name in configs for seed in seeds
            if seed not in grid_seeds}
    if rest:
        print(f"learning rates chosen on seeds {grid_seeds}: "
              f"{', '.join(f'{name} {lr:g}' for name, lr in chosen.items())}; now the other seeds", flush=True)
        train_runs(sweep, rest, splits)
    print(f"sweep trained in {time.perf_counter() - start:.0f} s")
    results = [RunResult.read(name, seed, run_dir(configs[name][chosen[name], seed]), widths[name], chosen[name])
               for name in configs for seed in seeds]
    return write_results(Path(first_run(configs).train.out_dir), sweep, results, grid if sweep.get("lrs") else ())


def run_dir(cfg: Config) -> Path:
    return Path(cfg.train.out_dir) / cfg.train.name


def train_runs(sweep: dict, runs: dict[tuple[str, float, int], Config], splits: tuple[str, ...]) -> None:
    """Train every unfinished run (seed-major: a full comparison early); SweepIncomplete if any did not finish."""
    jobs = [Job(cfg.train.name, cfg, check_existing(cfg), splits) for cfg in runs.values()]
    jobs.sort(key=lambda job: sweep["seeds"].index(job.cfg.train.seed))
    todo = [job for job in jobs if not (job.run_dir / "ablate.json").is_file()]
    n_parallel = sweep.get("jobs") or default_jobs()
    threads = sweep.get("threads")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // n_parallel)
    print(f"{len(jobs)} runs ({len(jobs) - len(todo)} finished before), {min(n_parallel, max(len(todo), 1))} at "
          f"a time, {threads} thread(s) each", flush=True)
    unfinished = launch(todo, n_parallel, threads, sweep["launcher"], sweep.get("slurm"),
                        Path(next(iter(runs.values())).train.out_dir) / "submitit")
    if unfinished:
        raise SweepIncomplete(f"{len(unfinished)} run(s) did not finish ({', '.join(unfinished)}); run the same "
                              "command again to resume them (finished runs are reused)")


def first_run(configs: Runs) -> Config:
    return next(iter(next(iter(configs.values())).values()))


class SweepIncomplete(RuntimeError):
    """Some runs were killed or interrupted: exit code 1 and the command to resume."""


def main(argv: list[str] | None = None, ladder=None) -> None:
    """`ladder`: the runner of files with `ladder:` (train/ablate/ladder.py `run_ladder`; `python -m train.ablate`
    passes it in, so that this module does not import the one that builds on it)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        with user_errors_exit_2():
            path, rest = parse_args(argv)
            sweep, cli = load_sweep(path, rest)
            if "ladder" in sweep:  # every variant at several model sizes
                if ladder is None:
                    raise ConfigError(f"{path} is a scaling ladder: run python -m train.ablate --config {path}")
                print(ladder(sweep, cli))
                return
            configs = build_configs(sweep, cli)
            match = sweep.get("match")
            widths = match_params(configs, by=match) if match in MEASURES else {v: "" for v in configs}
            table = run_sweep(sweep, configs, widths)
    except SweepIncomplete as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(table)
    folder = Path(first_run(configs).train.out_dir)
    print(f"results: {folder}/ (results.md, results.csv, the plots; each run's folder and train.log under it)")

