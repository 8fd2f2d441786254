"""Fuzzing config files and command-line overrides through `python -m train` and `python -m train.estimate`,
in-process. `train.run._train` is a no-op here: an accepted config reads its data, builds its model, trainer and
run folder, and stops where the training loop would start. Every example: success, or exit 2 in one line; no
traceback, no hang, no byte changed in the session's finished runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_train_overrides
from fuzzing import Tally, check_outcome, fuzz_settings, run_entry, tree_digest
from hypothesis import given
from hypothesis import strategies as st
from mutations import override_args, yaml_documents

from train.config import merge

DEMO = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo.yaml"
WHERE = st.sampled_from(["file"] * 12 + ["special/fifo.yaml", "special/dir.yaml", "special/zero.yaml", "missing.yaml",
                                         "x" * 300 + ".yaml", "/dev/null"])


@pytest.fixture
def toy(tiny_corpus, tiny_sft_run) -> tuple[dict, dict]:
    """(configs/pretrain/demo.yaml at toy sizes, with relative paths: runs/ written in the example's folder, corpus/
    and cache/ linked there to the session's corpus and warm token cache (`link_inputs`); the values the keys
    naming folders may take)."""
    base = tiny_sft_run[0]
    values = merge(yaml.safe_load(DEMO.read_text()), tiny_train_overrides(Path("corpus"), Path("."),
                                                                           **{"train.num_samples": 0}))
    values["train"]["out_dir"] = "runs"
    long = "x" * 300
    curated = {
        ("train", "out_dir"): ["runs", "", ".", "a/../..", long, "special/fifo.txt", "special/dir.yaml", "/dev/null",
                               "/proc/self", str(base.parent)],
        ("train", "name"): ["tiny", "", ".", "..", "a/b", long, "special"],
        ("data", "cache_dir"): ["cache", "", long, "special/fifo.txt", "/dev/null"],
        ("data", "path"): ["corpus", "corpus/train.txt", "special/fifo.txt", "special/zero.txt", "special/dir.txt",
                           "missing", "a/b", ""],
        ("train", "resume"): ["auto", "true", "false", True, False, "special/fifo.ckpt", "special/dir.ckpt",
                              "special/zero.ckpt", "missing.ckpt", str(base / "checkpoints" / "last.ckpt")],
    }
    return values, curated


@pytest.fixture
def no_training(monkeypatch):
    import train.run

    monkeypatch.setattr(train.run, "_train", lambda *args, **kwargs: None)


def link_inputs(work: Path, corpus: Path, runs: Path) -> None:
    """corpus/ and cache/ in the example's folder: the session's corpus and token cache."""
    (work / "corpus").symlink_to(corpus)
    (work / "cache").symlink_to(runs / "cache")


def entry(name: str):
    if name == "estimate":
        from train.estimate import main

        return main
    from train.__main__ import main
    from train.cli import run_cli

    return lambda argv: run_cli(main, argv)


def test_fuzz_config_files(toy, tiny_corpus, tiny_sft_run, no_training, capsys):
    valid, curated = toy
    tally, runs = Tally("config files"), tiny_sft_run[0].parent
    before = tree_digest(runs / "tiny"), tree_digest(runs / "sft")

    @fuzz_settings(examples=300)
    @given(doc=yaml_documents(valid, curated), where=WHERE, command=st.sampled_from(["train", "train", "estimate"]))
    def property_(doc, where, command):
        kind, data = doc

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, runs)
            path = work / "config.yaml" if where == "file" else Path(where)
            if where == "file":
                path.write_bytes(data)
            entry(command)(["--config", str(path)])

        tally.add(check_outcome(*run_entry(call)), kind, data if where == "file" else where, command)
        assert (tree_digest(runs / "tiny"), tree_digest(runs / "sft")) == before

    property_()
    tally.report(capsys)


def test_fuzz_overrides(toy, tiny_corpus, tiny_sft_run, no_training, capsys):
    valid, curated = toy
    tally, runs = Tally("command-line overrides"), tiny_sft_run[0].parent
    before = tree_digest(runs / "tiny")

    @fuzz_settings(examples=300)
    @given(args=override_args(valid, curated), command=st.sampled_from(["train", "estimate"]))
    def property_(args, command):
        kind, argv = args

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, runs)
            (work / "config.yaml").write_text(yaml.safe_dump(valid))
            entry(command)(["--config", str(work / "config.yaml"), *argv])

        tally.add(check_outcome(*run_entry(call)), kind, argv, command)
        assert tree_digest(runs / "tiny") == before

    property_()
    tally.report(capsys)
