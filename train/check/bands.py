"""Band files: what a recipe's curves look like over seeds, and which band a run is compared with.

    bands/<recipe>.json = {"format": "tinystack-band/1", "status": "measured" | "not measured yet",
        "keys": {"stage": "pretrain", "model.d_model": 192, ..., "tokenizer": "<hash>"},  # the recipe (KEYS)
        "seeds": [0, 1, 2, 3, 4], "command": "...", "date": "...", "commit": "...", "machine": "...",
        "metrics": {"val/loss": {"step": [...], "mean": [...], "sd": [...], "min": [...], "max": [...],
                                 "lo": [...], "hi": [...]}, ...}}          # lo, hi = mean -+ 2 sd, per step

A band is read through the project's input checks (inputs/json.py: finite numbers, bounded size and nesting) and
its structure is checked here before any value is used. A run is matched by `recipe_keys` of its config.yaml:
the band with the same keys, else the nearest measured band of the same stage (fewest differing keys, at most
NEAR, which are listed). `tokenizer` is the content hash of the run's tokenizer.json (data/tokens.py
`content_hash`, as its token files are keyed): the same config on another corpus or with another BPE sample trains
another tokenizer, and a loss in nats per token compares only under one tokenizer. A band without it (a placeholder
written from a config alone) matches any tokenizer.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from data.tokenizer import load_tokenizer
from data.tokens import content_hash
from inputs.errors import InputError
from inputs.files import MIB, read_text
from inputs.json import read_json
from inputs.schema import require_field

FORMAT = "tinystack-band/1"
MEASURED, UNMEASURED = "measured", "not measured yet"
BANDS = Path(__file__).resolve().parents[2] / "bands"  # the repository's band files
BAND_BYTES = 4 * MIB  # a band of 5 seeds, 20,000 steps logged every 10, is about 1 MiB
METRICS_BYTES = 256 * MIB  # a run's metrics.csv
KEYS = ("stage", "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.mixer", "model.ffn",
        "model.position", "data.vocab_size", "data.seq_len", "train.batch_size", "train.grad_accum",
        "train.max_steps", "train.lr", "train.optimizer", "finetune.method", "finetune.lora.r", "align.loss_type",
        "align.beta", "align.group_size", "train.schedule", "train.warmup_steps", "tokenizer")
OPTIONAL = ("tokenizer",)  # compared only when both sides have it
NOT_CURVES = ("perf/", "baseline/", "train/lr", "step", "epoch")  # machine speed, constants, the schedule
STATS = ("mean", "sd", "min", "max", "lo", "hi")
NEAR = 4  # the most keys a nearest band may differ in: beyond that it is another recipe
FIX = "record it again with python -m train.check.record (see docs/is-my-loss-normal.md)"

Curves = dict[str, dict[int, float]]  # metric -> {step: value}


def stage_of(values: dict, columns) -> str:
    """pretrain, finetune, preference (DPO and its family) or rl (GRPO, PPO): the sections a config holds and, for
    alignment, what the run logs (a policy-gradient run's clip fraction)."""
    if "align" in values:
        return "rl" if any(name.endswith("clip_fraction") for name in columns) else "preference"
    return "finetune" if "finetune" in values else "pretrain"


def recipe_keys(values: dict, columns=(), tokenizer: str | None = None) -> dict:
    """The keys that identify a recipe, from a config as a mapping (a run's config.yaml); a stage's keys only
    when the config has that stage (`columns`: the metric names the run logs; `tokenizer`: run_tokenizer's hash)."""
    keys = {"stage": stage_of(values, columns), **({"tokenizer": tokenizer} if tokenizer else {})}
    for dotted in KEYS[1:-1]:
        node = values
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            keys[dotted] = node
    return keys


def differing(a: dict, b: dict) -> list[str]:
    """The keys whose values differ (numbers compared to 1e-9 relative)."""
    def same(x, y) -> bool:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        return math.isclose(x, y, rel_tol=1e-9) if numbers else x == y
    compared = [k for k in KEYS if (k in a and k in b if k in OPTIONAL else k in a or k in b)]
    return [k for k in compared if not same(a.get(k), b.get(k))]


def run_tokenizer(run_dir: Path) -> str | None:
    """The content hash of a run's tokenizer.json (None when the run has none), read through the tokenizer checks."""
    path = run_dir / "tokenizer.json"
    return content_hash(load_tokenizer(path).to_str()) if path.is_file() else None


def parse_metrics(text: str, where: object) -> Curves:
    """A metrics.csv (step, then metric columns; empty cells skipped; nan and inf kept) -> curves."""
    curves: Curves = {}
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            step = int(float(row.get("step") or "nan"))
            values = {k: float(v) for k, v in row.items() if k and v not in ("", None) and k not in ("step", "epoch")}
        except (ValueError, TypeError, OverflowError):
            raise InputError(f"line {line} is not a row of numbers with a step", where,
                             fix="give the metrics.csv a run wrote") from None
        for name, value in values.items():
            curves.setdefault(name, {})[step] = value
    return curves


def run_curves(run_dir: Path) -> Curves:
    """A run's logged metrics: metrics.csv, or (a run that stopped before writing it) its logs/version_*/ files,
    later launches winning."""
    merged = run_dir / "metrics.csv"
    launches = [p for p in (run_dir / "logs").glob("version_*/metrics.csv") if p.parent.name[8:].isdigit()]
    files = [merged] if merged.is_file() else sorted(launches, key=lambda p: int(p.parent.name[8:]))
    curves: Curves = {}
    for path in files:
        for name, points in parse_metrics(read_text(path, METRICS_BYTES, "metrics file"), path).items():
            curves.setdefault(name, {}).update(points)
    return curves


def is_curve(name: str) -> bool:
    return not name.startswith(NOT_CURVES)


def band_metrics(seed_curves: list[Curves]) -> dict[str, dict[str, list]]:
    """Per metric, per step every seed logged: mean, sd (sample), min, max, lo/hi = mean -+ 2 sd. Metrics that
    are constant over every seed and step (an unused auxiliary loss) are no curve and are left out."""
    metrics = {}
    for name in sorted(set.intersection(*(set(c) for c in seed_curves))):
        steps = sorted(set.intersection(*(set(c[name]) for c in seed_curves)))
        columns = [[c[name][s] for c in seed_curves] for s in steps]
        if not is_curve(name) or not steps or len({v for col in columns for v in col}) == 1:
            continue
        stats = {k: [] for k in STATS}
        for col in columns:
            if not all(map(math.isfinite, col)):
                raise InputError(f"a seed logged a non-finite {name}", fix="a band needs seeds that trained")
            mean, sd = statistics.fmean(col), statistics.stdev(col) if len(col) > 1 else 0.0
            for key, value in zip(STATS, (mean, sd, min(col), max(col), mean - 2 * sd, mean + 2 * sd)):
                stats[key].append(float(f"{value:.6g}"))
        metrics[name] = {"step": steps, **stats}
    return metrics


def read_band(path: Path) -> dict:
    """A band file, checked: InputError (one line, naming the file) for anything that is not a band."""
    band = read_json(path, "band file", limit=BAND_BYTES)
    if band.get("format") != FORMAT:
        raise InputError(f"not a band file (format is not {FORMAT!r})", path, fix=FIX)
    status = require_field(band, "status", str, path, FIX)
    if status not in (MEASURED, UNMEASURED):
        raise InputError(f"status {status[:40]!r} is neither {MEASURED!r} nor {UNMEASURED!r}", path, fix=FIX)
    keys = require_field(band, "keys", dict, path, FIX)
    require_field(keys, "stage", str, path, FIX)
    for key in ("command", "date", "commit", "machine"):
        require_field(band, key, str, path, FIX)
    metrics = require_field(band, "metrics", dict, path, FIX)
    if status == MEASURED and not metrics:
        raise InputError("a measured band with no metrics", path, fix=FIX)
    for name, stats in metrics.items():
        where = f"metrics.{name}"
        if not isinstance(stats, dict):
            raise InputError("not a mapping of step and statistics", path, where, fix=FIX)
        steps = require_field(stats, "step", list, path, FIX)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps) or steps != sorted(set(steps)):
            raise InputError("steps are not increasing integers", path, where, fix=FIX)
        for key in STATS:
            column = require_field(stats, key, list, path, FIX)
            if len(column) != len(steps) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in column):
                raise InputError(f"'{key}' is not {len(steps)} numbers, one per step", path, where, fix=FIX)
    return band


def read_bands(folder: Path) -> list[tuple[Path, dict]]:
    """Every band file (*.json) in `folder`, read and checked; none when the folder is absent."""
    return [(path, read_band(path)) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def match(keys: dict, bands: list[tuple[Path, dict]]) -> tuple[Path, dict, list[str]] | None:
    """(band file, band, differing keys) for `keys`: the exact match (measured or not), else the nearest measured
    band of the same stage (fewest differing keys, at most NEAR); None when there is neither."""
    candidates = [(path, band, differing(keys, band["keys"])) for path, band in bands
                  if band["keys"].get("stage") == keys["stage"]]
    near = [c for c in candidates if not c[2] or c[1]["status"] == MEASURED and len(c[2]) <= NEAR]
    return min(near, key=lambda c: (len(c[2]), str(c[0]))) if near else None
