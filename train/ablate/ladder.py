"""Scaling ladders: `ladder:` in an ablation file trains every variant at several model sizes and fits each one's
test loss against training compute (train/ablate/scaling.py; report: train/ablate/ladder_report.py).

    ladder:                          # the rungs, smallest first (at least 2; 4 or more for a fit that means something)
      - {d_model: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1}   # a model shape (any of these four keys), or
      - {depth: 4}                   # one knob, nanochat's --depth rule: n_layers = depth, d_model = 64 depth,
                                     #   n_heads = n_kv_heads = ceil(d_model / 128)
      - {d_model: 128, n_layers: 4, max_steps: 900}   # optional per rung: its steps (over the `tokens` rule)
    tokens: {per_param: 20}          # optional: training tokens = 20 x the rung reference's non-embedding
                                     #   parameters (Hoffmann et al. 2022's compute-optimal ratio is ~20), or
    # tokens: {flops_multiple: 4}    #   rung k trains 4^k x rung 0's compute (the reference's FLOPs per token x
                                     #   tokens), rung 0 at train.max_steps, or
    # tokens: {max_steps: [200, 400, 800]}   # the steps of each rung; without `tokens`: train.max_steps everywhere
    lr_rule: inverse_width           # optional: fixed (default: each variant's train.lr at every rung) or
                                     #   inverse_width: train.lr x d_model(rung 0) / d_model(rung k), muP-style
                                     #   (Yang et al. 2022) but applied to every parameter group; or `lrs:` to
                                     #   choose each variant's lr per rung on the selection split (grid.py)

Everything else is a sweep file (train/ablate/sweep.py): every variant trains at every rung with the same seeds
(same data order), the rung's shape and steps applied to every variant (steps = ceil(tokens / tokens per step),
from the rung's reference variant), and `match:` resizes each variant to the rung's reference, within 2%
(train/ablate/param_match.py). Runs are named <variant>-r<k>-s<seed> (with `lrs`: <variant>-r<k>-lr<lr>-s<seed>)
in the one sweep folder, trained `jobs` at a time and resumed or reused like any sweep's. Per rung
<sweep>/rung<k>/ holds the sweep report (results.md, results.csv, plots); the ladder's report is
<sweep>/ladder.{md,csv,json,png}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from train.ablate.param_match import MEASURES, count_flops, count_non_embedding, match_params
from train.ablate.sweep import Runs, build_configs, first_run, nest, run_dir, train_runs
from train.config import Config, ConfigError, merge
from train.rundir.claim import flat

SHAPE = ("d_model", "n_layers", "n_heads", "n_kv_heads")
TOKEN_RULES = ("per_param", "flops_multiple", "max_steps")
LR_RULES = ("fixed", "inverse_width")


@dataclass
class Rung:
    index: int
    shape: dict  # d_model, n_layers, n_heads, n_kv_heads and steps, as trained
    configs: Runs  # variant -> (lr, seed) -> config
    widths: dict[str, str]  # variant -> matched knob ('' when not resized)

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.shape.items())


def depth_shape(depth: int) -> dict:
    """nanochat's --depth rule: d_model = 64 depth (aspect ratio 64), heads of 128 (at least one)."""
    d_model = 64 * depth
    heads = max(1, math.ceil(d_model / 128))
    return {"d_model": d_model, "n_layers": depth, "n_heads": heads, "n_kv_heads": heads}


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_ladder(sweep: dict, cli: dict) -> list[dict]:
    """The rungs as {shape keys..., 'max_steps'?}, validated with `tokens` and `lr_rule`; ConfigError otherwise."""
    rungs = sweep["ladder"]
    if not isinstance(rungs, list) or not all(isinstance(r, dict) and r for r in rungs):
        raise ConfigError("ladder: expected a list of rungs, e.g. [{depth: 1}, {depth: 2}, ...] or "
                          "[{d_model: 32, n_layers: 2}, ...]")
    if len(rungs) < 2:
        raise ConfigError(f"ladder: {len(rungs)} rung{'' if len(rungs) == 1 else 's'}: no fit; give at least 2 rungs "
                          "(4 or more for a fit that means something)")
    out = []
    for k, rung in enumerate(rungs):
        unknown = sorted(set(rung) - {*SHAPE, "depth", "max_steps"})
        if unknown or not all(_positive(v) for v in rung.values()) or ("depth" in rung and set(rung) & set(SHAPE)):
            raise ConfigError(f"ladder rung {k} {rung!r}: give positive integers for {', '.join(SHAPE)} (and "
                              "optionally max_steps), or depth alone (with optional max_steps)")
        shape = depth_shape(rung["depth"]) if "depth" in rung else {key: rung[key] for key in SHAPE if key in rung}
        out.append({**shape, **({"max_steps": rung["max_steps"]} if "max_steps" in rung else {})})
    tokens = sweep.get("tokens") or {}
    if not isinstance(tokens, dict) or len(tokens) > 1 or not set(tokens) <= set(TOKEN_RULES):
        raise ConfigError(f"tokens: expected one of {{per_param: 20}}, {{flops_multiple: 4}}, {{max_steps: [...]}}; "
                          f"got {tokens!r}")
    value = next(iter(tokens.values()), 1)
    if "max_steps" in tokens:
        if not (isinstance(value, list) and len(value) == len(out) and all(_positive(v) for v in value)):
            raise ConfigError(f"tokens: max_steps needs one positive integer per rung ({len(out)}), got {value!r}")
    elif not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"tokens: expected a positive number, got {tokens!r}")
    rule = sweep.setdefault("lr_rule", "fixed")
    if rule not in LR_RULES:
        raise ConfigError(f"lr_rule: invalid choice {rule!r}; valid choices: {', '.join(LR_RULES)}")
    if rule != "fixed" and sweep.get("lrs"):
        raise ConfigError("lr_rule and lrs: choose one (lrs chooses each rung's lr on the selection split)")
    clash = [key for key in (*(f"model.{key}" for key in SHAPE), "train.max_steps") if key in flat(cli)]
    if clash:
        raise ConfigError(f"--{clash[0]} is set by the ladder's rungs; change the rungs in the file instead")
    return out


def rung_steps(sweep: dict, k: int, rung: dict, ref: Config, rung0_compute: float) -> int:
    """Training steps of rung k (module docstring): its own max_steps, else the `tokens` rule."""
    tokens, per_step = sweep.get("tokens") or {}, ref.train.batch_size * ref.train.grad_accum * ref.data.seq_len
    if "max_steps" in rung:
        return rung["max_steps"]
    if "max_steps" in tokens:
        return tokens["max_steps"][k]
    if "per_param" in tokens:
        return max(1, math.ceil(tokens["per_param"] * count_non_embedding(ref) / per_step))
    if "flops_multiple" in tokens and k:  # rung 0 trains train.max_steps
        return max(1, round(rung0_compute * tokens["flops_multiple"] ** k / (count_flops(ref) * per_step)))
    return ref.train.max_steps


def build_ladder(sweep: dict, cli: dict) -> list[Rung]:
    """Every rung's validated, matched configs (nothing trains); ConfigError on any problem, naming the rung."""
    rungs, out, rung0_compute = check_ladder(sweep, cli), [], 0.0
    base_overrides = nest(sweep.get("overrides") or {})
    for k, rung in enumerate(rungs):
        shape = {f"model.{key}": value for key, value in rung.items() if key in SHAPE}
        try:
            sub = {**sweep, "overrides": merge(base_overrides, nest(shape))}
            ref = first_run(build_configs(sub, cli))
            steps = rung_steps(sweep, k, rung, ref, rung0_compute)
            sub["overrides"] = merge(sub["overrides"], nest({"train.max_steps": steps}))
            configs = build_configs(sub, cli)
        except ConfigError as err:
            raise ConfigError(f"ladder rung {k} ({rung}): {err}") from None
        ref = first_run(configs)
        rung0_compute = rung0_compute or count_flops(ref) * steps * ref.train.batch_size * ref.train.grad_accum \
            * ref.data.seq_len
        width0 = out[0].shape["d_model"] if out else ref.model.d_model
        scale = width0 / ref.model.d_model if sweep["lr_rule"] == "inverse_width" else 1.0
        for name, runs in configs.items():
            for run in runs.values():
                run.train.name = f"{name}-r{k}{run.train.name[len(name):]}"
                run.train.lr *= scale
            configs[name] = {(run.train.lr, seed): run for (_, seed), run in runs.items()}  # keyed by the lr it trains
        match = sweep.get("match")
        widths = match_params(configs, by=match) if match in MEASURES else {v: "" for v in configs}
        out.append(Rung(k, {key: getattr(ref.model, key) for key in SHAPE} | {"steps": steps}, configs, widths))
    return out


def run_ladder(sweep: dict, cli: dict) -> str:
    """Train every rung's runs (grid seeds first with `lrs`, then the rest at each rung's chosen lrs), write each
    rung's sweep report and the ladder report; returns the ladder report's Markdown."""
    from train.ablate.grid import choose_lrs
    from train.ablate.ladder_report import write_ladder
    from train.ablate.report import RunResult, write_results
    from train.ablate.splits import SPLITS

    rungs = build_ladder(sweep, cli)
    grid_seeds = sweep.get("lr_seeds") or sweep["seeds"]
    splits = SPLITS if sweep.get("lrs") else ("test",)
    every = [(rung, name, lr, seed, cfg) for rung in rungs for name, runs in rung.configs.items()
             for (lr, seed), cfg in runs.items()]
    train_runs(sweep, {cfg.train.name: cfg for *_, seed, cfg in every if seed in grid_seeds}, splits)
    grids = {rung.index: [RunResult.read(name, seed, run_dir(cfg), rung.widths[name], lr)
                          for r, name, lr, seed, cfg in every if r is rung and seed in grid_seeds] for rung in rungs}
    chosen = {rung.index: choose_lrs(grids[rung.index]) for rung in rungs}
    rest = {cfg.train.name: cfg for rung, name, lr, seed, cfg in every
            if seed not in grid_seeds and lr == chosen[rung.index][name]}
    if rest:
        train_runs(sweep, rest, splits)
    folder = Path(first_run(rungs[0].configs).train.out_dir)
    tables, results = [], {}
    for rung in rungs:
        picked = chosen[rung.index]
        results[rung.index] = [RunResult.read(name, seed, run_dir(rung.configs[name][picked[name], seed]),
                                              rung.widths[name], picked[name])
                               for name in rung.configs for seed in sweep["seeds"]]
        (folder / f"rung{rung.index}").mkdir(parents=True, exist_ok=True)
        tables.append(write_results(folder / f"rung{rung.index}", {**sweep, "name": f"{sweep['name']} rung "
                                                                  f"{rung.index} ({rung.label})"},
                                    results[rung.index], grids[rung.index] if sweep.get("lrs") else ()))
    return write_ladder(folder, sweep, rungs, results, tables)
