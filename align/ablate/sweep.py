"""`python -m align.ablate --config configs/ablations/align.yaml [--section.key=value ...]`: compare alignment methods.

An ablation file (train/ablate/sweep.py) whose base is an alignment config: every variant x seed is one alignment
run from ONE SFT run, scored by reward on held-out prompts and compared with the same paired statistics.

    base: ../align/dpo.yaml            # the alignment config variants start from (path from the cwd or this file)
    stage: dpo                         # its stage (align/ablate/stages.py); default: the base file's name
    pretrain: {config: configs/pretrain/demo.yaml, overrides: {train.max_steps: 300}}   # or a run: runs/demo
    sft: {config: configs/finetune/lora.yaml, overrides: {train.max_steps: 100}}        # or a run: runs/lora
    pairs: {n: 200, k: 4, max_new_tokens: 64, temperature: 1.0, seed: 0}   # or a file: runs/pairs/on_policy.jsonl
    eval: {prompts: 100, samples: 4, temperature: 1.0, max_new_tokens: 64, seed: 0}     # scoring (scores.py)
    overrides: {train.log_every: 5}    # every variant
    stages: {dpo: {train.batch_size: 8}, grpo: {train.max_steps: 30}}   # a stage's variants (budgets differ)
    seeds: [0, 1, 2]
    jobs: 2
    threads: 1
    variants:                          # name -> overrides; the first is the reference
      dpo: {}
      ipo: {align.loss_type: ipo}
      kto: {base: ../align/kto.yaml, stage: dpo, train.batch_size: 16}   # its own base config and stage
      grpo: {base: ../align/grpo.yaml}                       # another stage, named by its file
      rloo: {base: ../align/grpo.yaml, align.baseline: leave_one_out, align.scale: none}

A variant's `base:` replaces the sweep's base, and its `stage:` names the stage when the file's name does not
(kto.yaml, orpo.yaml: stage dpo). Values merge: the variant's base < overrides < stages[<its stage>] < command
line < variant < the sweep's own keys (train.seed, train.name = <variant>-s<seed>, train.out_dir = the sweep
folder, train.resume = auto, finetune.base = the SFT run, align.pairs = the sweep's pairs). A variant that
sets a key the command line or the sweep sets is an error, as are `lrs` and `match` (one model, one budget).

What the runs share is prepared once, in the sweep folder <train.out_dir>/ablate-<name>/, resumably
(align/ablate/prepare.py): `sft` (fine-tuned into sft/ from the `pretrain` run, itself trained into pretrain/ from
a config or an existing run; or an existing SFT run, and then `pretrain` is not read) and, when a variant trains on
pairs, `pairs` (pairs.jsonl: align.make_pairs --kind on_policy from the SFT run; an existing file is read as it is;
pairs-unpaired.jsonl for kto). A path that does not exist is refused, before anything is written, with one line
naming the command that makes it. Every variant's config is validated first (a typo fails in seconds with exit
code 2), and the budget within each stage is checked (stages.py: steps, batch, sequence lengths, samples per
step); across stages budgets differ by nature and the table shows the wall time instead. Re-running reuses
finished runs and resumes interrupted ones.

Each finished run is scored once into its ablate.json (align/ablate/scores.py: reward, each term, KL to the SFT
run on the same prompts and seed for every run); results.md and results.csv (align/ablate/report.py) give each
variant's mean reward ± sd over seeds, its terms, KL, wall time, and the paired Δ reward vs the reference with
its 95% CI and p (higher reward is better).
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

from align.ablate.prepare import check_run, prepare
from align.ablate.stages import PAIRS, STAGES
from align.config import AlignTree, refuse_moved
from finetune.config import INHERITED_DATA, FinetuneTree
from inputs.json import read_json
from inputs.yaml import read_yaml
from train.ablate.sweep import SweepIncomplete, load_sweep, nest, run_dir
from train.cli import parse_args, user_errors_exit_2
from train.config import Config, ConfigError, load_config, merge, to_dict
from train.quiet import quiet
from train.rundir.adapter import ADAPTER_DIR
from train.rundir.claim import flat

KEYS = ("base", "name", "overrides", "seeds", "jobs", "threads", "launcher", "slurm", "variants", "stage", "stages",
        "pretrain", "sft", "pairs", "eval")  # train/ablate/sweep.py's, less lrs and match, and the alignment ones
OWNED = ("train.seed", "train.name", "train.out_dir", "train.resume", "finetune.base", "align.pairs")
PAIR_FLAGS = {"n": 1200, "k": 4, "max_new_tokens": 128, "temperature": 1.0, "seed": 0}  # align.make_pairs
EVAL = {"prompts": 100, "samples": 4, "temperature": 1.0, "max_new_tokens": 128, "seed": 0, "batch_size": 32,
        "rewards": None}  # None: align.rewards' default weights


def _path(value, sweep_file: str) -> Path:
    """A path from the cwd, else from the ablation file's folder."""
    path = Path(str(value))
    return path if path.exists() or not (Path(sweep_file).parent / path).exists() else Path(sweep_file).parent / path


def _section(sweep: dict, key: str, defaults: dict) -> dict:
    """`pairs:` / `eval:` as a mapping of known keys over the defaults (one line for an unknown key)."""
    values = sweep.get(key) or {}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(defaults)}")
    return {**defaults, **values}


def _source(sweep: dict, key: str, path: str, command: str) -> dict | Path:
    """`pretrain:` / `sft:`: an existing run folder (refused if unfinished: `command`, formatted with the folder's
    {parent} and {name}, makes it), or {config, overrides} trained in the sweep folder."""
    value = sweep.get(key)
    if isinstance(value, dict):
        if set(value) - {"config", "overrides"} or "config" not in value:
            raise ConfigError(f"{key}: expected a run folder or {{config: FILE, overrides: {{...}}}}, got {value!r}")
        return {"config": _path(value["config"], path), "overrides": nest(value.get("overrides") or {})}
    run = _path(value, path) if value else None
    if run is None:
        raise ConfigError(f"{path}: no `{key}`: give a run folder or {{config: FILE, overrides: {{...}}}}")
    if not (run / "config.yaml").is_file() or not ((run / "model.safetensors").is_file()
                                                   or (run / ADAPTER_DIR).is_dir()):
        raise ConfigError(f"{key}: {value} is not a finished run folder; make it with: "
                          f"{command.format(parent=run.parent, name=run.name)}")
    return run


def plan_variants(sweep: dict, cli: dict, path: str) -> dict[str, tuple[str, Path, dict]]:
    """variant -> (stage, base config, its overrides with the sweep's, the stage's and the command line's)."""
    stages = sweep.get("stages") or {}
    if not isinstance(stages, dict) or set(stages) - set(STAGES) or not all(isinstance(v, dict) for v in
                                                                           stages.values()):
        raise ConfigError(f"stages: expected {{<stage>: overrides}} for stages {', '.join(STAGES)}, got {stages!r}")
    stages = {stage: merge(merge(nest(sweep.get("overrides") or {}), nest(stages.get(stage) or {})), cli)
              for stage in STAGES}
    clash = sorted({key for values in stages.values() for key in flat(values)}.intersection(OWNED[4:]))
    if clash:
        raise ConfigError(f"{', '.join(clash)} is set by the sweep (its SFT run and pairs)")
    plans = {}
    for name, values in sweep["variants"].items():
        values = dict(values or {})
        base = _path(values.pop("base"), path) if "base" in values else sweep["base"]
        stage = values.pop("stage", None) or (sweep.get("stage") if base == sweep["base"] else None) or base.stem
        if stage not in STAGES:
            raise ConfigError(f"variant {name!r}: no stage {stage!r} (from its base {base}); set stage: to one of "
                              f"{', '.join(STAGES)}")
        variant = nest(values)
        for keys, why in ((flat(cli), "set on the command line for every variant"), (OWNED, "set by the sweep")):
            clash = sorted(set(flat(variant)).intersection(keys))
            if clash:
                raise ConfigError(f"variant {name!r} sets {', '.join(clash)}, which is {why}")
        plans[str(name)] = (stage, base, merge(stages[stage], variant))
    return plans


def inherited(source: dict | Path, sft: dict | Path) -> dict:
    """What a fine-tuning config takes from its base run (model.*, the tokenizer's data keys), read from the SFT
    run, the pretraining run, or the pretraining config, whichever exists: every config checks before training."""
    run = sft if isinstance(sft, Path) else source if isinstance(source, Path) else None
    values = read_yaml(run / "config.yaml", "run config") if run else to_dict(
        load_config(source["config"], source["overrides"]))
    return {"model": values.get("model") or {}, "data": {k: v for k, v in (values.get("data") or {}).items()
                                                        if k in INHERITED_DATA}}


def check_config(base: Path, values: dict, start: dict, tree: type) -> Config:
    """A fine-tuning or alignment config validated before its base run exists (finetune_config's merge)."""
    user = merge(read_yaml(base, fix="see configs/align/ for examples"), values)
    refuse_moved(user)
    if "model" in user:
        raise ConfigError(f"{base}: model.* is set, but fine-tuning keeps the base run's model")
    return load_config(None, merge(start, user), tree=tree)


def check_budgets(configs: dict[str, tuple[str, Config]]) -> None:
    """Within each stage, every variant shares its budget (stages.py); the first variant of a stage is its yardstick."""
    first: dict[str, tuple[str, dict]] = {}
    for name, (stage, cfg) in configs.items():
        budget = STAGES[stage].budget(cfg)
        ref_name, ref = first.setdefault(stage, (name, budget))
        diff = next((key for key in budget if budget[key] != ref[key]), None)
        if diff:
            raise ConfigError(f"variant {name!r} changes {diff} ({budget[diff]!r}, {ref_name!r} has {ref[diff]!r}); "
                              f"the {stage} variants must share the budget and data")


def build_configs(sweep: dict, plans: dict, checked: dict, sft: Path, files: dict, sweep_dir: Path) -> dict:
    """variant -> seed -> (stage, the run's Config), now that the SFT run and the pairs exist."""
    from align.policy import align_config

    configs: dict[str, dict[int, tuple[str, Config]]] = {}
    for name, (stage, base, values) in plans.items():
        owned = {"finetune": {"base": str(sft)}, "train": {"out_dir": str(sweep_dir), "resume": "auto"}}
        if STAGES[stage].data == PAIRS:
            owned["align"] = {"pairs": files["unpaired" if checked[name][1].align.loss_type == "kto" else "pairs"]}
        configs[name] = {seed: (stage, align_config(base, merge(values, merge(owned, {"train": {
            "seed": seed, "name": f"{name}-s{seed}"}})))) for seed in sweep["seeds"]}
    return configs


def run_sweep(sweep: dict, configs: dict, scoring: dict, sweep_dir: Path) -> str:
    """Train and score every unfinished run (seed-major: a full comparison early), then write the results."""
    from align.ablate.report import write_results
    from align.ablate.scores import train_aligned
    from train.ablate.launch import Job, default_jobs, launch

    jobs = []
    for seed in sweep["seeds"]:
        for runs in configs.values():
            stage, cfg = runs[seed]
            check_run(cfg, run_dir(cfg))
            jobs.append(Job(cfg.train.name, to_dict(cfg), run_dir(cfg), (), partial(train_aligned, stage, scoring)))
    todo = [job for job in jobs if not (job.run_dir / "ablate.json").is_file()]
    n_parallel = sweep.get("jobs") or default_jobs()
    threads = sweep.get("threads") or max(1, (os.cpu_count() or 1) // n_parallel)
    print(f"{len(jobs)} runs ({len(jobs) - len(todo)} finished before), {min(n_parallel, max(len(todo), 1))} at "
          f"a time, {threads} thread(s) each", flush=True)
    unfinished = launch(todo, n_parallel, threads, sweep["launcher"], sweep.get("slurm"), sweep_dir / "submitit")
    if unfinished:
        raise SweepIncomplete(f"{len(unfinished)} run(s) did not finish ({', '.join(unfinished)}); run the same "
                              "command again to resume them (finished runs are reused)")
    return write_results(sweep_dir, sweep, {name: {seed: run_dir(cfg) for seed, (_, cfg) in runs.items()}
                                            for name, runs in configs.items()},
                         {name: next(iter(runs.values()))[0] for name, runs in configs.items()},
                         list(scoring["rewards"]), start_scores(scoring, sweep_dir))


def start_scores(scoring: dict, sweep_dir: Path) -> dict:
    """The SFT run's own scores, the point every method starts from (scored once into the sweep folder, never into
    a given SFT run's folder): the table's `start` row."""
    from align.ablate.scores import score_run

    path = sweep_dir / "start-scores.json"
    if not path.is_file():
        scores = score_run(Path(scoring["reference"]), **scoring)
        path.with_suffix(".tmp").write_text(json.dumps(scores))
        path.with_suffix(".tmp").replace(path)
    return read_json(path, "the SFT run's scores")


def scoring_settings(sweep: dict) -> dict:
    """`eval:` checked (one line for a bad value), with align.rewards' default weights when it names none."""
    from align.config import AlignConfig
    from align.rewards import reward_terms

    scoring = _section(sweep, "eval", EVAL)
    for key in ("prompts", "samples", "max_new_tokens", "batch_size", "seed"):
        value = scoring[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (key != "seed"):
            raise ConfigError(f"eval.{key}: expected an integer >= {int(key != 'seed')}, got {value!r}")
    if isinstance(scoring["temperature"], bool) or not isinstance(scoring["temperature"], (int, float)) \
            or not 0 <= scoring["temperature"] < float("inf"):
        raise ConfigError(f"eval.temperature: expected a number >= 0 (0: greedy), got {scoring['temperature']!r}")
    scoring["rewards"] = scoring["rewards"] or AlignConfig().rewards
    try:
        reward_terms(scoring["rewards"])
    except ValueError as err:
        raise ConfigError(f"eval.rewards: {err}") from None
    return scoring


def load(path: str | None, argv: list[str]) -> tuple:
    """Everything checked before anything is written -> (sweep, plans, checked configs, pretrain, sft, pairs,
    scoring, the sweep folder)."""
    sweep, cli = load_sweep(path, argv, KEYS)
    plans = plan_variants(sweep, cli, path)
    sft = _source(sweep, "sft", path, "python -m finetune --config configs/finetune/lora.yaml "
                  "--train.out_dir={parent} --train.name={name}")
    source = _source(sweep, "pretrain", path, "python -m train --config configs/pretrain/demo.yaml "
                     "--train.out_dir={parent} --train.name={name}") if isinstance(sft, dict) else None
    start = inherited(source, sft)
    if isinstance(sft, dict):
        check_config(sft["config"], sft["overrides"], start, FinetuneTree)
    checked = {name: (stage, check_config(base, values, start, AlignTree))
               for name, (stage, base, values) in plans.items()}
    check_budgets(checked)
    pairs = sweep.get("pairs")
    if isinstance(pairs, str):
        pairs = _path(pairs, path)
        if not pairs.is_file():
            raise ConfigError(f"pairs: {pairs} does not exist; make it with: python -m align.make_pairs --run "
                              f"{sft if isinstance(sft, Path) else '<the SFT run>'} --kind on_policy --out {pairs}")
    else:
        pairs = _section(sweep, "pairs", PAIR_FLAGS)
    sweep_dir = Path(next(iter(checked.values()))[1].train.out_dir) / f"ablate-{sweep['name']}"
    return sweep, plans, checked, source, sft, pairs, scoring_settings(sweep), sweep_dir


def main(argv: list[str] | None = None) -> None:
    from finetune.config import read_run_config

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    quiet()  # the pretraining and SFT runs train in this process
    try:
        with user_errors_exit_2():
            sweep, plans, checked, source, sft, pairs, scoring, sweep_dir = load(*parse_args(argv))
            needs = {("unpaired" if cfg.align.loss_type == "kto" else "pairs") for stage, cfg in checked.values()
                     if STAGES[stage].data == PAIRS}
            sweep_dir.mkdir(parents=True, exist_ok=True)
            sft, files = prepare(source, sft, pairs, needs, sweep_dir)
            sft_cfg = read_run_config(sft)
            scoring.update(reference=str(sft), data=sft_cfg.data.path, prompt_seed=sft_cfg.train.seed,
                           val_fraction=sft_cfg.data.val_fraction)
            table = run_sweep(sweep, build_configs(sweep, plans, checked, sft, files, sweep_dir), scoring, sweep_dir)
    except SweepIncomplete as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(table)
    print(f"results: {sweep_dir}/ (results.md, results.csv; each run's folder, ablate.json and train.log under it)")


if __name__ == "__main__":
    main()
