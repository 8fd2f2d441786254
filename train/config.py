"""The typed config tree (model, data, train, log; the stages `extend` it with their own sections: finetune/config.py,
align/config.py), YAML files and dotted CLI overrides.

    cfg = load_config("configs/pretrain/demo.yaml", ["--model.mixer=linear", "--train.lr=3e-4"])

Files are YAML; overrides come last and win, and their values are read as YAML too (`[mamba,softmax]`,
`3e-4`, `true`). Every key is checked against the dataclasses (unknown key, wrong type), and every value against
its field's `option(...)` (choices, read from the registry where a registry holds them, and ranges; model/options.py)
plus each section's cross-field `check()`, when the section is built: one place, before anything is written. A
problem raises `ConfigError` with one line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.readers import EOT
from inputs.errors import clip
from inputs.files import check_text
from inputs.tree import MAX_DEPTH
from inputs.yaml import parse_value, read_yaml
from model.config import ModelConfig
from model.options import Options, compose, option
from train.errors import ConfigError
from train.optimizers import OPTIMIZERS
from train.rundir.atomic import write_text
from train.schedules import SCHEDULES


@dataclass
class DataConfig(Options):
    path: str = "roneneldan/TinyStories"  # hub id, a local dir of .txt (<|endoftext|>), .jsonl or .parquet, or
    # tinystories-sample: the sample shipped in data/sample/, or $TINYSTORIES_DIR when set (data/sources.py)
    vocab_size: int = option(4096, min=1)  # BPE vocabulary trained on the corpus
    seq_len: int = option(256, min=1)  # tokens per training block
    max_stories: int = option(0, min=0)  # use only the first N training stories (0 = all); quick experiments
    tokenizer_sample: int = option(100_000, min=0)  # BPE trains on a seeded sample of N stories (0 = all)
    val_fraction: float = option(0.05, min=0.0, below=1.0)  # held out when the corpus has no validation split
    cache_dir: str = ".cache/tokens"  # tokenizers and token files, keyed by a hash of data + tokenizer
    num_workers: int = option(0, min=0)  # DataLoader workers (blocks are in memory; 0 is usually fastest)
    eos_token: str = EOT  # the tokenizer's end-of-text token: ends examples, pads, stops generation (an imported
    # model's own, train/interop/import_hf.py; a pretraining run's tokenizer has only <|endoftext|>)
    ngram_baselines: bool = option(True, runtime=True)  # fit unigram/bigram/trigram KN baselines (data/ngram.py),
    # cached beside the token files, logged beside val/loss; false skips them


@dataclass
class CoreTrainConfig(Options):
    name: str = ""  # run name under out_dir; default: the config file's name
    out_dir: str = "runs"  # runs are written to out_dir/<name>/
    max_steps: int = option(1000, min=1)  # optimizer steps
    batch_size: int = option(32, min=1)  # sequences per micro-batch (per device)
    grad_accum: int = option(1, min=1, max=4096)  # micro-batches per optimizer step (more is a typo: a step never ends)
    optimizer: str = option("adamw", choices=lambda: list(OPTIMIZERS))  # a name in train/optimizers
    schedule: str = option("cosine", choices=lambda: list(SCHEDULES))  # LR schedule, a name in train/schedules
    lr: float = option(1e-3, above=0.0)  # peak learning rate
    min_lr_ratio: float = option(0.1, min=0.0, max=1.0)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = option(100, min=0)  # linear warm-up from 0 (every schedule)
    weight_decay: float = option(0.1, min=0.0)  # AdamW decay on matrices only (not norms, biases, embeddings)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    grad_clip: float = option(1.0, min=0.0)  # max global grad norm (0 = off)
    precision: str = option("32", choices=("32", "bf16-mixed", "16-mixed", "bf16-true"))  # 16-mixed: fp16, CUDA
    compile: bool = False  # torch.compile the model
    ce_chunk: int = option(512, min=0)  # rows per chunk of the training cross-entropy (train/loss.py); 0 = plain
    seed: int = option(1337, min=0, max=2**32 - 1)  # model init and data order (numpy and Lightning take 32 bits)
    resume: bool | str = "auto"  # auto (resume an unfinished run, else start) | false | true | a checkpoint path
    # (train/rundir/claim.py: what each does with the run folder, and which reruns are refused)
    val_every: int = option(200, min=1)  # validate every N optimizer steps (and at the end)
    val_batches: int = option(20, min=1)  # micro-batches per validation
    ckpt_every: int = option(500, min=1)  # checkpoint every N optimizer steps; last.ckpt also at the end
    log_every: int = option(10, min=1)  # log training metrics every N steps
    num_samples: int = option(2, min=0)  # stories sampled at each validation
    sample_tokens: int = option(96, min=1)  # max new tokens per sampled story
    accelerator: str = option("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"))
    devices: int | str = 1  # devices per node, "auto", or device indices "0,1"
    num_nodes: int = option(1, min=1)
    strategy: str = option("auto", choices=("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed"))
    max_bad_steps: int = option(5, min=1)  # stop after this many NaN/inf losses in a row (each one is skipped)
    progress_bar: bool = True

    def check(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}: give two numbers in [0, 1), e.g. [0.9, 0.95]")
        devices = self.devices
        if isinstance(devices, str) and devices != "auto" and not re.fullmatch(r"\d+(,\d+)*,?", devices):
            raise ValueError(f"devices={devices!r}: give a count (1), auto, or device indices like '0,1'")
        if isinstance(devices, int) and not (devices >= 1 or devices == -1):
            raise ValueError(f"devices={devices}: must be at least 1 (or -1 / auto for all)")
        if isinstance(self.resume, str) and self.resume not in ("auto", "true", "false") and not self.resume:
            raise ValueError("resume: an empty path; give false, true, auto or a checkpoint path")


TrainConfig = compose(CoreTrainConfig, [OPTIMIZERS, SCHEDULES], "TrainConfig", __name__)  # + train.<name>.*


@dataclass
class LogConfig(Options):
    wandb: bool = True  # log to Weights & Biases (offline unless wandb_mode says otherwise)
    wandb_project: str = "tinystack"
    wandb_mode: str = option("offline", choices=("offline", "online", "disabled"))
    csv: bool = True  # metrics.csv in the run directory


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def extend(tree: type, **sections: type) -> type:
    """`tree` plus more top-level sections: each stage owns its own (finetune/config.py adds `finetune`,
    align/config.py `align`), so train/ knows nothing of the stages built on it."""
    fields = [(name, section, field(default_factory=section)) for name, section in sections.items()]
    extended = dataclasses.make_dataclass(f"{tree.__name__}_{'_'.join(sections)}", fields, bases=(tree,))
    extended.__module__ = tree.__module__
    return extended


def _check_type(key: str, value, hint):
    """Return value converted to `hint` (int -> float allowed), or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for alternative in typing.get_args(hint):
            try:
                return _check_type(key, value, alternative)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(hint)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (typing.Any,)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is typing.Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("precision"):
        return str(value)  # `precision: 32` reads as an int
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key '{dotted}'; valid keys under '{prefix or '.'}': {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{dotted}.")
        else:
            kwargs[key] = _check_type(dotted, value, hint)
    try:
        return cls(**kwargs)  # Options.__post_init__ checks choices, ranges and cross-field rules
    except ConfigError:
        raise
    except ValueError as err:  # "field: problem" -> "section.field: problem"
        raise ConfigError(f"{prefix}{err}") from None


def parse_overrides(args: list[str]) -> dict:
    """['--a.b=1', '--c.d', 'x'] -> {'a': {'b': 1}, 'c': {'d': 'x'}} (values parsed as YAML)."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {arg!r} has no value; write {arg}=VALUE")
        value = parse_value(raw, f"--{key}") if raw != "" else ""  # inputs/yaml.py: bounded, strict YAML
        node = tree
        *parents, leaf = check_text(key, "a command-line override").split(".")
        if len(parents) >= MAX_DEPTH:
            raise ConfigError(f"override --{clip(key, 80)} is nested deeper than {MAX_DEPTH} levels; no key is")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {arg!r} conflicts with an earlier one")
        node[leaf] = value
        i += 1
    return tree


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None, tree: type = Config,
                run_file: bool = False) -> Config:
    """The config of `tree` (Config, or a stage's extension of it) from a YAML file and overrides. `run_file`: the
    file is a run directory's config.yaml, whose sections of later stages (finetune, align) are skipped."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        values = read_yaml(path, "config file")  # a regular UTF-8 file holding a mapping: inputs/yaml.py
    if overrides:
        values = merge(values, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    if run_file and isinstance(values, dict):
        values = {k: v for k, v in values.items() if k in tree.__dataclass_fields__}
    cfg = _build(tree, values, "")
    if not cfg.train.name and path is not None:
        cfg.train.name = path.stem
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as YAML, atomically (temp + rename): never half a file, and a FIFO or a link planted at `path` is
    replaced, not written through."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
