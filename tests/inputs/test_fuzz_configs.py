"""Fuzzing config files and command-line overrides through `python -m train` and `python -m train.estimate`,
in-process. Training is stubbed out (toy_inputs.stop_before_training): an accepted config reads its data, builds its
model, trainer and run folder, and stops where the training loop would start. Every example: success, or exit 2 in
one line; no traceback, no hang, no byte changed in the session's finished runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from fuzzing import Tally, check_outcome, fuzz_settings, run_entry, tree_digest
from hypothesis import given
from hypothesis import strategies as st
from mutations import override_args, yaml_documents
from toy_inputs import LONG, entry, link_inputs, stop_before_training, toy_config

WHERE = st.sampled_from(["file"] * 12 + ["special/fifo.yaml", "special/dir.yaml", "special/zero.yaml", "missing.yaml",
                                         LONG + ".yaml", "/dev/null"])
COMMANDS = st.sampled_from(["train", "train", "train.estimate"])


def test_fuzz_config_files(tiny_corpus, tiny_sft_run, monkeypatch, capsys):
    base = tiny_sft_run[0]
    valid, curated = toy_config(base)
    stop_before_training(monkeypatch)
    tally, before = Tally("config files"), (tree_digest(base), tree_digest(tiny_sft_run[1]))

    @fuzz_settings(examples=600)
    @given(doc=yaml_documents(valid, curated), where=WHERE, command=COMMANDS)
    def property_(doc, where, command):
        kind, data = doc

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, base)
            path = work / "config.yaml" if where == "file" else Path(where)
            if where == "file":
                path.write_bytes(data)
            entry(command)(["--config", str(path)])

        tally.add(check_outcome(*run_entry(call)), kind, data if where == "file" else where, command)
        assert (tree_digest(base), tree_digest(tiny_sft_run[1])) == before

    property_()
    tally.report(capsys)


def test_fuzz_overrides(tiny_corpus, tiny_sft_run, monkeypatch, capsys):
    base = tiny_sft_run[0]
    valid, curated = toy_config(base)
    stop_before_training(monkeypatch)
    tally, before = Tally("command-line overrides"), tree_digest(base)

    @fuzz_settings(examples=500)
    @given(args=override_args(valid, curated), command=COMMANDS)
    def property_(args, command):
        kind, argv = args

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, base)
            (work / "config.yaml").write_text(yaml.safe_dump(valid))
            entry(command)(["--config", str(work / "config.yaml"), *argv])

        tally.add(check_outcome(*run_entry(call)), kind, argv, command)
        assert tree_digest(base) == before

    property_()
    tally.report(capsys)
