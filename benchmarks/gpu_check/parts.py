"""The parts of the GPU check: the module each runs (its `main(argv)`, the same entry point a person would run), its
time budget on one H100, and how its results are read and judged afterwards.

Budgets in seconds, 490 in all, so that the check ends inside 9 minutes (the real run gives a part its budget plus
what the parts before it left unused, and kills it past that): gpu-tests 90 (Triton compiles and autotunes the fla
kernels on first use), train-demo 55, train-15m 70, train-42m 80 (7 runs each: train_matrix.py), seqlen 55,
throughput 140 (six cold torch.compile warm-ups: ours and HF at three shapes; last, as the part most likely to need
the time the others left).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU_MARK = "pytest.mark.gpu"
TRAIN_BUDGETS = {"demo": 55, "15m": 70, "42m": 80}
THROUGHPUT_REAL = ["--device", "cuda", "--shapes", "15m,42m,110m", "--compile", "--steps", "10", "--warmup", "3"]
THROUGHPUT_DRY = ["--device", "cpu", "--shapes", "custom", "--d_model", "32", "--n_layers", "1", "--n_heads", "2",
                  "--seq", "32", "--batch", "2", "--vocab", "256", "--steps", "2", "--warmup", "0", "--threads", "1"]
SEQLEN_REAL = ["--device", "cuda", "--seq", "1024,4096,16384", "--tokens", "65536", "--warmup", "2", "--repeats", "5"]
SEQLEN_DRY = ["--device", "cpu", "--seq", "64,256", "--tokens", "256", "--d_model", "32", "--n_heads", "2",
              "--warmup", "0", "--repeats", "1", "--threads", "1"]


@dataclass
class Part:
    name: str
    budget_s: int
    module: str  # `python -m <module> <argv>`, or `<module>.main(argv)` in the dry run
    argv: list[str]
    read: Callable[[Path], tuple[object, list[str]]]  # output folder -> (results, problems)


def gpu_test_files() -> list[str]:
    """The test files holding `gpu`-marked tests (collecting only these keeps the part short)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if GPU_MARK in p.read_text())


def plan(out: Path, dry: bool) -> list[Part]:
    junit = out / "gpu-tests.xml"
    tests = Part("gpu-tests", 90, "pytest", ["-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                                             *gpu_test_files()], read_tests)
    train = [Part(f"train-{name}", budget, "benchmarks.gpu_check.train_matrix",
                  ["--config", name, "--out", str(out / f"train-{name}.json"), *(["--dry-run"] if dry else [])],
                  partial(read_train, name=f"train-{name}")) for name, budget in TRAIN_BUDGETS.items()]
    throughput = Part("throughput", 140, "benchmarks.throughput",
                      [*(THROUGHPUT_DRY if dry else THROUGHPUT_REAL), "--out", str(out / "throughput")],
                      read_throughput)
    seqlen = Part("seqlen", 55, "benchmarks.seqlen", [*(SEQLEN_DRY if dry else SEQLEN_REAL), "--out",
                                                      str(out / "seqlen")], read_seqlen)
    return [tests, *train, seqlen, throughput]


def read_tests(out: Path):
    rows = []
    for case in ET.parse(out / "gpu-tests.xml").iter("testcase"):
        found = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}",
                     "outcome": "passed" if found is None else {"failure": "failed"}.get(found.tag, found.tag),
                     "message": "" if found is None else (found.get("message") or "").splitlines()[0][:200]})
    counts = Counter(r["outcome"] for r in rows)
    problems = [f"{r['test']}: {r['outcome']}: {r['message']}" for r in rows if r["outcome"] in ("failed", "error")]
    return {"counts": dict(counts), "tests": rows}, problems + ([] if rows else ["no gpu-marked test was collected"])


def read_train(out: Path, name: str):
    rows = json.loads((out / f"{name}.json").read_text())["results"]
    problems = [f"{r['precision']} {'compiled' if r['compile'] else 'eager'} {r['optimizer']}: {p}"
                for r in rows if r["status"] == "failed" for p in r["problems"]]
    return rows, problems


def read_throughput(out: Path):
    """throughput.py's rows, and for ours (CUDA) its peak memory against train.estimate's for the same shape."""
    from benchmarks.gpu_check.train_matrix import estimated_bytes, memory_problems
    from train.config import load_config

    data = json.loads((out / "throughput.json").read_text())
    settings, problems = data["settings"], []
    for row in data["results"]:
        if row["model"] != "ours" or settings["device"] != "cuda":
            continue
        cfg = load_config(None, {"model": {k: row[k] for k in ("d_model", "n_layers", "n_heads")}
                                 | {"vocab_size": settings["vocab"]},
                                 "data": {"seq_len": row["seq"]},
                                 "train": {"batch_size": row["batch"], "precision": settings["precision"]}})
        row["estimate_mib"] = estimated_bytes(cfg) / 2**20
        problems += [f"{row['shape']}: {p}" for p in memory_problems(row, row["peak_mem_mib"], settings["compile"])]
    return data, problems


def read_seqlen(out: Path):
    data = json.loads((out / "seqlen.json").read_text())
    return data, [] if data["results"] else ["no mixer was measured"]
