"""`benchmarks/throughput.py --loop`: the stack's whole training step (Lightning, train/module.py) against a plain
PyTorch loop on the same model, batch and threads, alternating step by step (see throughput.py's docstring)."""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_name, shape_config, write_outputs
from model.transformer import Transformer
from train.callbacks.standard import peak_flops
from train.estimate.sizes import model_config


def loop_config(name: str, args):
    """The stack's Config for --loop: --config's YAML, or the shape with the train defaults."""
    from train.config import load_config

    if args.config:
        cfg = load_config(args.config)
        cfg.data.seq_len = args.seq or cfg.data.seq_len
        cfg.model = model_config(cfg)
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


def main_loop(args) -> None:
    import lightning

    meta = dict(mode="loop", device=args.device, torch=torch.__version__, lightning=lightning.__version__,
                device_name=torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
                cpu_threads=torch.get_num_threads(), precision=args.precision, compile=args.compile,
                steps=args.steps, warmup=args.warmup, config=args.config, shapes=args.shapes)
    shapes = [args.config] if args.config else args.shapes
    results = [row for name in shapes for row in bench_loop(name, args)]
    table = loop_markdown(results, meta)
    write_outputs(Path(args.out), meta, results, table)

