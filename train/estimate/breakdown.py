"""`python -m train.estimate --config FILE [--memory 80GiB] [--devices N] [--section.key=value ...]`: memory per
device before a run, and the largest micro-batch that fits.

Parameters are counted on a model built on the meta device (nothing allocated). P = parameters, W = devices x
nodes, B = train.batch_size (per device), T = data.seq_len, V = vocabulary, s = bytes of the compute dtype (2
for bf16/16, 4 for 32), r = bytes of the residual stream (fp32 unless bf16-true).

Model state per device. The optimizer keeps the tensors its recipe declares (`state`, train/optimizers/recipe.py),
each of its parameter's size and dtype: AdamW m and v on every parameter (8P in fp32); Muon a momentum on the
hidden matrices and AdamW's m, v on the rest (4H + 8(P - H), H = hidden-matrix parameters); below, "AdamW 8P".
    32, *-mixed (Lightning keeps fp32 weights: they are the master copy)   weights 4P, grads 4P, AdamW 8P
    *-mixed adds the autocast cache: a bf16 copy of every weight, held from forward to backward        2P
    bf16-true: weights 2P, grads 2P, AdamW 4P, no fp32 master copy (cheapest, least accurate)
    ddp (W > 1): + the gradient buckets DDP all-reduces from, as large as the gradients
    fsdp (FULL_SHARD): weights, grads and optimizer state / W, + the gathered units in use: the root (embeddings,
        head, final norm; kept gathered) and two blocks (the current one and the prefetched next) in s bytes
    deepspeed (ZeRO-2): grads and optimizer state / W (+ an fp32 master / W under mixed precision, weights in s
        bytes), + 2 communication buckets of 2e8 elements

Activations: what autograd keeps for backward, per token, counted tensor by tensor for our blocks (the
approach of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", their
34 s b h per layer, redone for pre-norm RMSNorm, SwiGLU, GQA, RoPE and no dropout). Attention runs through
SDPA/flash, which keeps q, k, v, the output and a log-sum-exp, never the T x T scores. Per layer, in bytes:
    RMSNorm (before the mixer and the FFN)   (4 + r) D     its input and the fp32 normalised x
    mixer, FFN                 `activation_bytes` of the registered component, in its own file, including its
                               input (s D: under autocast the norm casts its output once for all projections)
    head                       norm + s D + 4 V kept (fp32 log-softmax), + (s + 4) V transient (logits,
                               their fp32 copy or gradient) at the loss
These match a CPU measurement of the saved tensors within 10% (tests/train/test_estimate.py).
Peak = model state + B T (sum of layers + head) + a fixed overhead (--overhead, CUDA context and allocator
slack). Not modelled: fragmentation, activation checkpointing (not used here), torch.compile's fusions (measured
on an H100 at 110M: eager peak within +8..+14% of this estimate, compiled 19-26% below eager).
Decoding (last line): the cache each mixer declares (`cache_bytes`, model/component.py) in fp32, per token for what
grows with the sequence (keys and values, MLA's latent) and per sequence for fixed recurrent states.
"""

from __future__ import annotations

import math
import re
import sys

import torch

from model.ffn import FFNS
from model.mixers import MIXERS
from train.cli import ArgumentParser, run_cli
from train.config import Config, ConfigError
from train.estimate.sizes import count_params, model_config
from train.optimizers import OPTIMIZERS

UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
GiB = 2**30
ZERO_BUCKETS = 2 * 2e8  # Lightning's DeepSpeed defaults: allgather and reduce buckets of 2e8 elements


def parse_size(text: str) -> int:
    """'80GiB' / '80GB' / '24g' / '512MiB' -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise ConfigError(f"--memory {text!r}: expected a size like 80GiB, 24GB or 512MiB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def layer_bytes(m, mixer: str, ffn: str, seq_len: int, precision: str) -> float:
    """Activation bytes kept for backward per token by one block: each norm, plus what the mixer and the FFN
    declare (`activation_bytes` in their own files, model/component.py)."""
    s = 4 if precision == "32" else 2
    r = 2 if precision == "bf16-true" else 4
    norm = (4 + r) * m.d_model
    total = norm + MIXERS[mixer].activation_bytes(m, seq_len, s)
    if ffn != "none":
        total += norm + FFNS[ffn].activation_bytes(m, s, precision.endswith("mixed"))
    return total


def head_bytes(m, precision: str) -> tuple[float, float]:
    """(kept, transient) bytes per token of the final norm, output head and loss."""
    s = 4 if precision == "32" else 2
    r = 2 if precision == "bf16-true" else 4
    return (4 + r) * m.d_model + s * m.d_model + 4 * m.vocab_size, (s + 4) * m.vocab_size


def decode_cache_bytes(m, seq_len: int, s: int = 4) -> float:
    """Bytes of one sequence's decoding cache after `seq_len` tokens, all layers: each mixer's `cache_bytes` (its own
    file, model/component.py) at s bytes per value (4: fp32, how checkpoints decode)."""
    return sum(n * MIXERS[mx].cache_bytes(m, seq_len, s) for mx, n in m.layer_counts().items())


def estimate(cfg: Config, world: int) -> dict:
    """Rows (name, bytes per device, bytes on one unsharded device) and what the micro-batch costs."""
    m, t = model_config(cfg), cfg.train
    params = count_params(m)
    P, prec = params["total"], t.precision
    strategy = "ddp" if t.strategy == "auto" and world > 1 else t.strategy
    w = 2 if prec == "bf16-true" else 4  # stored weights, gradients and optimizer states
    s = 4 if prec == "32" else 2
    shard = world if strategy in ("fsdp", "deepspeed") else 1
    rows = []
    if strategy == "deepspeed" and prec != "32":
        rows += [(f"weights ({'bf16' if s == 2 else 'fp32'}, replicated)", s * P, s * P),
                 ("fp32 master weights (ZeRO-sharded)", 4 * P / shard, 4 * P),
                 ("gradients (ZeRO-sharded)", s * P / shard, s * P)]
    else:
        rows += [(f"weights ({'bf16' if w == 2 else 'fp32'})", w * P / (shard if strategy == "fsdp" else 1), w * P),
                 (f"gradients ({'bf16' if w == 2 else 'fp32'})", w * P / shard, w * P)]
    optimizer = OPTIMIZERS[t.optimizer]
    state = w * optimizer.state_elements(params["hidden_matrix"], P - params["hidden_matrix"])
    rows.append((f"{t.optimizer} {optimizer.describe_state()}", state / shard, state))
    if prec.endswith("mixed") and strategy != "fsdp":
        rows.append(("autocast bf16 weight copies", 2 * P, 2 * P))
    if strategy == "ddp" and world > 1:
        rows.append(("DDP gradient buckets", w * P, 0))
    if strategy == "fsdp":
        rows.append(("FSDP gathered units (root + 2 blocks)", s * (params["root"] + 2 * params["block"]), 0))
    if strategy == "deepspeed":
        rows.append(("ZeRO communication buckets", s * ZERO_BUCKETS, 0))
    T = cfg.data.seq_len
    kept, transient = head_bytes(m, prec)
    layers = sum(n * layer_bytes(m, mx, m.layer_ffn(mx), T, prec) for mx, n in m.layer_counts().items())
    per_sample = T * (layers + kept)
    return {"params": params, "rows": rows, "strategy": strategy, "world": world,
            "activations_per_sample": per_sample, "logits_per_sample": T * transient,
            "static": sum(r[1] for r in rows)}


def world_size(cfg: Config) -> int:
    """Devices over all nodes: train.devices (a count, auto / -1 = every visible GPU, or indices "0,1,3") x nodes."""
    devices = cfg.train.devices
    if devices in ("auto", -1):
        devices = max(1, torch.cuda.device_count())
    elif isinstance(devices, str):  # "0,1,3": device indices
        devices = len([d for d in devices.split(",") if d.strip()])
    return int(devices) * cfg.train.num_nodes


def largest_batch(est: dict, memory: float, overhead: float) -> int:
    free = memory - overhead - est["static"]
    return max(0, math.floor(free / (est["activations_per_sample"] + est["logits_per_sample"])))


def fmt(n: float) -> str:
    return f"{n / GiB:10.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:10.1f} MiB"


def report(cfg: Config, memory: float | None, overhead: float, world: int) -> str:
    est, B = estimate(cfg, world), cfg.train.batch_size
    p = est["params"]
    rows = [*est["rows"],
            (f"activations (B={B}, T={cfg.data.seq_len})", B * est["activations_per_sample"], 0),
            ("logits + loss (transient)", B * est["logits_per_sample"], 0),
            ("CUDA context, allocator slack", overhead, 0)]
    total = sum(r[1] for r in rows)
    lines = [f"parameters: {p['total'] / 1e6:,.2f}M (largest block {p['block'] / 1e6:,.2f}M, embeddings/head/norm "
             f"{p['root'] / 1e6:,.2f}M)",
             f"precision {cfg.train.precision}, strategy {est['strategy']}, {world} device(s), micro-batch {B}, "
             f"seq_len {cfg.data.seq_len}", "",
             f"{'':42s}{'per device':>14s}{'unsharded':>14s}", "-" * 70]
    lines += [f"{name:42s}{fmt(value)}{fmt(full) if full else '':>14s}" for name, value, full in rows]
    lines += ["-" * 70, f"{'total':42s}{fmt(total)}"]
    m, T = model_config(cfg), cfg.data.seq_len
    fixed, whole = decode_cache_bytes(m, 0), decode_cache_bytes(m, T)  # fixed: recurrent states; the rest grows
    lines.append(f"decoding cache (fp32): {(whole - fixed) / T:,.0f} B per token + {fixed:,.0f} B per sequence ("
                 f"{fmt(whole).strip() if whole >= 2**20 else f'{whole / 1024:,.1f} KiB'} for a sequence of T={T})")
    if cfg.train.compile:  # measured: 110M, T=1024, B=16 / 48 on an H100 (README)
        lines.append("train.compile: expect ~20-25% less (compiled runs recompute element-wise ops in backward)")
    if memory:
        fits = largest_batch(est, memory, overhead)
        verdict = "fits" if total <= memory else "does NOT fit"
        lines.append(f"micro-batch {B} {verdict} in {memory / GiB:.1f} GiB; the largest that fits: {fits}"
                     + ("" if fits else " (the model state alone is too large: try fsdp or more devices)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(add_help=False)
    parser.add_argument("--memory", default=None, help="device memory, e.g. 80GiB")
    parser.add_argument("--devices", type=int, default=None, help="devices per node (overrides train.devices)")
    parser.add_argument("--overhead", default="1GiB", help="CUDA context and allocator slack (default 1GiB)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.devices is not None:
        rest.append(f"--train.devices={args.devices}")

    def show(cfg: Config) -> None:
        memory = parse_size(args.memory) if args.memory else None
        print(report(cfg, memory, parse_size(args.overhead), world_size(cfg)))

    run_cli(show, rest, usage=__doc__)

