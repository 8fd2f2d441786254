"""Every size that allocates, checked against this machine before the first tensor of it exists.

    check_memory(cfg, "cpu", source="runs/x/config.yaml")                 load a model (weights only)
    check_memory(cfg, "cpu", batch=4, tokens=300)                         + decode 4 sequences of 300 tokens
    check_memory(cfg, training=True)                                      train (train/estimate/breakdown.py's estimate)

Three steps, each cheap enough to run before anything is built:
1. a lower bound per integer size of the model config: every one (vocab_size, n_layers, d_ff, a component's
   num_experts, d_state, ...) multiplies the width d_model at least once in the fp32 weights, so value x D x 4 bytes
   more than the memory available is refused at once, naming the key (and no model of that depth is counted).
2. the parameters, counted on the meta device (train/estimate/sizes.py `count_params`, one block per mixer) under a
   budget: creating more tensor bytes than are available stops the count (a product of sizes that each passed 1).
3. the estimate: loading keeps the fp32 weights twice on the host (the file's tensors, then the model's) and once on
   the device; decoding `batch` sequences of `tokens` tokens adds, per sequence, every layer's decoding cache (the
   mixers' `cache_bytes`, breakdown.py `decode_cache_bytes`) and, per token, the prompt's pass: one layer's
   activations at a time (`layer_bytes`, what training keeps: an upper bound without autograd) and the head's
   logits (`head_bytes`);
   training needs estimate's model state (weights only for `frozen` ones, LoRA) plus one micro-batch of
   activations on the training device, and the fp32 weights on the host, where the model is built; and no more
   DataLoader workers (data.num_workers, processes) than the machine has CPU cores.
Available memory: /proc/meminfo's MemAvailable (os.sysconf's available pages where there is none) for the CPU,
`torch.cuda.mem_get_info` for a GPU. A refusal is one ConfigError line naming the key, the need and what is there.
"""

from __future__ import annotations

import copy
import os

import torch
from torch.overrides import TorchFunctionMode

from model.options import identity
from train.config import Config, ConfigError
from train.estimate.breakdown import decode_cache_bytes, estimate, fmt, head_bytes, layer_bytes, world_size
from train.estimate.sizes import count_params, model_config

FACTORIES = {"empty", "zeros", "ones", "full", "rand", "randn", "arange", "tensor", "eye", "empty_like", "zeros_like",
             "ones_like", "full_like", "randn_like", "rand_like"}  # the calls that create a tensor's storage


class _OverBudget(Exception):
    pass


class Budget(TorchFunctionMode):
    """Counts the bytes of the tensors created inside it (on any device, meta included); past `limit` it raises."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit, self.used = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in FACTORIES and isinstance(out, torch.Tensor):
            self.used += out.numel() * out.element_size()
            if self.used > self.limit:
                raise _OverBudget
        return out


def available_bytes(device: str = "cpu") -> int:
    """Memory free for new tensors on `device` ("cpu", "cuda", "cuda:N"; "mps" shares the host's)."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def training_devices(cfg: Config) -> list[str]:
    """The devices training runs on: one per visible GPU used (train.accelerator, train.devices), else the CPU."""
    t = cfg.train
    if t.accelerator in ("cpu", "mps") or not torch.cuda.is_available():
        return ["cpu"]
    if isinstance(t.devices, str) and t.devices != "auto":
        return [f"cuda:{i.strip()}" for i in t.devices.split(",") if i.strip()]
    count = torch.cuda.device_count() if t.devices in ("auto", -1) else min(int(t.devices), torch.cuda.device_count())
    return [f"cuda:{i}" for i in range(max(1, count))]


def _refuse(source: str, what: str, need: float | None, device: str, available: float) -> None:
    """Raise the one line; `need` None: more than is available (a count stopped at the budget)."""
    place = "the CPU" if device == "cpu" else device
    needs = f"more than {fmt(available).strip()}" if need is None else fmt(need).strip()
    raise ConfigError(f"{source}{what} needs {needs} but {place} has {fmt(available).strip()} available; "
                      "make it smaller")


def _lower_bounds(m, source: str, available: float) -> None:
    """Step 1: each positive integer size x d_model x 4 bytes against the memory available."""
    D = m.d_model
    for key, (value, _) in identity(m, "model.").items():
        size = isinstance(value, int) and not isinstance(value, bool) and key != "model.d_model"
        if size and value * D * 4 > available:
            _refuse(source, f"{key}={value} x model.d_model={D} (x 4 bytes, at least)", value * D * 4, "cpu", available)


def _params(m, source: str, available: float) -> dict[str, int]:
    """Step 2: count_params under a budget of `available` bytes."""
    try:
        with Budget(available):
            return count_params(m)
    except _OverBudget:
        _refuse(source, f"the weights of model.d_model={m.d_model} with model.mixer={m.mixer!r} and model.ffn="
                f"{m.ffn!r} (the embedding and one block of each mixer)", None, "cpu", available)


def _model_key(m, params: dict[str, int]) -> str:
    """The keys behind the larger part of the parameters: the embedding (and untied head) or the blocks."""
    P, blocks = params["total"], params["total"] - params["root"]
    if params["root"] >= blocks:
        return f"model.vocab_size={m.vocab_size} x model.d_model={m.d_model} ({P:,} parameters)"
    return f"model.n_layers={m.n_layers} x {params['block']:,} parameters per block ({P:,} parameters)"


def decode_bytes(m, batch: int, tokens: int) -> float:
    """Bytes to decode `batch` sequences of `tokens` tokens in fp32 (module docstring): the caches, and the largest
    layer's activations and the logits of a prompt of that length."""
    layer = max(layer_bytes(m, mx, m.layer_ffn(mx), tokens, "32") for mx in m.layer_counts())
    return batch * (decode_cache_bytes(m, tokens) + tokens * (layer + head_bytes(m, "32")[0]))


def check_memory(cfg: Config, device: str = "cpu", source: str = "", batch: int = 0, tokens: int = 0,
                 training: bool = False, frozen: bool = False) -> None:
    """ConfigError unless the model of `cfg` fits this machine (module docstring): loaded to `device` and decoding
    `batch` x `tokens`, or, with `training`, trained (`frozen`: only adapters train) on a micro-batch of `batch`
    sequences of `tokens` tokens (default train.batch_size x data.seq_len). `source` prefixes the message."""
    source = f"{source}: " if source else ""
    host = available_bytes("cpu")
    m = model_config(cfg)
    _lower_bounds(m, source, host)
    params = _params(m, source, host)
    weights = 4 * params["total"]
    if 2 * weights > host:
        _refuse(source, f"{_model_key(m, params)}: loading the fp32 weights", 2 * weights, "cpu", host)
    if not training:
        decode = decode_bytes(m, batch, tokens) if batch else 0
        free = available_bytes(device)
        if weights + decode > free:
            what = (f"decoding {batch} sequence(s) of {tokens} tokens" if decode > weights else
                    f"{_model_key(m, params)}: the fp32 weights")
            _refuse(source, what, weights + decode, device, free)
        return
    if cfg.data.num_workers > (os.cpu_count() or 1):  # each worker is a process holding a copy of the dataset
        raise ConfigError(f"{source}data.num_workers={cfg.data.num_workers}: more DataLoader workers than this "
                          f"machine's {os.cpu_count()} CPU cores; use at most that many (0 = load in the main process)")
    run = copy.deepcopy(cfg)
    run.train.batch_size, run.data.seq_len = batch or cfg.train.batch_size, tokens or cfg.data.seq_len
    devices = training_devices(run)
    world = world_size(run) if devices == ["cpu"] else len(devices) * run.train.num_nodes
    est = estimate(run, world)
    state = weights if frozen else est["static"]
    activations = run.train.batch_size * (est["activations_per_sample"] + est["logits_per_sample"])
    samples = decode_bytes(m, cfg.train.num_samples, m.max_seq_len or run.data.seq_len)
    per_host = world // run.train.num_nodes if devices == ["cpu"] else 1  # CPU processes share the host's memory
    for device in devices:
        need, free = per_host * (state + max(activations, samples)), available_bytes(device)
        if need > free:
            what = (f"train.batch_size={run.train.batch_size} x data.seq_len={run.data.seq_len} over model.n_layers="
                    f"{m.n_layers} layers: training" if activations >= state else f"{_model_key(m, params)}: training")
            if samples > activations:
                what = f"train.num_samples={cfg.train.num_samples}: sampling at each validation"
            _refuse(source, what, need, device, free)


def check_decoding(cfg: Config, device: str, tokenizer, prompts: list[str], batch: int, max_new_tokens: int) -> None:
    """`check_memory` for decoding `prompts` in batches of `batch` (finetune/evaluate.py `generate_stories`), each
    with up to `max_new_tokens` new tokens after the longest prompt."""
    longest = max((len(tokenizer.encode(p).ids) for p in prompts), default=0)
    check_memory(cfg, device, f"--max_new_tokens={max_new_tokens} --batch_size={batch}", batch=min(batch, len(prompts)),
                 tokens=longest + max_new_tokens)
