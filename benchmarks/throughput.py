"""Training throughput: our Transformer vs Hugging Face `LlamaForCausalLM`, same weights, batch and precision.

    python benchmarks/throughput.py                          # CPU: 15m, T=256, B=4, 6 steps; CUDA: all shapes
    python benchmarks/throughput.py --device cuda --shapes 15m,42m,110m --compile
    python benchmarks/throughput.py --shape custom --d_model 384 --n_layers 6 --n_heads 6 --seq 512 --threads 1

A train step is forward + cross-entropy (fp32, outside the model, identical for both) + backward + AdamW
step on a fixed batch x (B, T) -> logits (B, T, V). Shapes follow llama2.c: 15m = d288 L6 H6 T256, 42m =
d512 L8 H8 T1024, 110m = d768 L12 H12 T1024 (names at llama2.c's vocab 32000; at the default 8192 they hold
8.3M / 29.5M / 91.2M parameters); SwiGLU hidden from `ModelConfig.ffn_hidden`, tied head. `--shape custom`
takes --d_model/--n_layers/--n_heads (T 256 unless --seq). On a shared CPU, --threads 1 is steadier.
HF is built by `train.export_hf.llama_config` (attn_implementation="sdpa") and loaded with
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
import json
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from model.config import ModelConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from train.callbacks import peak_flops  # noqa: E402
from train.export_hf import llama_config, to_hf_state_dict  # noqa: E402

SHAPES = {"15m": (288, 6, 6, 256), "42m": (512, 8, 8, 1024), "110m": (768, 12, 12, 1024)}  # d, L, H, T


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
    p.add_argument("--out", default=None, help="writes <out>.json and <out>.md (default benchmarks/results/"
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
    args.out = args.out or ("benchmarks/results/throughput_loop" if args.loop else "benchmarks/results/throughput")
    if args.config and not args.loop:
        p.error("--config is for --loop only")
    args.warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    return args


def shape_config(name: str, args) -> tuple[ModelConfig, int]:
    d, n_layers, n_heads, seq = SHAPES.get(name, (args.d_model, args.n_layers, args.n_heads, 256))
    seq = args.seq or seq
    cfg = ModelConfig(vocab_size=args.vocab, d_model=d, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=args.n_kv_heads, max_seq_len=seq, position="rope", mixer="softmax", ffn="swiglu")
    return cfg, seq


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


def loop_config(name: str, args):
    """The stack's Config for --loop: --config's YAML, or the shape with the train defaults."""
    from train.config import load_config

    if args.config:
        cfg = load_config(args.config)
        cfg.data.seq_len = args.seq or cfg.data.seq_len
        cfg.model.vocab_size = cfg.model.vocab_size or cfg.data.vocab_size
        cfg.train.batch_size = args.batch or cfg.train.batch_size
    else:
        cfg = load_config(None, {})
        cfg.model, cfg.data.seq_len = shape_config(name, args)
        cfg.train.batch_size = args.batch or (4 if args.device == "cpu" else max(1, 65536 // cfg.data.seq_len))
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)
    t = cfg.train
    t.precision = args.precision if args.precision_given or not args.config else t.precision
    t.compile, t.grad_accum, t.max_steps = args.compile, 1, args.warmup + args.steps + 1  # + 1: the last is untimed
    t.accelerator, t.devices, t.strategy, t.progress_bar = ("gpu" if args.device == "cuda" else "cpu"), 1, "auto", False
    t.val_every = t.ckpt_every = 10 * t.max_steps  # no validation or checkpoint inside the timed steps
    cfg.log.wandb = False
    return cfg


class PlainLoop:
    """The plain PyTorch training step: forward, fp32 cross-entropy, backward, AdamW, zero_grad."""

    def __init__(self, model, cfg, tokens: torch.Tensor, args):
        t, self.args, self.tokens = cfg.train, args, tokens
        self.B, self.T = t.batch_size, cfg.data.seq_len
        self.model = model.to(args.device).train()
        self.fn = torch.compile(self.model) if args.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=tuple(t.betas),
                                     weight_decay=t.weight_decay, fused=args.device == "cuda")
        self.ctx = (lambda: torch.autocast(args.device, torch.bfloat16)) if t.precision.endswith("mixed") \
            else nullcontext
        self.gen = torch.Generator().manual_seed(1)
        self.times, self.losses = [], []

    def step(self) -> None:
        start = time.perf_counter()
        i = torch.randint(0, len(self.tokens) - self.T - 1, (self.B,), generator=self.gen)  # nanoGPT's get_batch
        block = torch.stack([self.tokens[j:j + self.T + 1] for j in i.tolist()]).to(self.args.device)
        x, y = block[:, :-1], block[:, 1:]  # (B, T) each
        with self.ctx():
            logits, _ = self.fn(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.args.device == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - start)
        self.losses.append(loss.detach())


def bench_loop(name: str, args) -> list[dict]:
    """--loop: the stack's Lightning training step and the plain loop, alternating step by step."""
    import tempfile

    import lightning as L
    import numpy as np

    from data.datamodule import PackedDataModule
    from train.module import LanguageModel
    from train.run import build_trainer

    cfg = loop_config(name, args)
    t, T, V = cfg.train, cfg.data.seq_len, cfg.model.vocab_size
    torch.manual_seed(0)
    module = LanguageModel(cfg)
    plain_model = Transformer(cfg.model)
    plain_model.load_state_dict(module.model.state_dict())  # the same initial weights
    rng = np.random.default_rng(0)
    n_tokens = (t.max_steps + 2) * t.batch_size * (T + 1)
    tokens = {"train": rng.integers(0, V, n_tokens).astype(np.int32),
              "validation": rng.integers(0, V, 4 * (T + 1)).astype(np.int32)}
    data = PackedDataModule(tokens, T, t.batch_size, 1, t.max_steps, t.seed, t.val_batches)
    plain = PlainLoop(plain_model, cfg, torch.from_numpy(tokens["train"].astype(np.int64)), args)
    cuda = args.device == "cuda"

    class Alternate(L.Callback):
        """Before each stack step, one plain step; a stack step is the time from that plain step's end to the
        next's start (its data, hooks, logging and optimizer step included)."""

        def __init__(self):
            self.mark, self.times, self.losses = None, [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if self.mark is not None:
                self.times.append(now - self.mark)
            plain.step()
            self.mark = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach() if isinstance(outputs, dict) else outputs)

    alternate = Alternate()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, Path(run_dir), [alternate], monitor_val=False)
        trainer.callbacks.insert(0, trainer.callbacks.pop(trainer.callbacks.index(alternate)))  # first: all hooks timed
        trainer.fit(module, datamodule=data)
    timed = slice(args.warmup, args.warmup + args.steps)
    rows = []
    flops = module.model.flops_per_token(T)
    peak = peak_flops(torch.device(args.device))
    for label, times, losses in [("stack", alternate.times[timed], alternate.losses),
                                 ("plain", plain.times[timed], plain.losses)]:
        tok_s = t.batch_size * T * len(times) / sum(times)
        rows.append(dict(shape=args.config or name, model=label, d_model=cfg.model.d_model,
                         n_layers=cfg.model.n_layers, n_heads=cfg.model.n_heads, vocab=V, seq=T, batch=t.batch_size,
                         precision=t.precision, params=module.model.num_params(), tokens_per_s=tok_s,
                         step_ms=1e3 * sum(times) / len(times), mfu=flops * tok_s / peak if peak else None,
                         step_ms_median=1e3 * statistics.median(times), first_loss=float(losses[0]),
                         step_ms_all=[round(1e3 * x, 2) for x in times]))
    rows[0]["ratio_vs_plain"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    pairs = [p / s for s, p in zip(alternate.times[timed], plain.times[timed])]  # each stack step, the plain before
    rows[0]["ratio_vs_plain_median"] = statistics.median(pairs)  # steadier on a shared machine
    return rows


def loop_markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Whole training step, the stack (Lightning, train/module.py) vs a plain PyTorch loop, on "
             f"{meta['device_name']} ({meta['cpu_threads']} threads); torch {meta['torch']}, lightning "
             f"{meta['lightning']}; compile {meta['compile']}, {meta['steps']} timed steps after {meta['warmup']} "
             "warm-up, alternating.", "",
             "| shape | params | B x T | precision | loop | tokens/s | step ms | median ms | stack/plain (median "
             "of pairs) | step-1 loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r['ratio_vs_plain']:.3f} ({r['ratio_vs_plain_median']:.3f})" if "ratio_vs_plain" in r else ""
        lines.append(f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} | {r['precision']} | "
                     f"{r['model']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['step_ms_median']:.1f} | "
                     f"{ratio} | {r['first_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


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
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"settings": meta, "results": results}, indent=2) + "\n")
    Path(f"{out}.md").write_text(table)
    print(f"wrote {out}.json and {out}.md")


def main_loop(args) -> None:
    import lightning

    meta = dict(mode="loop", device=args.device, torch=torch.__version__, lightning=lightning.__version__,
                device_name=torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
                cpu_threads=torch.get_num_threads(), precision=args.precision, compile=args.compile,
                steps=args.steps, warmup=args.warmup, config=args.config, shapes=args.shapes)
    shapes = [args.config] if args.config else args.shapes
    results = [row for name in shapes for row in bench_loop(name, args)]
    table = loop_markdown(results, meta)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"settings": meta, "results": results}, indent=2) + "\n")
    Path(f"{out}.md").write_text(table)
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
