"""Mixer cost vs sequence length: forward + backward time and memory per token of one mixer layer alone.

    python benchmarks/seqlen.py                  # CPU: d256 H4, T = 256, 512, 1k, 2k, 2,048 tokens per call, fp32
    python benchmarks/seqlen.py --device cuda    # CUDA: d768 H12, T = 1k .. 32k, 65,536 tokens per call, bf16
    python benchmarks/seqlen.py --seq 1024,4096 --tokens 16384 --threads 1

Every entry of `model.mixers.MIXERS` is measured (softmax runs through `F.scaled_dot_product_attention`, the
baseline), GAU in both forms (quadratic, chunked), and the fused kernels when importable on CUDA: fla's
linear attention, gated delta rule, RWKV-7 and forgetting attention (`model.<mixer>.backend=fla`) and mamba_ssm's
selective scan. The total tokens per call
are fixed, so batch = tokens / T and a flat time per token means linear cost in T. One call is

    y, _ = mixer(x);  y.backward(g)        x, g (B, T, D), RoPE positions where the mixer asks for them

timed as the median of `--repeats` calls after `--warmup` untimed ones, interleaved (softmax, linear, ...,
softmax, linear, ...) so machine noise hits every mixer alike. Memory per token: on CUDA the peak allocated
during the call above what was resident before it (activations, workspace, gradients); on CPU, where no
allocator statistics exist, the bytes of the tensors autograd saves for backward (`saved_tensors_hooks`,
parameters excluded, storages counted once): the activation memory that grows with T, not transient peaks.
A shape that runs out of memory is reported as OOM. Writes <out>.json, <out>.md and <out>.png
(log-log time and memory per token vs T).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from benchmarks.common import RESULTS, check_out  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.mixers import MIXERS  # noqa: E402
from model.positions import POSITIONS  # noqa: E402

# label -> (registry name, config changes); a mixer registered later is added with its defaults
VARIANTS = {"softmax (SDPA)": ("softmax", {}), "linear": ("linear", {}),
            "gau (quadratic)": ("gau", {"form": "quadratic"}), "gau (chunked)": ("gau", {"form": "chunked"}),
            "mamba": ("mamba", {})}
KERNELS = {"linear (fla)": ("linear", {"backend": "fla"}, "fla"),
           "mamba (mamba_ssm)": ("mamba", {"backend": "mamba_ssm"}, "mamba_ssm"),
           "gated_deltanet (fla)": ("gated_deltanet", {"backend": "fla"}, "fla"),
           "rwkv7 (fla)": ("rwkv7", {"backend": "fla"}, "fla"), "fox (fla)": ("fox", {"backend": "fla"}, "fla")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--seq", default=None, help="comma list of sequence lengths (default: by device)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per call (default 2048 CPU, 65536 CUDA)")
    p.add_argument("--d_model", type=int, default=None, help="default 256 CPU, 768 CUDA")
    p.add_argument("--n_heads", type=int, default=None, help="default 4 CPU, 12 CUDA")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per mixer and T (default 1 CPU, 3 CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per mixer and T (default 3 CPU, 10 CUDA)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (torch.set_num_threads); 0 = torch default")
    p.add_argument("--out", default=str(RESULTS / "seqlen"), help="writes <out>.json, <out>.md and <out>.png")
    args = p.parse_args(argv)
    check_out(args.out)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is visible")
    default_seq = "1024,2048,4096,8192,16384,32768" if cuda else "256,512,1024,2048"
    args.seq = [int(s) for s in (args.seq or default_seq).split(",")]
    args.tokens = args.tokens or (65536 if cuda else 2048)
    args.d_model, args.n_heads = args.d_model or (768 if cuda else 256), args.n_heads or (12 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 3)
    return args


def variants(device: str) -> dict[str, tuple[str, dict]]:
    out = dict(VARIANTS)
    out.update({name: (name, {}) for name in MIXERS if name not in {v[0] for v in VARIANTS.values()}})
    for label, (name, changes, package) in KERNELS.items():
        if device == "cuda" and importlib.util.find_spec(package) is not None:
            out[label] = (name, changes)
    return out


def build(name: str, changes: dict, args, seq_len: int) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=1, d_model=args.d_model, n_layers=1, n_heads=args.n_heads, max_seq_len=seq_len)
    for key, value in changes.items():
        setattr(getattr(cfg, name), key, value)
    torch.manual_seed(0)
    position = POSITIONS["rope"](cfg.d_model, cfg.rope_theta)
    return MIXERS[name](cfg, position).to(args.device)


class Call:
    """One forward + backward of a mixer on fixed random x (B, T, D) and output gradient g."""

    def __init__(self, mixer: torch.nn.Module, batch: int, seq_len: int, args):
        self.mixer, self.device = mixer, args.device
        self.x = torch.randn(batch, seq_len, args.d_model, device=args.device, requires_grad=True)
        self.g = torch.randn(batch, seq_len, args.d_model, device=args.device)
        cuda = args.device == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext

    def __call__(self) -> None:
        self.mixer.zero_grad(set_to_none=True)
        self.x.grad = None
        with self.autocast():
            y, _ = self.mixer(self.x)
        y.backward(self.g.to(y.dtype))

    def seconds(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def memory_bytes(self) -> int:
        if self.device == "cuda":
            self.mixer.zero_grad(set_to_none=True)
            self.x.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
            self()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - resident
        params = {p.untyped_storage().data_ptr() for p in self.mixer.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self()
        return sum(saved.values())


def bench_length(seq_len: int, mixers: dict, args, failed: set) -> list[dict]:
    batch = max(1, args.tokens // seq_len)
    calls, rows = {}, []
    for label, (name, changes) in mixers.items():
        if label in failed:
            continue
        try:
            calls[label] = Call(build(name, changes, args, seq_len), batch, seq_len, args)
            for _ in range(args.warmup):
                calls[label]()
        except torch.OutOfMemoryError:
            failed.add(label)
            calls.pop(label, None)
            torch.cuda.empty_cache()
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(args.repeats):  # interleaved: one call of every mixer per round
        for label, call in calls.items():
            times[label].append(call.seconds())
    tokens = batch * seq_len
    for label, call in calls.items():
        rows.append({"mixer": label, "seq_len": seq_len, "batch": batch, "ms": 1e3 * statistics.median(times[label]),
                     "us_per_token": 1e6 * statistics.median(times[label]) / tokens,
                     "bytes_per_token": call.memory_bytes() / tokens})
    rows += [{"mixer": label, "seq_len": seq_len, "batch": batch, "ms": None, "us_per_token": None,
              "bytes_per_token": None} for label in mixers if label in failed]
    print(f"T={seq_len}: " + ", ".join(f"{r['mixer']} {r['ms']:.1f} ms" for r in rows if r["ms"]), flush=True)
    return rows


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "cpu")


def markdown(rows: list[dict], meta: dict) -> str:
    labels, lengths = list(dict.fromkeys(r["mixer"] for r in rows)), meta["seq_lens"]
    cell = {(r["mixer"], r["seq_len"]): r for r in rows}
    head = "| mixer | " + " | ".join(f"T={t}" for t in lengths) + " |\n|---|" + "---:|" * len(lengths) + "\n"

    def table(fmt) -> str:
        lines = []
        for label in labels:
            vals = [fmt(label, t, cell[label, t]) if cell[label, t]["ms"] is not None else "OOM" for t in lengths]
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        return head + "\n".join(lines) + "\n"

    first = {label: next(cell[label, t]["us_per_token"] for t in lengths if cell[label, t]["ms"]) for label in labels}
    base = "softmax (SDPA)"
    memory = "peak allocated" if meta["device"] == "cuda" else "saved for backward"
    return (f"### Mixer fwd+bwd vs sequence length ({meta['device_name']}, {meta['dtype']}, d={meta['d_model']} "
            f"H={meta['n_heads']}, {meta['tokens']:,} tokens per call, median of {meta['repeats']})\n\n"
            "Time per token in µs (× the mixer's own time per token at the smallest T):\n\n"
            + table(lambda m, t, r: f"{r['us_per_token']:.2f} ({r['us_per_token'] / first[m]:.2f}×)")
            + f"\nTime per token relative to {base} at the same T:\n\n"
            + table(lambda m, t, r: f"{r['us_per_token'] / cell[base, t]['us_per_token']:.2f}×"
                    if cell[base, t]["ms"] else "-")
            + f"\nMemory per token in KiB ({memory}):\n\n"
            + table(lambda m, t, r: f"{r['bytes_per_token'] / 1024:.1f}"))


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(r["mixer"] for r in rows):
        points = [r for r in rows if r["mixer"] == label and r["ms"] is not None]
        for ax, key, scale in ((axes[0], "us_per_token", 1.0), (axes[1], "bytes_per_token", 1 / 1024)):
            ax.plot([r["seq_len"] for r in points], [r[key] * scale for r in points], marker="o", label=label)
    memory = "peak allocated" if meta["device"] == "cuda" else "saved for backward"
    for ax, ylabel in zip(axes, ("fwd+bwd time per token (µs)", f"memory per token (KiB, {memory})")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(meta["seq_lens"], [str(t) for t in meta["seq_lens"]])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"one mixer layer, d={meta['d_model']} H={meta['n_heads']}, {meta['tokens']:,} tokens per call, "
                 f"{meta['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    meta = {"device": args.device, "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "dtype": "bf16-mixed" if cuda else "fp32", "d_model": args.d_model, "n_heads": args.n_heads,
            "tokens": args.tokens, "seq_lens": args.seq, "warmup": args.warmup, "repeats": args.repeats}
    mixers, failed = variants(args.device), set()
    rows = [row for seq_len in args.seq for row in bench_length(seq_len, mixers, args, failed)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta)
    Path(f"{out}.json").write_text(json.dumps({"settings": meta, "results": rows}, indent=2) + "\n")
    Path(f"{out}.md").write_text(table)
    plot(rows, Path(f"{out}.png"), meta)
    print(table)
    print(f"wrote {out}.json, {out}.md and {out}.png")


if __name__ == "__main__":
    main()
