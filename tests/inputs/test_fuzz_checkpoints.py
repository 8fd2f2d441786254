"""Fuzzing the checkpoint a run resumes from (`--train.resume=<file>`) through `python -m train`, in-process and
without a stub: the config is the session's finished run's own with max_steps at the checkpoint's step, so a
checkpoint that is accepted is restored by Lightning (weights, optimizer, loops) and trains no step (or the few a
smaller `global_step` leaves). Mutations: the loaded object's type, each field's type and value, a tensor's name,
shape or type, and the file's bytes (truncated, garbage, empty, a pickle that runs code, a FIFO, a folder,
/dev/zero). Every example: success, or exit 2 in one line; no traceback, no hang, no byte changed in the run."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import yaml
from fuzzing import Blob, Tally, check_outcome, fuzz_settings, run_entry, tree_digest
from hypothesis import given
from hypothesis import strategies as st
from toy_inputs import entry, link_inputs

FIELD_VALUES = st.sampled_from([None, "8", -1, 8.0, True, 2**70, [8], {}, "x", torch.zeros(2), float("nan")])
FIELDS = ["global_step", "epoch", "state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks",
          "tinystack", "pytorch-lightning_version"]


class Payload:
    """Unpickling this would create `marker`: the safe loader must refuse it without running it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def _saved(obj) -> Blob:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return Blob(buffer.getvalue())


@st.composite
def checkpoints(draw, valid: dict, valid_bytes: bytes) -> tuple[str, Blob | str]:
    """(kind, the file's bytes, or the special path to give instead)."""
    kind = draw(st.sampled_from(["object", "field", "delete", "tensor", "tinystack", "bytes", "special", "payload"]))
    if kind == "special":
        return kind, draw(st.sampled_from(["special/fifo.ckpt", "special/dir.ckpt", "special/zero.ckpt",
                                           "missing.ckpt"]))
    if kind == "bytes":
        cut = draw(st.sampled_from(["truncate", "garbage", "empty"]))
        if cut == "empty":
            return kind, Blob(b"")
        at = draw(st.integers(0, len(valid_bytes) - 1))
        if cut == "truncate":
            return kind, Blob(valid_bytes[:at])
        return kind, Blob(valid_bytes[:at] + draw(st.binary(min_size=1, max_size=64)) + valid_bytes[at + 64:])
    if kind == "payload":
        return kind, _saved({**valid, "extra": Payload("pwned")})
    if kind == "object":
        return kind, _saved(draw(st.sampled_from([[1, 2], "checkpoint", 8, None, torch.zeros(3),
                                                  [valid["state_dict"]], {"global_step": 8}])))
    checkpoint = copy.copy(valid)
    if kind == "field":
        checkpoint[draw(st.sampled_from(FIELDS))] = draw(FIELD_VALUES)
    elif kind == "delete":
        del checkpoint[draw(st.sampled_from(FIELDS))]
    elif kind == "tinystack":
        checkpoint["tinystack"] = draw(st.sampled_from([{}, {"model": "x"}, {"model": {}, "tokenizer_hash": 5},
                                                        {"tokenizer_hash": valid["tinystack"]["tokenizer_hash"]}]))
    else:  # "tensor": one state_dict entry renamed, reshaped, retyped or replaced
        state = dict(valid["state_dict"])
        name = draw(st.sampled_from(sorted(state)))
        change = draw(st.sampled_from(["rename", "shape", "dtype", "value", "int_key"]))
        if change == "rename":
            state[name + ".x"] = state.pop(name)
        elif change == "shape":
            state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
        elif change == "dtype":
            state[name] = state[name].to(draw(st.sampled_from([torch.int64, torch.float16, torch.bool])))
        elif change == "value":
            state[name] = draw(st.sampled_from(["tensor", 1.0, None, [1.0]]))
        else:
            state[7] = state.pop(name)
        checkpoint["state_dict"] = state
    return kind, _saved(checkpoint)


@pytest.fixture
def run_config(tiny_sft_run) -> dict:
    """The session's finished run's config with relative paths (toy_inputs.link_inputs), writing runs/fuzz."""
    values = yaml.safe_load((tiny_sft_run[0] / "config.yaml").read_text())
    values["data"].update(path="corpus", cache_dir="cache")
    values["train"].update(out_dir="runs", name="fuzz", progress_bar=False)
    values["log"].update(wandb=False)
    return {k: v for k, v in values.items() if k in ("model", "data", "train", "log")}


def test_fuzz_resume_checkpoints(tiny_corpus, tiny_sft_run, run_config, capsys):
    base = tiny_sft_run[0]
    source = base / "checkpoints" / "last.ckpt"
    valid_bytes = source.read_bytes()
    valid = torch.load(io.BytesIO(valid_bytes), weights_only=True)
    tally, before = Tally("resume checkpoints"), tree_digest(base)

    @fuzz_settings(examples=200)
    @given(mutant=checkpoints(valid, valid_bytes))
    def property_(mutant):
        kind, data = mutant

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, base)
            (work / "config.yaml").write_text(yaml.safe_dump(run_config))
            path = data if isinstance(data, str) else str(work / "resume.ckpt")
            if not isinstance(data, str):
                (work / "resume.ckpt").write_bytes(data)
            entry("train")(["--config", str(work / "config.yaml"), f"--train.resume={path}"])
            assert not (work / "pwned").exists(), "loading the checkpoint ran code from it"

        tally.add(check_outcome(*run_entry(call)), kind, data)
        assert tree_digest(base) == before

    property_()
    tally.report(capsys)
