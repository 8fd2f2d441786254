"""Fuzzing preference-pair files (`align.pairs`, JSONL) through `python -m align.dpo`, in-process, from the
session's LoRA SFT run. Training is stubbed out (toy_inputs.stop_before_training): accepted pairs are tokenized
into batches and the run folder is set up, but no step trains. Every example: success, or exit 2 in one line; no
traceback, no hang, no byte changed in the session's runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import tiny_finetune_values
from fuzzing import Tally, check_outcome, fuzz_settings, run_entry, tree_digest
from hypothesis import given
from hypothesis import strategies as st
from mutations import json_lines
from toy_inputs import link_inputs, stop_before_training

NAMES, THINGS = ["Tom", "Lily", "Sue", "Ben"], ["ball", "cat", "kite", "cake", "box"]
PAIRS = [{"prompt": f"Write a story about {name} and a {thing}.",
          "chosen": f"{name} had a {thing}. {name} played with the {thing} all day. The end.",
          "rejected": f"{name} was sad."} for name in NAMES for thing in THINGS] * 2
WHERE = st.sampled_from(["file"] * 8 + ["special/fifo.jsonl", "special/dir.jsonl", "special/zero.jsonl",
                                        "missing.jsonl"])


def dpo_config(sft_run: Path) -> dict:
    values = tiny_finetune_values(Path("corpus"), Path("."), sft_run, {"eval_prompts": 0},
                                  **{"train.name": "dpo", "train.num_samples": 0})
    values["train"]["out_dir"] = "runs"
    values["align"] = {"pairs": "pairs.jsonl"}
    return values


def test_fuzz_pair_files(tiny_corpus, tiny_sft_run, monkeypatch, capsys):
    from align.dpo import main
    from align.policy import align_config
    from train.cli import run_cli

    base, sft = tiny_sft_run
    config = dpo_config(sft)
    stop_before_training(monkeypatch)
    tally, before = Tally("preference pairs"), (tree_digest(base), tree_digest(sft))

    @fuzz_settings(examples=150)
    @given(pairs=json_lines(PAIRS), where=WHERE)
    def property_(pairs, where):
        kind, data = pairs

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, base)
            (work / "pairs.jsonl").write_bytes(data)
            (work / "dpo.yaml").write_text(yaml.safe_dump(config))
            path = "pairs.jsonl" if where == "file" else where
            run_cli(main, ["--config", str(work / "dpo.yaml"), f"--align.pairs={path}"], load=align_config)

        tally.add(check_outcome(*run_entry(call)), kind, data, where)
        assert (tree_digest(base), tree_digest(sft)) == before

    property_()
    tally.report(capsys)
