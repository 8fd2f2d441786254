"""LoRA vs full fine-tuning on the same model and batch: trainable parameters, peak memory, step time.

    python benchmarks/lora_memory.py                      # CPU: demo (T128 B16) and 110m (T128 B2)
    python benchmarks/lora_memory.py --device cuda        # CUDA: demo (T128 B16) and 110m (T1024 B8), bf16 autocast

A step is forward + cross-entropy + backward + AdamW step on a fixed random batch (B, T). LoRA (Hu et al.
2021) is r=8, alpha=16 on q/k/v/o and gate/up/down of every layer (model.lora.apply_lora): per adapted
Linear r (d_in + d_out) trainable numbers instead of d_in d_out; on CUDA also lora_bf16, the same with the frozen
weights stored in bf16 (finetune.lora.base_dtype=bfloat16). Shapes: demo = configs/pretrain/demo.yaml
(d192 L4 H6 kv2, vocab 4096); 110m = llama2.c's 110M (d768 L12 H12, vocab 32000, tied head).

Memory.
  CUDA: torch.cuda.max_memory_allocated() during one step after warm-up (weights, grads, AdamW state,
        activations and the temporaries of backward; the allocator's own view, nothing else on the GPU is
        counted). The first step would undercount full fine-tuning: its AdamW state is created only at its end.
  CPU:  process RSS and tracemalloc do not see torch's allocator well, so the peak is estimated as
            resident = params + grads (trainable) + AdamW exp_avg, exp_avg_sq (2 x trainable)
            peak ~= resident + activations saved for backward
        where the activations are measured exactly with torch.autograd.graph.saved_tensors_hooks during one
        forward: every tensor autograd keeps, deduplicated by storage, parameters excluded. It leaves out the
        short-lived temporaries of backward, so it is a lower bound of the true peak (the CUDA numbers include them).
Step time: the median over the timed steps after warm-up, full and LoRA steps alternating (both models built),
so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from benchmarks.common import RESULTS, check_out  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.lora import LoRAConfig, apply_lora, store_base_weights  # noqa: E402
from model.transformer import Transformer  # noqa: E402

SHAPES = {"demo": (192, 4, 6, 2, 4096), "110m": (768, 12, 12, 12, 32000)}  # d, L, H, H_kv, V
BATCH = {("demo", "cpu"): (16, 128), ("demo", "cuda"): (16, 128),  # (B, T) per shape and device
         ("110m", "cpu"): (2, 128), ("110m", "cuda"): (8, 1024)}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = {"cpu": ("full", "lora"), "cuda": ("full", "lora", "lora_bf16")}  # lora_bf16 needs autocast
MiB = 2**20


def build(shape: str, method: str, seq: int, device: str) -> tuple[Transformer, torch.optim.Optimizer]:
    d, n_layers, n_heads, n_kv, vocab = SHAPES[shape]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads,
                                    n_kv_heads=n_kv, max_seq_len=seq)).to(device)
    if method.startswith("lora"):
        apply_lora(model, LoRAConfig(r=8, alpha=16, target_modules=TARGETS))
    if method == "lora_bf16":  # finetune.lora.base_dtype=bfloat16: frozen weights stored in bf16
        store_base_weights(model, torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4, fused=device == "cuda")


def loss_of(model, x, y, autocast) -> torch.Tensor:
    with autocast:
        logits, _ = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def saved_activation_bytes(model, x, y, autocast) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (unique storages, no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, x, y, autocast)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def batch_for(shape: str, vocab: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq = args.batch or BATCH[shape, args.device][0], args.seq or BATCH[shape, args.device][1]
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, vocab, (batch, seq), generator=g).to(args.device) for _ in range(2))  # (B, T) each
    return x, y


def train_step(model, optimizer, x, y, autocast) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss_of(model, x, y, autocast).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def memory(shape: str, method: str, args) -> dict:
    """One method alone: parameter counts and memory (CUDA peak, or the CPU estimate) after warm-up steps."""
    cuda = args.device == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
    x, y = batch_for(shape, SHAPES[shape][4], args)
    model, optimizer = build(shape, method, x.shape[1], args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    for _ in range(max(args.warmup, 1)):
        train_step(model, optimizer, x, y, autocast)  # AdamW state exists after the first step
    if cuda:  # the peak of a steady-state step: the first one has no AdamW state during its backward
        torch.cuda.reset_peak_memory_stats()
        train_step(model, optimizer, x, y, autocast)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_params, n_train = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in trainable)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    row = {"shape": shape, "method": method, "batch": x.shape[0], "seq": x.shape[1], "params": n_params,
           "trainable": n_train, "trainable_pct": 100 * n_train / n_params, "param_MiB": param_bytes / MiB,
           "grad_MiB": grad_bytes / MiB, "adam_state_MiB": state_bytes / MiB}
    if cuda:
        row["peak_MiB"] = torch.cuda.max_memory_allocated() / MiB
    else:
        row["activations_MiB"] = saved_activation_bytes(model, x, y, autocast) / MiB
        row["peak_MiB"] = (param_bytes + grad_bytes + state_bytes) / MiB + row["activations_MiB"]
    return row


def step_times(shape: str, args) -> dict[str, float]:
    """Median step time per method, the two methods' steps alternating so machine noise hits both alike."""
    x, y = batch_for(shape, SHAPES[shape][4], args)
    built = {m: build(shape, m, x.shape[1], args.device) for m in METHODS[args.device]}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else nullcontext()
    times: dict[str, list[float]] = {m: [] for m in METHODS[args.device]}
    for i in range(args.warmup + args.steps):
        for method, (model, optimizer) in built.items():
            t = train_step(model, optimizer, x, y, autocast)
            if i >= args.warmup:
                times[method].append(t)
    return {m: statistics.median(t) for m, t in times.items()}


def markdown(rows: list[dict], device: str, meta: dict) -> str:
    method = ("CUDA torch.cuda.max_memory_allocated" if device == "cuda"
              else "CPU estimate: params + grads + AdamW state + saved activations (saved_tensors_hooks)")
    lines = [f"# LoRA (r=8, attention + FFN) vs full fine-tuning: {device}", "",
             f"Peak memory: {method}. {meta['device_name']}, torch {meta['torch']}.", "",
             "| shape | method | B x T | params | trainable | trainable % | grads MiB | AdamW MiB | activations MiB "
             "| peak MiB | step s |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        act = f"{r['activations_MiB']:.1f}" if "activations_MiB" in r else "-"
        lines.append(f"| {r['shape']} | {r['method']} | {r['batch']} x {r['seq']} | {r['params']:,} | "
                     f"{r['trainable']:,} | {r['trainable_pct']:.2f} | {r['grad_MiB']:.1f} | {r['adam_state_MiB']:.1f} "
                     f"| {act} | {r['peak_MiB']:.1f} | {r['step_s']:.3f} |")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        full = next(r for r in rows if r["shape"] == shape and r["method"] == "full")
        for lora in (r for r in rows if r["shape"] == shape and r["method"].startswith("lora")):
            lines.append(f"\n{shape}: {lora['method']} trains {full['trainable'] / lora['trainable']:.0f}x fewer "
                         f"parameters; peak memory x{lora['peak_MiB'] / full['peak_MiB']:.2f}, step time "
                         f"x{lora['step_s'] / full['step_s']:.2f} of full fine-tuning.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", default="demo,110m", help="comma list of " + ",".join(SHAPES))
    p.add_argument("--batch", type=int, default=None, help="override the per-shape batch size")
    p.add_argument("--seq", type=int, default=None, help="override the per-shape sequence length")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    p.add_argument("--out", default=None, help="writes <out>.json and <out>.md (default runs/benchmarks/"
                   "lora_memory_<dev>)")
    args = p.parse_args(argv)
    check_out(args.out or RESULTS / f"lora_memory_{args.device}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            p.error(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
        shape_rows = [memory(shape, method, args) for method in METHODS[args.device]]
        for row, (_, seconds) in zip(shape_rows, step_times(shape, args).items()):
            row["step_s"] = seconds
            print(json.dumps(row), flush=True)
        rows += shape_rows
    meta = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"}
    out = Path(args.out or RESULTS / f"lora_memory_{args.device}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, args.device, meta))
    print(markdown(rows, args.device, meta))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
