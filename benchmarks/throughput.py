"""Training throughput: our Transformer vs Hugging Face `LlamaForCausalLM`, same weights, batch and precision.

    python benchmarks/throughput.py                          # CPU: 15m, T=256, B=4, 6 steps; CUDA: all shapes
    python benchmarks/throughput.py --device cuda --shapes 15m,42m,110m --compile
    python benchmarks/throughput.py --shape custom --d_model 384 --n_layers 6 --n_heads 6 --seq 512 --threads 1

A train step is forward + cross-entropy (fp32, outside the model, identical for both) + backward + AdamW
step on a fixed batch x (B, T) -> logits (B, T, V). Shapes follow llama2.c: 15m = d288 L6 H6 T256, 42m =
d512 L8 H8 T1024, 110m = d768 L12 H12 T1024 (names at llama2.c's vocab 32000; at the default 8192 they hold
8.3M / 29.5M / 91.2M parameters); SwiGLU hidden from `ModelConfig.ffn_hidden`, tied head. `--shape custom`
takes --d_model/--n_layers/--n_heads (T 256 unless --seq). On a shared CPU, --threads 1 is steadier.
HF is built by `train.interop.export_hf.llama_config` (attn_implementation="sdpa") and loaded with
`to_hf_state_dict`, so both start from the same weights (the step-1 losses are reported as a check).
Steps alternate ours, HF, ours, HF, ... so machine noise hits both alike; warm-up rounds are not timed.

    tokens/s = B T steps / time;  MFU = flops_per_token(T) * tokens/s / peak bf16 FLOP/s (CUDA, known GPUs)
Memory on CUDA: own params + AdamW state + the step's peak above what is resident at its start (both models
share the GPU, so the raw peak would count the other's state). On CPU: the growth of the process's peak RSS
(`ru_maxrss`) over the shape, process-level and shared by both models (a rough upper bound, not per model).

`--loop`: the whole training step of the stack against a plain PyTorch loop on the same model, batch and threads:

    python benchmarks/throughput.py --loop --config configs/pretrain/demo.yaml --threads 1 --steps 20

The stack's step is `train.run.build_trainer` + `train.module.LanguageModel` as `python -m train` runs them
(its loggers, callbacks, clipping, schedule, logging every log_every; no validation, no progress bar) on packed
blocks of random tokens served by `PackedDataModule`. The plain loop, the same initial weights: x, y sliced from a
token tensor, forward, `F.cross_entropy(logits.float())`, backward, AdamW step (one group, the config's lr, betas
and weight decay), zero_grad. The two alternate step by step (a callback runs one plain step before each of the
stack's), so machine noise hits both alike. A stack step is timed from the end of the plain step before it to
the start of the next, so its data loading, callbacks and logging are in it. --config takes model.*, data.seq_len,
data.vocab_size and train.* from a YAML (default: the --shapes shape with train defaults, B as above);
`ratio_vs_plain` = stack tokens/s / plain tokens/s (means); `ratio_vs_plain_median`: the median over steps of
plain step time / the next stack step's time (steadier where other work shares the machine).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from benchmarks.common import RESULTS, SHAPES, check_out, cpu_name, shape_config, write_outputs  # noqa: E402
from benchmarks.step_loop import main_loop  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from train.callbacks.standard import peak_flops  # noqa: E402
from train.interop.export_hf import llama_config, to_hf_state_dict  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", "--shape", default=None, help="comma list of 15m,42m,110m,custom")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, choices=["32", "bf16-mixed"], help="default bf16-mixed on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 6 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1, 3 with --compile)")
    p.add_argument("--batch", type=int, default=None, help="default 4 on CPU, 65536 // T on CUDA")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: the shape's T)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--d_model", type=int, default=256, help="--shape custom only")
    p.add_argument("--n_layers", type=int, default=4, help="--shape custom only")
    p.add_argument("--n_heads", type=int, default=4, help="--shape custom only")
    p.add_argument("--n_kv_heads", type=int, default=0, help="key/value heads for every shape (0 = n_heads)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (torch.set_num_threads); 0 = torch default")
    p.add_argument("--loop", action="store_true", help="whole training step: the stack's vs a plain loop")
    p.add_argument("--config", default=None, help="--loop: a YAML config (model, data.seq_len, train.*)")
    p.add_argument("--out", default=None, help="writes <out>.json and <out>.md (default runs/benchmarks/"
                   "throughput, throughput_loop with --loop)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is visible")
    args.shapes = (args.shapes or ("15m,42m,110m" if cuda else "15m")).split(",")
    for name in args.shapes:
        if name not in SHAPES and name != "custom":
            p.error(f"unknown shape {name!r}; valid: {', '.join(SHAPES)}, custom")
    args.precision_given = args.precision is not None
    args.precision = args.precision or ("bf16-mixed" if cuda else "32")
    args.steps = args.steps or (20 if cuda else 6)
    args.out = check_out(args.out or RESULTS / ("throughput_loop" if args.loop else "throughput"))
    if args.config and not args.loop:
        p.error("--config is for --loop only")
    args.warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    return args


class Runner:
    """One model, its AdamW, and its timings; `step()` runs one timed train step."""

    def __init__(self, name, model, hf: bool, args, x, y):
        self.name, self.hf, self.x, self.y, self.args = name, hf, x, y, args
        self.model = model.to(args.device).train()
        self.fn = torch.compile(self.model) if args.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=args.device == "cuda")
        bf16 = args.precision == "bf16-mixed"
        self.ctx = lambda: torch.autocast(args.device, torch.bfloat16) if bf16 else nullcontext()
        self.times, self.losses, self.step_peak = [], [], 0

    def step(self, timed: bool) -> None:
        cuda = self.args.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        start = time.perf_counter()
        with self.ctx():
            logits = self.fn(self.x, use_cache=False).logits if self.hf else self.fn(self.x)[0]  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), self.y.flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # no gradients stay resident between steps
        if cuda:
            torch.cuda.synchronize()
            self.step_peak = max(self.step_peak, torch.cuda.max_memory_allocated() - resident)
        self.losses.append(loss.item())
        if timed:
            self.times.append(time.perf_counter() - start)

    def resident_bytes(self) -> int:
        """Parameters + AdamW moments (exp_avg, exp_avg_sq): what this model keeps between steps."""
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return params + sum(t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values()
                            if torch.is_tensor(t) and t.dim() > 0)


def bench_shape(name: str, args) -> list[dict]:
    from transformers import LlamaForCausalLM

    cfg, seq = shape_config(name, args)
    batch = args.batch or (4 if args.device == "cpu" else max(1, 65536 // seq))
    torch.manual_seed(0)
    ours = Transformer(cfg)
    hf = LlamaForCausalLM(llama_config(cfg, attn_implementation="sdpa"))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # a tied head is re-tied
    hf.config.use_cache = False
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].to(args.device), tokens[:, 1:].to(args.device)  # (B, T) each
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runners = [Runner("ours", ours, False, args, x, y), Runner("hf", hf, True, args, x, y)]
    for i in range(args.warmup + args.steps):
        for r in runners:
            r.step(timed=i >= args.warmup)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0  # KiB on Linux (bytes on macOS)
    rss_mib = rss_kib / (2**20 if sys.platform == "darwin" else 2**10)
    peak = peak_flops(torch.device(args.device))
    flops = ours.flops_per_token(seq)
    rows = []
    for r in runners:
        tok_s = batch * seq * len(r.times) / sum(r.times)
        mem = (r.resident_bytes() + r.step_peak) / 2**20 if args.device == "cuda" else rss_mib
        rows.append(dict(shape=name, model=r.name, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                         seq=seq, batch=batch, params=ours.num_params(), tokens_per_s=tok_s, peak_mem_mib=mem,
                         mfu=flops * tok_s / peak if peak else None, step_ms=1e3 * sum(r.times) / len(r.times),
                         first_loss=r.losses[0], step_ms_all=[round(1e3 * t, 2) for t in r.times]))
    rows[0]["ratio_vs_hf"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    return rows


def markdown(results: list[dict], meta: dict) -> str:
    mem_note = "CUDA: own params + AdamW + step peak" if meta["device"] == "cuda" else "CPU: process peak-RSS growth"
    lines = [f"Training throughput, ours vs HF LlamaForCausalLM (sdpa) on {meta['device_name']}; torch "
             f"{meta['torch']}, transformers {meta['transformers']}; precision {meta['precision']}, compile "
             f"{meta['compile']}, vocab {meta['vocab']}, {meta['steps']} timed steps after {meta['warmup']} warm-up.",
             "", f"| shape | params | B x T | model | tokens/s | step ms | peak mem MiB ({mem_note}) | MFU "
             "| ours/HF | step-1 loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        ratio = f"{r['ratio_vs_hf']:.2f}" if "ratio_vs_hf" in r else ""
        lines.append(f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} | {r['model']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['peak_mem_mib']:,.0f} | {mfu} | {ratio} "
                     f"| {r['first_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loop:
        return main_loop(args)
    try:
        import transformers
    except ImportError:
        sys.exit("error: this benchmark needs transformers: pip install -e '.[bench]'")
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, both models alike
    meta = dict(device=args.device, torch=torch.__version__, transformers=transformers.__version__,
                device_name=torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
                cpu_threads=torch.get_num_threads(), precision=args.precision, compile=args.compile,
                steps=args.steps, warmup=args.warmup, vocab=args.vocab, shapes=args.shapes)
    results = [row for name in args.shapes for row in bench_shape(name, args)]
    table = markdown(results, meta)
    write_outputs(Path(args.out), meta, results, table)


if __name__ == "__main__":
    main()
