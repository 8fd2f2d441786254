"""`python -m benchmarks.gpu_check [--dry-run] [--out DIR] [--parts a,b] [--inject-failure PART]` (`make gpu-check`).

Runs the parts of benchmarks/gpu_check/parts.py one after the other, each in its own process under a time limit:
its budget plus what the parts before it left unused (part i must end by the sum of budgets 1..i, so the whole check
ends within the sum; a part past its limit is killed and counts as failed). Prints "[i/n] part: ..." with the
elapsed time, and rewrites <out>/summary.json and summary.md after every part. A failing part does not stop the
check; the exit code is 1 when any part failed. --dry-run: CPU at toy sizes, the parts run in this one process
(one import of torch and Lightning instead of six), with no time limit. --inject-failure PART: PART fails without
running (tests the exit code and that the check continues past it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from benchmarks.gpu_check.parts import ROOT, Part, plan
from benchmarks.gpu_check.report import write_summary

RUNS = Path("runs") / "gpu-check"
ENV = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, every part in this process")
    p.add_argument("--out", default=None, help="output folder (default runs/gpu-check/<UTC timestamp>)")
    p.add_argument("--parts", default=None, help="comma list of the parts to run (default: all)")
    p.add_argument("--inject-failure", default=None, metavar="PART", help="PART fails without running")
    args = p.parse_args(argv)
    args.out = Path(args.out or RUNS / time.strftime("%Y%m%d-%H%M%S", time.gmtime())).resolve()  # parts run in ROOT
    names = [part.name for part in plan(args.out, args.dry_run)]
    args.parts = args.parts.split(",") if args.parts else names
    for name in [*args.parts, *([args.inject_failure] if args.inject_failure else [])]:
        if name not in names:
            p.error(f"unknown part {name!r}; valid: {', '.join(names)}")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA GPU is visible; --dry-run runs the check on CPU at toy sizes")
    return args


def run_isolated(part: Part, log: Path, limit: float) -> str | None:
    """`python -m module argv` in its own process group, killed after `limit` seconds -> an error, or None."""
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", part.module, *part.argv], stdout=f, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            return f"cut off at its time limit of {limit:.0f} s"
        finally:  # past the limit, on Ctrl-C, or left behind (compile workers): the part's whole process group goes
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return None if code == 0 else f"exit code {code} (log: {log})"


def run_in_process(part: Part, log: Path) -> str | None:
    """`module.main(argv)` here (the dry run: no time limit) -> an error, or None."""
    with log.open("w") as f, redirect_stdout(f), redirect_stderr(f):
        try:
            code = importlib.import_module(part.module).main(part.argv)
        except SystemExit as stop:
            code = stop.code
        except Exception as err:  # reported as this part's failure; the next part still runs
            traceback.print_exc()
            return f"{type(err).__name__}: {err} (log: {log})"
    return None if code in (None, 0) else f"exit code {code} (log: {log})"


def run_part(part: Part, out: Path, limit: float, isolated: bool, inject: bool) -> dict:
    start = time.perf_counter()
    log = out / "logs" / f"{part.name}.log"
    if inject:
        error = "injected failure (--inject-failure)"
    else:
        error = run_isolated(part, log, limit) if isolated else run_in_process(part, log)
    results, problems = None, [error] if error else []
    if not inject:
        try:
            results, found = part.read(out)
            problems += found
        except Exception as err:  # no or unreadable results: this part failed, the check goes on
            problems.append(f"no results: {type(err).__name__}: {err}")
    return {"name": part.name, "status": "failed" if problems else "passed", "budget_s": part.budget_s,
            "limit_s": round(limit), "seconds": round(time.perf_counter() - start, 1), "problems": problems,
            "results": results}


def log_tail(out: Path, record: dict, lines: int = 15) -> str:
    """The end of a failed part's log, for a reader who has only the console (the device tool's output tail)."""
    log = out / "logs" / f"{record['name']}.log"
    if record["status"] == "passed" or not log.is_file():
        return ""
    return "".join(f"\n    | {line}" for line in log.read_text(errors="replace").splitlines()[-lines:])


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.update(ENV)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    parts = [part for part in plan(args.out, args.dry_run) if part.name in args.parts]
    start, records, deadline = time.perf_counter(), [], 0
    for i, part in enumerate(parts, 1):
        deadline += part.budget_s
        limit = deadline - (time.perf_counter() - start)
        print(f"[{i}/{len(parts)}] {part.name}: started at {time.perf_counter() - start:.0f} s"
              + ("" if args.dry_run else f" (budget {part.budget_s} s, limit {limit:.0f} s)"), flush=True)
        record = run_part(part, args.out, limit, isolated=not args.dry_run, inject=part.name == args.inject_failure)
        records.append(record)
        try:
            write_summary(args.out, records, args.dry_run, time.perf_counter() - start)
        except Exception as err:  # a fault in the report must not cost the parts still to run
            print(f"    summary not written: {type(err).__name__}: {err}", flush=True)
        problems = "".join(f"\n    {p}" for p in record["problems"][:5]) + log_tail(args.out, record)
        print(f"[{i}/{len(parts)}] {part.name}: {record['status']} in {record['seconds']:.0f} s, elapsed "
              f"{time.perf_counter() - start:.0f} s{problems}", flush=True)
    failed = [r["name"] for r in records if r["status"] == "failed"]
    print(f"gpu check {'FAILED: ' + ', '.join(failed) if failed else 'passed'}; wrote {args.out}/summary.json and "
          f"{args.out}/summary.md", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
