"""`python -m train.ablate --config configs/ablations/<name>.yaml [--section.key=value ...]`: run a sweep.

An ablation file names a base config and the variants to compare; every variant is trained once per seed:

    base: configs/pretrain/demo.yaml   # the config every variant starts from (path from the cwd or this file)
    name: mixer                        # optional; default: the file's name. Runs: <train.out_dir>/ablate-<name>/
    overrides: {train.max_steps: 300}  # optional, applied to every variant (dotted keys or nested mappings)
    seeds: [0, 1]                      # train.seed of each run: same init and data order for every variant
    match: params                      # optional: params | flops (training FLOPs per token) | none (default)
    threads: 1                         # optional: torch CPU threads (0 = torch's default)
    variants:                          # name -> overrides; the first variant is the reference
      softmax: {model.mixer: softmax}
      gau: {model.mixer: gau, model.ffn: none}

Values merge in this order: base < overrides < command-line overrides < variant < the sweep's own keys
(train.seed, train.name = <variant>-s<seed>, train.out_dir = the sweep folder, train.resume = auto). A
command-line key that a variant also sets is an error (it would erase the difference). Sweep keys can be
overridden too: `--seeds=[0] --match=none --threads=2 --name=mixer-big`. `match: flops` resizes the same knob to
the reference's training FLOPs per token instead (train/param_match.py).

Fair comparison: every variant shares the token budget and the data (train.max_steps, batch_size,
grad_accum, data.seq_len, data.path, data.max_stories), checked up front. `match: params` resizes one width
knob per variant so its non-embedding parameter count is within 2% of the reference variant's (the tied
embedding is the same for all, so the totals match too): the `width_knob` its components declare (`model.d_ff`
for an FFN, else its mixer's own, e.g. `model.gau.hidden`), replacing any value the variant sets; see
train/param_match.py.

Every variant's config is built and validated (and its parameters matched) before anything trains, so a typo
fails in a second with exit code 2. Re-running a sweep reuses finished runs and resumes interrupted ones
whose config.yaml matches (each finished run leaves `ablate.json`: wall time, parameters); a run folder from a
different config is an error. A run halted by non-finite losses is reported with NaN losses and the sweep
goes on; SIGTERM stops the sweep after the run's checkpoint (run it again to resume). Results in the sweep
folder: results.csv, results.md (printed at the end) and val_loss.png (see train/ablate_report.py).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import yaml

from train.cli import USER_ERRORS, parse_args
from train.config import Config, ConfigError, load_config, merge, parse_overrides, to_dict
from train.param_match import MEASURES, count_flops, count_params, get, match_params

SWEEP_KEYS = ("base", "name", "overrides", "seeds", "match", "threads", "variants")
SHARED = ("train.max_steps", "train.batch_size", "train.grad_accum", "data.seq_len", "data.path", "data.max_stories")
OWNED = ("train.seed", "train.name", "train.out_dir", "train.resume")  # set by the sweep, per run


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


def flat(values: dict, prefix: str = "") -> dict:
    """The inverse of nest: {'model': {'mixer': 'x'}} -> {'model.mixer': 'x'}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_sweep(path: str | None, argv: list[str]) -> tuple[dict, dict]:
    """The ablation file (validated, with command-line sweep keys applied) and the command-line config overrides."""
    if path is None or not Path(path).is_file():
        raise ConfigError(f"ablation file not found: {path}; see configs/ablations/ for examples")
    try:
        sweep = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    cli = parse_overrides(argv)
    sweep.update({k: cli.pop(k) for k in list(cli) if k in SWEEP_KEYS and k not in ("base", "variants")})
    for key, value in cli.items():
        if not isinstance(value, dict):
            raise ConfigError(f"unknown override --{key}; sweep keys: seeds, match, threads, name; config keys look "
                              "like --section.key=value")
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SWEEP_KEYS)}")
    base = Path(str(sweep.get("base", "")))
    if not base.is_file() and (Path(path).parent / base).is_file():
        base = Path(path).parent / base
    sweep["base"] = base
    sweep.setdefault("name", Path(path).stem)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(sweep["name"])) or str(sweep["name"]).strip(".") == "":
        raise ConfigError(f"name {sweep['name']!r}: a sweep name uses letters, digits, _ . + - (it names the folder "
                          "<train.out_dir>/ablate-<name>, and nothing outside it)")
    if "seeds" not in sweep:
        raise ConfigError(f"{path}: no `seeds`; give the seeds every variant trains with, e.g. seeds: [0, 1, 2]")
    seeds, variants = sweep["seeds"], sweep.get("variants")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          and s >= 0 for s in seeds):
        raise ConfigError(f"seeds: expected a list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds!r} repeats a seed; each seed is one independent run")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: `variants` must map at least one name to its overrides")
    for name, values in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(name)) or not isinstance(values or {}, dict):
            raise ConfigError(f"variant {name!r}: names use letters, digits, _ . + -, and map to overrides")
    sweep["match"] = sweep.get("match") or "none"
    if sweep["match"] not in (*MEASURES, "none"):
        raise ConfigError(f"match: invalid choice {sweep['match']!r}; valid choices: {', '.join(MEASURES)}, none")
    return sweep, cli


def build_configs(sweep: dict, cli: dict) -> dict[str, dict[int, Config]]:
    """variant -> seed -> validated Config, in the order of the file; raises ConfigError on any problem."""
    common = merge(nest(sweep.get("overrides") or {}), cli)
    out_dir = load_config(sweep["base"], common).train.out_dir
    sweep_dir = Path(out_dir) / f"ablate-{sweep['name']}"
    configs: dict[str, dict[int, Config]] = {}
    for name, values in sweep["variants"].items():
        variant = nest(values or {})
        for keys, why in ((flat(cli), "set on the command line for every variant"), (OWNED, "set by the sweep")):
            clash = sorted(set(flat(variant)).intersection(keys))
            if clash:
                raise ConfigError(f"variant {name!r} sets {', '.join(clash)}, which is {why}")
        try:
            cfg = load_config(sweep["base"], merge(common, variant))
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
        configs[name] = {}
        for seed in sweep["seeds"]:
            run = copy.deepcopy(cfg)
            run.train.seed, run.train.name, run.train.out_dir, run.train.resume = seed, f"{name}-s{seed}", \
                str(sweep_dir), "auto"
            configs[name][seed] = run
    first = next(iter(configs.values()))[sweep["seeds"][0]]
    for name, runs in configs.items():
        for key in SHARED:
            if get(runs[sweep["seeds"][0]], key) != get(first, key):
                raise ConfigError(f"variant {name!r} changes {key}; variants must share the token budget and data")
    return configs


def check_existing(cfg: Config) -> Path:
    """The run folder; a leftover from a different config is a ConfigError (resuming would mix two runs)."""
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    saved_file = run_dir / "config.yaml"
    if saved_file.is_file():
        saved, new = yaml.safe_load(saved_file.read_text()), to_dict(cfg)
        for key in ("vocab_size", "max_seq_len"):  # resolved from the data when the run starts
            if not new["model"][key]:
                new["model"][key] = saved["model"][key]
        diff = [k for k, v in flat(new).items() if flat(saved).get(k) != v]
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({diff[0]}: "
                              f"{flat(saved).get(diff[0])!r} there, {flat(new)[diff[0]]!r} now); "
                              "remove it or pick another --train.out_dir")
    return run_dir


def run_sweep(sweep: dict, configs: dict[str, dict[int, Config]], widths: dict[str, str]) -> str:
    from train.ablate_report import RunResult, write_results
    from train.module import TrainingHalted
    from train.run import pretrain  # Lightning loads only once every config is valid

    run_dirs = {(v, s): check_existing(cfg) for v, runs in configs.items() for s, cfg in runs.items()}
    results, n, start = [], len(run_dirs), time.perf_counter()
    for i, seed in enumerate(sweep["seeds"]):  # seed-major: one full comparison as early as possible
        for j, (name, runs) in enumerate(configs.items()):
            cfg, run_dir = runs[seed], run_dirs[name, seed]
            info_file = run_dir / "ablate.json"
            if not info_file.is_file():
                print(f"[{i * len(configs) + j + 1}/{n}] {cfg.train.name} {widths[name]}", flush=True)
                t0, halted = time.perf_counter(), None
                try:
                    pretrain(cfg)
                except TrainingHalted as err:  # a diverged variant is a result too: NaN in the table
                    halted = str(err)
                    print(f"warning: {cfg.train.name} halted: {err}", file=sys.stderr)
                total, non_emb = count_params(cfg)
                info = {"wall_s": time.perf_counter() - t0, "params": total, "non_embedding_params": non_emb,
                        "flops_per_token": count_flops(cfg), "halted": halted}
                run_dir.mkdir(parents=True, exist_ok=True)
                info_file.write_text(json.dumps(info))
            results.append(RunResult.read(name, seed, run_dir, widths[name]))
    print(f"sweep trained in {time.perf_counter() - start:.0f} s")
    return write_results(Path(configs[next(iter(configs))][sweep["seeds"][0]].train.out_dir), sweep, results)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        path, rest = parse_args(argv)
        sweep, cli = load_sweep(path, rest)
        configs = build_configs(sweep, cli)
        match = sweep.get("match")
        widths = match_params(configs, by=match) if match in MEASURES else {v: "" for v in configs}
        if sweep.get("threads"):
            import torch

            torch.set_num_threads(int(sweep["threads"]))
        table = run_sweep(sweep, configs, widths)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(table)


if __name__ == "__main__":
    main()
