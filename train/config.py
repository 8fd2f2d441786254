"""The typed config tree (model, data, train, log, finetune, align), YAML files and dotted CLI overrides.

    cfg = load_config("configs/pretrain/demo.yaml", ["--model.mixer=linear", "--train.lr=3e-4"])

Files are YAML; overrides come last and win, and their values are read as YAML too (`[mamba,softmax]`,
`3e-4`, `true`). Every key is checked against the dataclasses (unknown key, wrong type) and every named
choice against its registry; a problem raises `ConfigError` with one line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model.config import ModelConfig
from model.ffn import FFNS
from model.mixers import MIXERS
from model.positions import POSITIONS


class ConfigError(ValueError):
    """A config problem the user can fix; the CLI prints it as one line and exits with code 2."""


@dataclass
class DataConfig:
    path: str = "roneneldan/TinyStories"  # hub id, or a local dir of .txt (<|endoftext|>), .jsonl or .parquet
    vocab_size: int = 4096  # BPE vocabulary trained on the corpus
    seq_len: int = 256  # tokens per training block
    max_stories: int = 0  # use only the first N training stories (0 = all); quick experiments
    val_fraction: float = 0.05  # held out when the corpus has no validation split
    cache_dir: str = ".cache/tokens"  # tokenizers and token files, keyed by a hash of data + tokenizer
    num_workers: int = 0  # DataLoader workers (blocks are in memory; 0 is usually fastest)


@dataclass
class TrainConfig:
    name: str = ""  # run name under out_dir; default: the config file's name
    out_dir: str = "runs"  # runs are written to out_dir/<name>/
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per micro-batch (per device)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100  # linear warm-up from 0
    weight_decay: float = 0.1  # AdamW decay on matrices only (not norms, biases, embeddings)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (fp16 with loss scaling; CUDA only)
    compile: bool = False  # torch.compile the model
    seed: int = 1337  # model init and data order
    resume: bool | str = False  # false | true (this run's last checkpoint) | auto | a checkpoint path
    val_every: int = 200  # validate every N optimizer steps (and at the end)
    val_batches: int = 20  # micro-batches per validation
    ckpt_every: int = 500  # checkpoint every N optimizer steps; last.ckpt also at the end
    log_every: int = 10  # log training metrics every N steps
    num_samples: int = 2  # stories sampled at each validation
    sample_tokens: int = 96  # max new tokens per sampled story
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int | str = 1  # devices per node, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed
    max_bad_steps: int = 5  # stop after this many NaN/inf losses in a row (each one is skipped)
    progress_bar: bool = True


@dataclass
class LogConfig:
    wandb: bool = True  # log to Weights & Biases (offline unless wandb_mode says otherwise)
    wandb_project: str = "tinystack"
    wandb_mode: str = "offline"  # offline | online | disabled
    csv: bool = True  # metrics.csv in the run directory


@dataclass
class LoRASection:
    r: int = 8  # rank of the update B A
    alpha: float = 16.0  # scaling alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0  # dropout on the LoRA branch input
    target_modules: str | list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # module names/suffixes, a regex, or "all-linear"
    rslora: bool = False  # rank-stabilised scaling (Kalajdzievski 2023)
    base_dtype: str = "float32"  # storage of the adapted layers' frozen weights: float32 | bfloat16 (half the
    # memory, no per-step autocast copies; needs train.precision=bf16-mixed)


@dataclass
class FinetuneConfig:
    base: str = ""  # the pretrained run directory to start from
    method: str = "lora"  # lora | full
    lora: LoRASection = field(default_factory=LoRASection)
    eval_prompts: int = 100  # held-out prompts for word inclusion
    eval_tokens: int = 160  # max new tokens per evaluated story


@dataclass
class AlignConfig:
    pairs: str = ""  # DPO: JSONL (prompt/chosen/rejected) or a hub dataset id; empty = make offline pairs
    beta: float = 0.1  # DPO temperature / GRPO KL weight
    loss_type: str = "sigmoid"  # DPO: sigmoid | ipo | hinge
    label_smoothing: float = 0.0  # DPO sigmoid (conservative DPO)
    group_size: int = 8  # GRPO: completions per prompt
    prompts_per_step: int = 4  # GRPO: prompts per step
    num_iterations: int = 1  # GRPO: updates per batch of samples (old log-probs reused)
    epsilon: float = 0.2  # GRPO clip range (lower)
    epsilon_high: float = 0.0  # GRPO upper clip (DAPO clip-higher); 0 = same as epsilon
    scale: str = "group"  # GRPO advantage scaling: group | batch | none
    level: str = "token"  # GRPO loss averaging: token | sequence
    max_new_tokens: int = 128  # GRPO sampling length
    temperature: float = 1.0  # GRPO sampling temperature
    rewards: dict = field(default_factory=lambda: {"word_inclusion": 1.0, "dialogue": 0.5, "length": 0.25,
                                                   "repetition": 0.25, "finished": 0.25})  # reward weights


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    align: AlignConfig = field(default_factory=AlignConfig)


CHOICES = {
    "model.position": list(POSITIONS),
    "model.mixer": list(MIXERS),
    "model.ffn": ["auto", "none", *FFNS],
    "model.moe.expert": ["swiglu", "gelu"],
    "model.linear.feature_map": ["elu", "relu", "identity"],
    "model.linear.backend": ["torch", "fla"],
    "model.gau.scores": ["relu2", "softmax"],
    "model.gau.form": ["quadratic", "chunked"],
    "model.mamba.backend": ["torch", "mamba_ssm"],
    "train.precision": ["32", "bf16-mixed", "16-mixed", "bf16-true"],
    "train.accelerator": ["auto", "cpu", "gpu", "cuda", "mps"],
    "train.strategy": ["auto", "ddp", "ddp_spawn", "fsdp", "deepspeed"],
    "log.wandb_mode": ["offline", "online", "disabled"],
    "finetune.lora.base_dtype": ["float32", "bfloat16"],
    "finetune.method": ["lora", "full"],
    "align.loss_type": ["sigmoid", "ipo", "hinge"],
    "align.scale": ["group", "batch", "none"],
    "align.level": ["token", "sequence"],
}


def _check_type(key: str, value, hint):
    """Return value converted to `hint` (int -> float allowed), or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(key, value, option)
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
    return cls(**kwargs)


def _check_choices(cfg: Config) -> None:
    for dotted, valid in CHOICES.items():
        obj = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        for value in obj if isinstance(obj, list) else [obj]:
            if value not in valid:
                raise ConfigError(f"{dotted}: invalid choice {value!r}; valid choices: {', '.join(valid)}")
    if isinstance(cfg.model.mixer, list) and not cfg.model.mixer:
        raise ConfigError("model.mixer: an empty list; give at least one of " + ", ".join(MIXERS))
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError(f"model.d_model={cfg.model.d_model} must be divisible by model.n_heads={cfg.model.n_heads}")
    if cfg.model.n_heads % cfg.model.kv_heads:
        raise ConfigError(f"model.n_heads={cfg.model.n_heads} must be a multiple of model.n_kv_heads")
    for key in ("model.n_layers", "train.batch_size", "train.grad_accum", "data.seq_len", "data.vocab_size"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key} must be at least 1")
    if cfg.model.ffn == "moe" and not 1 <= cfg.model.moe.top_k <= cfg.model.moe.num_experts:
        raise ConfigError("model.moe.top_k must be between 1 and model.moe.num_experts")


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
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
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


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}; see configs/ for examples")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if overrides:
        values = merge(values, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    cfg = _build(Config, values, "")
    if not cfg.train.name and path is not None:
        cfg.train.name = path.stem
    _check_choices(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
