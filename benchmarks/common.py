"""What the benchmarks share: the model shapes, the machine's name, checking `--out` before a benchmark runs, and
writing a result table as JSON + Markdown."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from model.config import ModelConfig
from train.cli import user_errors_exit_2
from train.rundir.paths import FileKind, check_output, json_object

RESULTS = Path("runs") / "benchmarks"  # default output folder (under runs/, never the tracked benchmarks/results/)
SHAPES = {"15m": (288, 6, 6, 256), "42m": (512, 8, 8, 1024), "110m": (768, 12, 12, 1024)}  # d, L, H, T


def shape_config(name: str, args) -> tuple[ModelConfig, int]:
    """The model of shape `name` (SHAPES, or custom: --d_model/--n_layers/--n_heads) and its sequence length."""
    d, n_layers, n_heads, seq = SHAPES.get(name, (args.d_model, args.n_layers, args.n_heads, 256))
    seq = args.seq or seq
    cfg = ModelConfig(vocab_size=args.vocab, d_model=d, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=args.n_kv_heads, max_seq_len=seq, position="rope", mixer="softmax", ffn="swiglu")
    return cfg, seq


def cpu_name() -> str:
    """The CPU's model name (for the result tables)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def _result_beside(path: Path) -> bool:
    """An output of a benchmark: the .json beside it (or itself) holds a result table (settings + results, or
    meta + rows)."""
    stem = str(path)[: -len(path.suffix)] if path.suffix else str(path)
    return json_object(lambda d: {"settings", "results"} <= set(d) or {"meta", "rows"} <= set(d))(Path(f"{stem}.json"))


RESULT = FileKind("a benchmark's result", _result_beside)


def check_out(out: str | Path) -> Path:
    """`out` (the stem of <out>.json, .md and .png), checked before the benchmark runs: never in a run folder or an
    input, and an existing file there is replaced only if it is a benchmark's result (one line, exit 2, else)."""
    out = Path(out)
    with user_errors_exit_2():
        for suffix in (".json", ".md", ".png"):
            check_output(Path(f"{out}{suffix}"), RESULT, force=True)
    return out


def write_outputs(out: Path, meta: dict, results: list[dict], table: str) -> None:
    """Print the table and write <out>.json (settings + results) and <out>.md."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"settings": meta, "results": results}, indent=2) + "\n")
    Path(f"{out}.md").write_text(table)
    print(f"wrote {out}.json and {out}.md")
