"""The GPU check's summary: <out>/summary.json (settings + every part's status, problems and results) and
<out>/summary.md (a status table, then each part's own table)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch

from benchmarks.common import cpu_name
from benchmarks.gpu_check.parts import ROOT
from benchmarks.seqlen import KERNELS


def command_output(*cmd: str) -> str | None:
    """A command's stdout; None where it is missing or fails (no git or no repository in a copy of the tree)."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def settings(dry: bool, seconds: float) -> dict:
    gpu = None if dry else command_output("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")  # no CUDA context
    return {"mode": "dry run (CPU, toy sizes)" if dry else "GPU", "device_name": gpu or cpu_name(),
            "torch": torch.__version__, "commit": command_output("git", "rev-parse", "--short", "HEAD") or "unknown",
            "uncommitted_changes": bool(command_output("git", "status", "--porcelain", "--untracked-files=no")),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 1)}


def fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def train_table(records: list[dict]) -> str:
    rows = [r for rec in records if rec["name"].startswith("train-") and rec["results"] for r in rec["results"]]
    if not rows:
        return ""
    lines = ["| config | precision | compile | optimizer | steps | B x T | val loss | Δ vs fp32 | tokens/s | peak MiB "
             "| estimate MiB | peak / estimate | status |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        status = r["status"] + (f": {'; '.join(r['problems'])}" if r["problems"] else "")
        lines.append(f"| {r['config']} | {r['precision']} | {r['compile']} | {r['optimizer']} | {r.get('steps', '-')} "
                     f"| {r.get('batch', '-')} x {r.get('seq_len', '-')} | {fmt(r.get('val_loss'))} "
                     f"| {fmt(r.get('delta_vs_fp32'), '+.4f')} | {fmt(r.get('tokens_per_s'), ',.0f')} "
                     f"| {fmt(r.get('peak_mib'), ',.0f')} | {fmt(r.get('estimate_mib'), ',.0f')} "
                     f"| {fmt(r.get('memory_ratio'), '.2f')} | {status} |")
    return "## Training: final val loss against the fp32 run (same optimizer)\n\n" + "\n".join(lines) + "\n"


def memory_table(results: dict) -> str:
    rows = [r for r in results["results"] if "estimate_mib" in r]
    if not rows:
        return ""
    lines = ["| shape | B x T | peak MiB | train.estimate MiB | peak / estimate |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['batch']} x {r['seq']} | {r['peak_mem_mib']:,.0f} | {r['estimate_mib']:,.0f} | "
              f"{r['memory_ratio']:.2f} |" for r in rows]
    return "\nOurs: peak memory against train.estimate (bf16-mixed, AdamW):\n\n" + "\n".join(lines) + "\n"


def part_sections(out: Path, records: list[dict]) -> list[str]:
    sections = []
    for rec in records:
        results = rec["results"]
        if rec["name"] == "gpu-tests" and results:
            listed = [t for t in results["tests"] if t["outcome"] != "passed"]
            sections.append(f"## gpu-marked tests: {results['counts']}\n\n" + "".join(
                f"- {t['outcome']}: `{t['test']}` {t['message']}\n" for t in listed))
        elif rec["name"] in ("throughput", "seqlen") and results and (out / f"{rec['name']}.md").is_file():
            text = (out / f"{rec['name']}.md").read_text()
            if rec["name"] == "throughput":
                text += memory_table(results)
            else:
                kernels = sorted({r["mixer"] for r in results["results"] if r["mixer"] in KERNELS})
                text += f"\nKernels measured: {', '.join(kernels) or 'none (fla / mamba_ssm not importable)'}.\n"
            sections.append(f"## {rec['name']}\n\n{text}")
    return [train_table(records), *sections]


def write_summary(out: Path, records: list[dict], dry: bool, seconds: float) -> None:
    meta = settings(dry, seconds)
    failed = [r["name"] for r in records if r["status"] == "failed"]
    (out / "summary.json").write_text(json.dumps({"settings": meta, "failed": failed, "parts": records}, indent=2)
                                      + "\n")
    lines = [f"# GPU check: {'FAILED (' + ', '.join(failed) + ')' if failed else 'passed'}", "",
             f"{meta['mode']} on {meta['device_name']}, torch {meta['torch']}, commit {meta['commit']}"
             f"{' + uncommitted changes' if meta['uncommitted_changes'] else ''}, {meta['date']}, "
             f"{meta['seconds']:.0f} s.", "", "| # | part | status | seconds | budget s | problems |",
             "|---:|---|---|---:|---:|---|"]
    lines += [f"| {i} | {r['name']} | {r['status']} | {r['seconds']:.0f} | {r['budget_s']} | "
              f"{'; '.join(r['problems'][:3]).replace('|', '/')} |" for i, r in enumerate(records, 1)]
    body = "\n".join(lines) + "\n\n" + "\n".join(s for s in part_sections(out, records) if s)
    (out / "summary.md").write_text(body)
