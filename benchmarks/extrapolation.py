"""Length extrapolation: runs trained at one sequence length, scored at longer ones on the same held-out text.

    python benchmarks/extrapolation.py --runs runs/ablate-position_zoo/{rope,alibi,t5,none}-s0 --lengths 128 256 512

Press, Smith and Lewis (2022, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", arXiv:2108.12409) report that ALiBi's perplexity keeps falling past the training length while
sinusoidal and rotary positions degrade. Each run is scored on the test half of its validation stories
(train/ablate/splits.py: the same tokens for every run of one sweep), packed into blocks of L + 1 tokens for each L:
loss = sum CE / tokens in nats. A position that cannot place a token past its table (`learned`) is reported as
refused at that length. Writes <out>.json and <out>.md (default runs/benchmarks/extrapolation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from benchmarks.common import RESULTS, check_out, cpu_name, write_outputs  # noqa: E402
from data.tokenizer import eot_id, token_byte_lengths  # noqa: E402
from train.ablate.splits import score, split_tokens  # noqa: E402
from train.cli import user_errors_exit_2  # noqa: E402
from train.run import prepare_data  # noqa: E402
from train.rundir.load import load_run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished run directories")
    p.add_argument("--lengths", nargs="+", type=int, default=[128, 256, 512], help="evaluation lengths L")
    p.add_argument("--out", default=str(RESULTS / "extrapolation"), help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    if any(n < 2 for n in args.lengths):
        p.error("--lengths: each length is at least 2")
    check_out(args.out)
    return args


def run_rows(run: str, lengths: list[int]) -> list[dict]:
    """One row per length: the run's position, its training length, and its test-half loss at L (None: refused)."""
    cfg, tokenizer, model = load_run(run)
    _, tokens = prepare_data(cfg, tokenizer)
    test = split_tokens(tokens["validation"], eot_id(tokenizer))["test"]
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float32)
    rows = []
    for length in lengths:
        try:
            loss = score(model, test, length, token_bytes)["loss"]
        except ValueError:  # a position past the table of a learned position
            loss = None
        rows.append({"run": run, "position": cfg.model.position, "mixer": str(cfg.model.mixer),
                     "train_len": cfg.data.seq_len, "eval_len": length, "loss": loss})
        print(f"{run}: L={length} loss={loss}", flush=True)
    return rows


def markdown(rows: list[dict], lengths: list[int], meta: dict) -> str:
    by_run: dict[str, dict[int, float | None]] = {}
    for r in rows:
        by_run.setdefault(f"{r['position']} ({Path(r['run']).name})", {})[r["eval_len"]] = r["loss"]
    head = "| position (run) | " + " | ".join(f"L={n}" for n in lengths) + " |"
    lines = [f"Test-half loss (nats/token) at evaluation length L; trained at {rows[0]['train_len']} tokens. "
             f"{meta['machine']}, torch {meta['torch']}.", "", head, "|" + " --- |" * (len(lengths) + 1)]
    for name, losses in by_run.items():
        cells = [f"{losses[n]:.4f}" if losses[n] is not None else "refused" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    with user_errors_exit_2(), torch.no_grad():  # the scoring only; no global switch left behind
        rows = [row for run in args.runs for row in run_rows(run, args.lengths)]
    meta = {"machine": cpu_name(), "torch": torch.__version__, "lengths": args.lengths, "runs": args.runs}
    write_outputs(Path(args.out), meta, rows, markdown(rows, args.lengths, meta))


if __name__ == "__main__":
    main()
