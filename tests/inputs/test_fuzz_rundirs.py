"""Fuzzing run directories through `python -m train.generate`, in-process: a copy of the session's plain run or of
its LoRA run (adapter/ on the plain one) with one file mutated (config.yaml, tokenizer.json, model.safetensors,
adapter_config.json, adapter_model.safetensors), replaced by a FIFO, a folder or /dev/zero, or deleted, and a
prompt that may hold an undecodable byte. Every example: success, or exit 2 in one line; no traceback, no hang, no
byte changed in the session's runs (the LoRA run's base is read, never written)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml
from fuzzing import Blob, Tally, check_outcome, fuzz_settings, run_entry, tree_digest
from hypothesis import given
from hypothesis import strategies as st
from mutations import json_documents, safetensors_files, yaml_documents

FILES = {"plain": ("config.yaml", "tokenizer.json", "model.safetensors"),
         "lora": ("config.yaml", "tokenizer.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors")}
PROMPTS = st.sampled_from(["Once upon a time"] * 6 + ["", "\udcff\udcfe", "x" * 5000, "<|endoftext|>", "\u202e"])


def copy_run(src: Path, dst: Path, kind: str) -> Path:
    for name in FILES[kind]:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)
    return dst


@st.composite
def run_dirs(draw, runs: dict[str, Path]) -> tuple[str, str, str, Blob | str | None]:
    """(run kind, file, mutation kind, the file's new bytes, a special path to link there, or None to delete)."""
    kind = draw(st.sampled_from(sorted(FILES)))
    name = draw(st.sampled_from(FILES[kind]))
    how = draw(st.sampled_from(["content"] * 6 + ["special", "delete"]))
    if how == "delete":
        return kind, name, how, None
    if how == "special":
        return kind, name, how, draw(st.sampled_from(["special/fifo.json", "special/dir.json", "special/zero.json"]))
    data = (runs[kind] / name).read_bytes()
    if name.endswith(".yaml"):
        how, data = draw(yaml_documents(yaml.safe_load(data)))
    elif name.endswith(".json"):
        how, data = draw(json_documents(json.loads(data)))
    else:
        how, data = draw(safetensors_files(data))
    return kind, name, how, Blob(data)


def test_fuzz_run_directories(tiny_sft_run, capsys):
    from train.generate.command import main

    runs = dict(zip(("plain", "lora"), tiny_sft_run))
    tally, before = Tally("run directories"), [tree_digest(run) for run in tiny_sft_run]

    @fuzz_settings(examples=500)
    @given(mutant=run_dirs(runs), prompt=PROMPTS)
    def property_(mutant, prompt):
        kind, name, how, data = mutant

        def call(work: Path) -> None:
            run = copy_run(runs[kind], work / "run", kind)
            target = run / name
            target.unlink()
            if isinstance(data, bytes):
                target.write_bytes(data)
            elif data is not None:
                os.symlink(work / data, target, target_is_directory=data.endswith("dir.json"))
            main(["--run", str(run), "--prompt", prompt, "--max_new_tokens", "2", "--device", "cpu"])

        tally.add(check_outcome(*run_entry(call)), kind, name, how, data, prompt)
        assert [tree_digest(run) for run in tiny_sft_run] == before

    property_()
    tally.report(capsys)
