"""`python -m benchmarks.gpu_check --dry-run` end to end on CPU (every part at toy sizes: JSON, Markdown, exit code),
a failing part that makes the exit code 1 while the next part still runs, an isolated part (its time limit, exit
code and log), and the memory judgement on CUDA throughput rows."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.gpu_check.__main__ import log_tail, run_part
from benchmarks.gpu_check.parts import ROOT, Part, plan, read_throughput
from benchmarks.gpu_check.train_matrix import LOSS_TOL, VARIANTS


def gpu_check(out, *args: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done, json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text()


def test_the_dry_run_writes_every_part(tmp_path):
    done, summary, table = gpu_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    names = [part.name for part in plan(tmp_path, dry=True)]
    assert [p["name"] for p in summary["parts"]] == names and summary["failed"] == []
    assert all(p["status"] == "passed" and p["problems"] == [] for p in summary["parts"])
    assert f"[1/{len(names)}] gpu-tests: started" in done.stdout and f"[{len(names)}/{len(names)}] throughput: " \
        "passed" in done.stdout and "gpu check passed" in done.stdout
    parts = {p["name"]: p["results"] for p in summary["parts"]}
    assert parts["gpu-tests"]["counts"].get("skipped", 0) > 0  # the gpu-marked tests, collected and skipped on CPU
    for name in ("demo", "15m", "42m"):
        rows = parts[f"train-{name}"]
        assert len(rows) == len(VARIANTS)
        ran = [r for r in rows if r["status"] == "passed"]
        assert {(r["precision"], r["optimizer"]) for r in ran} == {(p, o) for p in ("32", "bf16-mixed")
                                                                   for o in ("adamw", "muon")}
        assert all(abs(r["delta_vs_fp32"]) <= LOSS_TOL for r in ran if r["precision"] != "32")
        assert {r["status"] for r in rows if r["precision"] == "16-mixed" or r["compile"]} == {"skipped"}
    assert {r["model"] for r in parts["throughput"]["results"]} == {"ours", "hf"}
    assert {r["seq_len"] for r in parts["seqlen"]["results"]} == {64, 256}
    assert table.startswith("# GPU check: passed") and "| 6 | throughput | passed |" in table
    assert "## Training: final val loss against the fp32 run" in table and "| demo | bf16-mixed | False | muon |" \
        in table and "ours vs HF LlamaForCausalLM" in table and "Mixer fwd+bwd vs sequence length" in table
    assert (tmp_path / "logs" / "train-42m.log").is_file() and (tmp_path / "seqlen.png").is_file()


def test_a_failing_part_fails_the_check_and_the_next_part_still_runs(tmp_path):
    done, summary, table = gpu_check(tmp_path, "--parts", "throughput,seqlen", "--inject-failure", "throughput")
    assert done.returncode == 1
    assert summary["failed"] == ["throughput"]
    status = {p["name"]: (p["status"], p["problems"]) for p in summary["parts"]}
    assert status == {"throughput": ("failed", ["injected failure (--inject-failure)"]), "seqlen": ("passed", [])}
    assert table.startswith("# GPU check: FAILED (throughput)") and "gpu check FAILED: throughput" in done.stdout


def test_an_isolated_part_is_cut_off_at_its_limit_and_a_crash_is_its_exit_code(tmp_path):
    (tmp_path / "logs").mkdir()
    nothing = lambda out: (None, [])  # noqa: E731
    slow = Part("slow", 60, "timeit", ["-n", "1", "-r", "1", "import time; time.sleep(60)"], nothing)
    record = run_part(slow, tmp_path, limit=1, isolated=True, inject=False)
    assert record["status"] == "failed" and record["problems"] == ["cut off at its time limit of 1 s"]
    assert record["seconds"] < 30
    crash = Part("crash", 60, "benchmarks.no_such_module", [], nothing)
    record = run_part(crash, tmp_path, limit=60, isolated=True, inject=False)
    assert record["status"] == "failed" and record["problems"][0].startswith("exit code 1 (log: ")
    assert "No module named benchmarks.no_such_module" in log_tail(tmp_path, record)  # printed under the failure


def test_cuda_throughput_memory_is_judged_against_the_estimate(tmp_path):
    # 42m as measured on one H100 (benchmarks/results/throughput_cuda.json): compiled, bf16-mixed, B 64 x T 1024
    row = {"shape": "42m", "model": "ours", "d_model": 512, "n_layers": 8, "n_heads": 8, "seq": 1024, "batch": 64,
           "peak_mem_mib": 17087.0}
    settings = {"device": "cuda", "vocab": 8192, "precision": "bf16-mixed", "compile": True}
    for peak, expected in ((17087.0, []), (2 * 17087.0, ["42m: peak memory / estimate = 1.83, outside [0.3, 1.1]"])):
        data = {"settings": settings, "results": [{**row, "peak_mem_mib": peak}, {**row, "model": "hf"}]}
        (tmp_path / "throughput.json").write_text(json.dumps(data))
        results, problems = read_throughput(tmp_path)
        assert problems == expected
        assert 0.85 < results["results"][0]["memory_ratio"] * 17087.0 / peak < 1.0  # ~0.92 of train.estimate's
        assert "memory_ratio" not in results["results"][1]  # HF's memory is not ours to estimate
