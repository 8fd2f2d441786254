"""One pretraining config through the precision x compile x optimizer matrix, each run by the training entry point
(`train.run.pretrain`, what `python -m train` runs) in this one process, judged against the fp32 run:

    python -m benchmarks.gpu_check.train_matrix --config 15m --out runs/gpu-check/x/train-15m.json [--dry-run]

Every run starts from the same seed and data order on the TinyStories sample shipped in data/sample/ (the device
machine has no network), validates once at its last step on the same `val_batches` held-out batches, and records
the final validation loss, the last logged tokens/s, torch.cuda.max_memory_allocated over the training (less what
earlier runs left allocated) and the memory `train.estimate` predicts for the same config (its model state +
micro-batch activations, without the fixed CUDA-context overhead, which max_memory_allocated does not see).

Tolerance: |val loss - the fp32 eager run's with the same optimizer| <= LOSS_TOL = 0.1 nats. Reasoning: all runs
share seed, data and initial weights, so they differ only by rounding; after a few hundred steps the runs have
drifted apart like different seeds, whose final losses at these sizes and steps spread by ~0.01-0.03 nats, and
16-mixed's loss scaler skips a handful of early steps (a delay worth ~0.02-0.05 nats on the steep early curve).
The faults this catches are larger: an fp16 overflow or a missing loss scale, a compiled graph that computes
something else, an optimizer that is not applied (>= 0.2 nats, NaN or no learning at all). A real run must also
have learned: val loss <= LEARNED x ln(vocab). Memory: max_memory_allocated / estimate within MEMORY_BAND. Its upper
end is tight, since check_memory refuses runs by this estimate and an underestimate lets a run it passed run out of
memory: eager 1.3 (the estimate's stated accuracy, +8..+14% at 110M, with room for small models' fixed buffers),
compiled 1.1 (compiled runs recompute in backward and keep ~20-25% less). Its lower end is loose, since an
overestimate only refuses runs that would fit, and the estimate keeps the plain head's fp32 log-probs (4 V bytes per
token) where train.ce_chunk computes the loss a chunk at a time (train/loss.py): at V = 8192 and d = 288 that
alone can halve the activations. Exit code 1 when any run fails; the JSON is rewritten after each run, so a run cut
off by the part's time limit leaves the finished ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import lightning as L
import torch

from train.config import load_config
from train.estimate.breakdown import estimate

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
# (precision, train.compile, train.optimizer); the first row of each optimizer is its fp32 reference
VARIANTS = [("32", False, "adamw"), ("bf16-mixed", False, "adamw"), ("16-mixed", False, "adamw"),
            ("bf16-mixed", True, "adamw"), ("32", False, "muon"), ("bf16-mixed", False, "muon"),
            ("16-mixed", True, "muon")]
STEPS = {"demo": (300, 16), "15m": (200, 32), "42m": (150, 8)}  # optimizer steps, micro-batch (the config's T)
TOY = {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.n_kv_heads": 2, "data.vocab_size": 512,
       "data.seq_len": 32, "data.max_stories": 200, "data.tokenizer_sample": 200, "train.val_batches": 1}
DRY_STEPS = (3, 2)
LOSS_TOL = 0.1  # nats, |val loss - the fp32 reference's| (reasoning above)
LEARNED = 0.7  # a real run's val loss must be below this fraction of ln(vocab), the loss of a uniform guess
MEMORY_BAND = {False: (0.4, 1.3), True: (0.3, 1.1)}  # max_memory_allocated / estimate, eager and compiled


def overrides(name: str, precision: str, compiled: bool, optimizer: str, work: str, dry: bool) -> list[str]:
    steps, batch = DRY_STEPS if dry else STEPS[name]
    flat = {"data.path": "tinystories-sample", "train.max_steps": steps, "train.batch_size": batch,
            "train.grad_accum": 1, "train.warmup_steps": steps // 10, "train.val_every": steps,
            "train.ckpt_every": steps, "train.val_batches": 10, "train.log_every": min(10, steps),
            "train.num_samples": 0, "train.progress_bar": False, "train.resume": False, "log.wandb": False,
            "train.precision": precision, "train.compile": compiled, "train.optimizer": optimizer,
            "train.accelerator": "cpu" if dry else "gpu", "train.devices": 1, "train.out_dir": work,
            "train.name": f"{name}-{precision}-{'compiled' if compiled else 'eager'}-{optimizer}",
            **(TOY if dry else {})}
    return [f"--{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in flat.items()]


class Probe(L.Callback):
    """What the judge needs from a run: the final val loss, the last logged tokens/s, the training's peak memory."""

    def __init__(self):
        self.val_loss = self.tokens_per_s = self.peak = None

    def on_train_start(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_validation_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.val_loss = float(metrics["val/loss"])
        self.tokens_per_s = float(metrics["perf/tokens_per_s"]) if "perf/tokens_per_s" in metrics else None

    def on_train_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(pl_module.device)


def estimated_bytes(cfg) -> float:
    """train.estimate's model state + one micro-batch of activations and logits (no CUDA-context overhead)."""
    est = estimate(cfg, 1)
    return est["static"] + cfg.train.batch_size * (est["activations_per_sample"] + est["logits_per_sample"])


def train_one(name: str, variant: tuple, work: str, dry: bool) -> dict:
    from train.run import pretrain  # Lightning's whole stack, as `python -m train` runs it

    cfg = load_config(CONFIGS / f"{name}.yaml", overrides(name, *variant, work, dry))
    probe = Probe()
    torch._dynamo.reset()  # each compiled run compiles afresh, not against the last run's guards
    gc.collect()  # the last run's trainer, model and optimizer (reference cycles) leave the GPU first
    resident = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0  # what is left is not this run's
    start = time.perf_counter()
    pretrain(cfg, callbacks=[probe])
    row = {"steps": cfg.train.max_steps, "batch": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
           "vocab": cfg.model.vocab_size, "seconds": round(time.perf_counter() - start, 1),
           "val_loss": probe.val_loss, "tokens_per_s": probe.tokens_per_s, "estimate_mib": estimated_bytes(cfg) / 2**20}
    row["peak_mib"] = (probe.peak - resident) / 2**20 if probe.peak is not None else None
    return row


def skip_reason(precision: str, compiled: bool, dry: bool) -> str | None:
    if dry and precision == "16-mixed":
        return "16-mixed needs CUDA (CPU autocast is bf16 only)"
    if dry and compiled:
        return "compile skipped in the dry run"
    return None


def judge(row: dict, reference: dict | None, dry: bool) -> list[str]:
    """The problems of one finished run (empty: it passed)."""
    loss = row["val_loss"]
    if loss is None or not math.isfinite(loss):
        return [f"val loss {loss}"]
    problems = []
    if reference is None or reference.get("val_loss") is None:
        problems.append("no fp32 reference loss to compare with")
    elif reference is not row:
        row["delta_vs_fp32"] = loss - reference["val_loss"]
        if abs(row["delta_vs_fp32"]) > LOSS_TOL:
            problems.append(f"val loss {loss:.4f} is {row['delta_vs_fp32']:+.4f} from fp32's (tolerance {LOSS_TOL})")
    if not dry and loss > LEARNED * math.log(row["vocab"]):
        problems.append(f"val loss {loss:.4f} > {LEARNED} ln(vocab): it did not learn")
    if row["peak_mib"] is not None:
        problems += memory_problems(row, row["peak_mib"], row["compile"])
    return problems


def memory_problems(row: dict, peak_mib: float, compiled: bool) -> list[str]:
    """Sets row["memory_ratio"] = peak / row["estimate_mib"]; a problem when it is outside MEMORY_BAND."""
    row["memory_ratio"] = peak_mib / row["estimate_mib"]
    low, high = MEMORY_BAND[compiled]
    return [] if low <= row["memory_ratio"] <= high else [
        f"peak memory / estimate = {row['memory_ratio']:.2f}, outside [{low}, {high}]"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, choices=list(STEPS))
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, 3 steps; 16-mixed and compile skipped")
    args = p.parse_args(argv)
    rows, references = [], {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-runs-") as work:
        for variant in VARIANTS:
            precision, compiled, optimizer = variant
            row = {"config": args.config, "precision": precision, "compile": compiled, "optimizer": optimizer}
            skip = skip_reason(precision, compiled, args.dry_run)
            if skip:
                row.update(status="skipped", problems=[skip])
            else:
                print(f"train {args.config}: {precision} {'compiled' if compiled else 'eager'} {optimizer}", flush=True)
                if precision == "32" and not compiled:
                    references[optimizer] = row
                try:
                    row.update(train_one(args.config, variant, work, args.dry_run))
                    row["problems"] = judge(row, references.get(optimizer), args.dry_run)
                except Exception as err:  # one failed run is reported, and the next one still runs
                    traceback.print_exc()
                    row["problems"] = [f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"]
                row["status"] = "failed" if row["problems"] else "passed"
            rows.append(row)
            Path(args.out).write_text(json.dumps({"loss_tol": LOSS_TOL, "results": rows}, indent=2) + "\n")
    sys.exit(1 if any(r["status"] == "failed" for r in rows) else 0)


if __name__ == "__main__":
    main()
