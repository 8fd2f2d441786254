"""Matching for ablations: resize one width knob so a model has a target parameter count or compute.

`match_params(configs, by="params")` gives every variant of a sweep the non-embedding parameter count of the first
(reference) variant, within 2%; `by="flops"` its training FLOPs per token instead (`Transformer.flops_per_token` at
data.seq_len: 6 N plus what each mixer declares, so attention's T-dependent work and Mamba's scan count). The
knob is the `width_knob` its components declare (model/component.py), its FFNs' first (`d_ff`), else its
mixers' (`gau.hidden`, `mamba.d_inner`, ...). Counts come from building the model on the meta device (no memory,
no init cost); both grow with the integer width, so a binary search finds it.
"""

from __future__ import annotations

import copy

import torch

from model.ffn import FFNS
from model.mixers import MIXERS
from model.transformer import Transformer
from train.config import Config, ConfigError
from train.estimate.sizes import count_params, model_config

TOLERANCE = 0.02


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def put(cfg, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    setattr(get(cfg, ".".join(parents)) if parents else cfg, leaf, value)


def meta_model(cfg: Config):
    """cfg's model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return Transformer(model_config(cfg))


def count_flops(cfg: Config) -> float:
    """Training FLOPs per token of cfg's model at data.seq_len."""
    return meta_model(cfg).flops_per_token(cfg.data.seq_len)


def count_non_embedding(cfg: Config) -> int:
    """Non-embedding parameters of cfg's model (train/estimate/sizes.py `count_params`)."""
    return count_params(model_config(cfg))["non_embedding"]


MEASURES = {"params": count_non_embedding, "flops": count_flops}  # what `match:` can equalise
UNITS = {"params": "non-embedding parameters", "flops": "training FLOPs per token"}


def width_knob(cfg: Config) -> str:
    """The first width knob declared by the variant's FFNs, else by its mixers, as a dotted config key."""
    mixers = cfg.model.layer_mixers()
    ffns = [FFNS[f] for f in (cfg.model.layer_ffn(m) for m in mixers) if f != "none"]
    for component in [*ffns, *(MIXERS[m] for m in mixers)]:
        if component.width_knob:
            return f"model.{component.width_key(cfg.model)}"
    raise ConfigError("match: params needs a width knob (a component declaring `width_knob`); this variant's "
                      f"mixers {sorted(set(mixers))} and FFNs declare none")


def solve_width(cfg: Config, knob: str, target: float, measure=None) -> tuple[int, float]:
    """The integer width of `knob` whose non-embedding parameter count is closest to target (binary search on
    the smallest width reaching it, then that or the one below); returns (width, count). Changes cfg."""
    measure = measure or MEASURES["params"]

    def params(width: int) -> float:
        put(cfg, knob, width)
        return measure(cfg)

    lo, hi = 1, 64  # the smallest width reaching the target is in (lo, hi]
    while params(hi) < target and hi < 1 << 22:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(params(w) - target))
    return best, params(best)


def match_params(configs: dict[str, dict[int, Config]], by: str = "params") -> dict[str, str]:
    """Resize every non-reference variant (all its seeds) to the reference's non-embedding parameter count
    (`by="params"`) or training FLOPs per token (`by="flops"`). Returns variant -> 'knob=width' ('' for the
    reference)."""
    measure, unit = MEASURES[by], UNITS[by]
    names = list(configs)
    target = measure(next(iter(configs[names[0]].values())))
    widths = {names[0]: ""}
    for name in names[1:]:
        cfg = copy.deepcopy(next(iter(configs[name].values())))
        try:
            knob = width_knob(cfg)
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
        best, got = solve_width(cfg, knob, target, measure)
        if abs(got - target) > TOLERANCE * target:
            raise ConfigError(f"variant {name!r}: {knob}={best} gives {got:,.0f} {unit}, not within "
                              f"{TOLERANCE:.0%} of the reference's {target:,.0f}")
        for run in configs[name].values():
            put(run, knob, best)
        widths[name] = f"{knob.removeprefix('model.')}={best}"
    return widths
