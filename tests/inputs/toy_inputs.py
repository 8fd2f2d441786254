"""The valid inputs the fuzzers start from: configs/pretrain/demo.yaml at toy sizes with relative paths (runs/
written in the example's folder, corpus/ and cache/ linked there to the session's corpus and warm token cache), the
values that keys naming folders may take, and the entry points, called in-process with training stubbed out."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import tiny_train_overrides

from train.config import merge

DEMO = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo.yaml"
LONG = "x" * 300  # a file name past the file system's 255 bytes


def toy_config(base_run: Path) -> tuple[dict, dict]:
    """(demo.yaml at toy sizes, the values each key naming a folder may take: relative, special or refused ones,
    plus the session's finished run `base_run` as an output folder and as a checkpoint to resume)."""
    values = merge(yaml.safe_load(DEMO.read_text()), tiny_train_overrides(Path("corpus"), Path("."),
                                                                           **{"train.num_samples": 0}))
    values["train"]["out_dir"] = "runs"
    curated = {
        ("train", "out_dir"): ["runs", "", ".", "a/../..", LONG, "special/fifo.txt", "special/dir.yaml", "/dev/null",
                               "/proc/self", str(base_run.parent)],
        ("train", "name"): ["tiny", "", ".", "..", "a/b", LONG, "special"],
        ("data", "cache_dir"): ["cache", "", LONG, "special/fifo.txt", "/dev/null"],
        ("data", "path"): ["corpus", "corpus/train.txt", "special/fifo.txt", "special/zero.txt", "special/dir.txt",
                           "missing", "a/b", ""],
        ("train", "resume"): ["auto", "true", "false", True, False, "special/fifo.ckpt", "special/dir.ckpt",
                              "special/zero.ckpt", "missing.ckpt", str(base_run / "checkpoints" / "last.ckpt")],
    }
    return values, curated


def link_inputs(work: Path, corpus: Path, base_run: Path) -> None:
    """corpus/ and cache/ in the example's folder: the session's corpus and the token cache of `base_run`."""
    (work / "corpus").symlink_to(corpus)
    (work / "cache").symlink_to(base_run.parent / "cache")


def stop_before_training(monkeypatch) -> None:
    """`train.run._train` does nothing: a run is checked, set up and its folder written, but it trains no step."""
    import train.run

    monkeypatch.setattr(train.run, "_train", lambda *args, **kwargs: None)


def entry(name: str):
    """The entry point `python -m <name>` as a function of its argument list."""
    if name == "train.estimate":
        from train.estimate.breakdown import main

        return main
    from train.__main__ import main
    from train.cli import run_cli

    return lambda argv: run_cli(main, argv)
