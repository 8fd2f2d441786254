"""Sizes that would allocate more than the machine has are refused before the first tensor exists, in one line
(exit 2) naming the key and the numbers, whether they come from a config, a run folder's config.yaml, an imported
config.json, a LoRA rank or a command's flags (train/estimate/memory.py, model/lora.py, train/generate/command.py);
and the bounds
that are not memory: gradient accumulation, seeds, run names."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from conftest import tiny_finetune_values, tiny_train_overrides
from untouched import copy_run, refused, snapshot

import train.estimate.memory
from finetune.config import finetune_config
from finetune.sft import finetune
from model.positions import RotaryPosition
from train.__main__ import main as pretrain_main
from train.cli import run_cli
from train.config import ConfigError, load_config
from train.generate.command import main as generate_main
from train.run import pretrain
from train.rundir.load import load_run

HUGE = 10**9


def train_argv(corpus, out, **extra) -> list[str]:
    """Command-line overrides of a seconds-long tiny run (conftest's), plus `extra` (dotted keys)."""
    values = tiny_train_overrides(corpus, out, **{"train.num_samples": 0, **extra})

    def flat(tree, prefix=""):
        for key, value in tree.items():
            yield from flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"--{prefix}{key}={value}"]
    return list(flat(values))


@pytest.mark.parametrize("key, value", [("vocab_size", HUGE), ("n_layers", HUGE), ("d_model", HUGE),
                                        ("d_ff", HUGE)])
def test_a_run_config_edited_to_a_huge_size_is_refused_before_allocating(tiny_sft_run, tmp_path, capsys, key,
                                                                         value):
    run = copy_run(tiny_sft_run[0], tmp_path / "run")
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["model"][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    before, start = snapshot(tiny_sft_run[0], run), time.perf_counter()
    err = refused(generate_main, ["--run", run, "--max_new_tokens", 3, "--device", "cpu"], capsys)
    assert f"model.{key}={value}" in err and "available" in err, err
    assert time.perf_counter() - start < 10 and snapshot(tiny_sft_run[0], run) == before


@pytest.mark.parametrize("extra, key", [
    ({"train.batch_size": HUGE}, "train.batch_size"),
    ({"data.seq_len": 10**7}, "data.seq_len"),
    ({"model.n_layers": HUGE}, "model.n_layers"),
    ({"model.vocab_size": HUGE}, "model.vocab_size"),
    ({"model.ffn": "moe", "model.moe.num_experts": HUGE}, "model.moe.num_experts"),
    ({"model.ffn": "moe", "model.moe.num_experts": 10**5, "model.d_ff": 10**5}, "model.ffn='moe' (the embedding"),
    ({"train.num_samples": HUGE}, "train.num_samples"),
    ({"data.num_workers": HUGE}, "data.num_workers"),
])
def test_training_sizes_are_refused_before_the_data_is_read(tiny_corpus, tmp_path, capsys, extra, key):
    start = time.perf_counter()
    err = refused(lambda argv: run_cli(pretrain_main, argv), train_argv(tiny_corpus, tmp_path, **extra), capsys)
    assert key in err and time.perf_counter() - start < 10, err
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "cache").exists()  # nothing read, nothing written


def test_the_bound_is_this_machines_memory(tiny_sft_run, tiny_corpus, tmp_path, monkeypatch):
    """The same tiny run that loads and trains here is refused on a machine with 64 KiB free."""
    load_run(tiny_sft_run[0])
    monkeypatch.setattr(train.estimate.memory, "available_bytes", lambda device="cpu": 2**16)
    with pytest.raises(ConfigError, match="available") as err:
        load_run(tiny_sft_run[0])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="available"):
        pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path)))
    assert not (tmp_path / "tiny").exists()


def test_a_lora_rank_above_the_layer_is_refused(tiny_sft_run, tiny_corpus, tmp_path):
    base = tiny_sft_run[0]
    before = snapshot(base)
    values = tiny_finetune_values(tiny_corpus, tmp_path, base, {"eval_prompts": 0, "lora": {"r": HUGE}})
    with pytest.raises(ConfigError, match=f"finetune.lora.r={HUGE} exceeds") as err:
        finetune(finetune_config(None, values))
    assert "\n" not in str(err.value) and not (tmp_path / "tiny").exists() and snapshot(base) == before


def test_an_imported_config_json_with_huge_sizes_is_refused_before_its_weights(tiny_sft_run, tmp_path, capsys):
    pytest.importorskip("transformers")
    from train.interop.export_hf import export
    from train.interop.import_hf import main as import_main

    hf = export(tiny_sft_run[0], tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    for key, ours in (("vocab_size", "vocab_size"), ("num_hidden_layers", "n_layers")):
        (hf / "config.json").write_text(json.dumps({**config, key: HUGE}))
        err = refused(import_main, ["--model", hf, "--out", tmp_path / "runs" / "big"], capsys)
        assert f"model.{ours}={HUGE}" in err and "config.json" in err, err
    assert not (tmp_path / "runs").exists()


def test_generation_that_does_not_fit_is_refused_and_a_context_caps_it(tiny_sft_run, capsys, monkeypatch):
    run = tiny_sft_run[0]
    err = refused(generate_main, ["--run", run, "--max_new_tokens", HUGE, "--device", "cpu"], capsys)
    assert "--max_new_tokens=1000000000" in err and "decoding" in err
    err = refused(generate_main, ["--run", run, "--num_samples", HUGE, "--device", "cpu"], capsys)
    assert "--num_samples=1000000000" in err
    monkeypatch.setattr(RotaryPosition, "max_positions", 12)  # a model whose positions end at 12
    generate_main(["--run", str(run), "--prompt", "Once upon a time", "--max_new_tokens", "50",
                   "--temperature", "0", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert "note: --max_new_tokens=50 capped at" in err and "holds 12 tokens" in err
    _, tokenizer, _ = load_run(run)
    assert len(tokenizer.encode(out.strip()).ids) <= 12
    err = refused(generate_main, ["--run", run, "--prompt", "Once upon a time " * 4, "--device", "cpu"], capsys)
    assert "all of the model's context" in err


@pytest.mark.parametrize("extra, message", [
    ({"train.grad_accum": 10**6}, "train.grad_accum=1000000: must be at most"),
    ({"train.seed": -1}, "train.seed=-1: must be at least 0"),
    ({"train.seed": 2**32}, "train.seed=4294967296: must be at most 4294967295"),
    ({"train.name": "x" * 101}, "train.name: a run name of 101 characters"),
    ({"train.name": "a/b"}, "must be a plain folder name"),
])
def test_bounds_that_are_not_memory(tiny_corpus, tmp_path, capsys, extra, message):
    err = refused(lambda argv: run_cli(pretrain_main, argv), train_argv(tiny_corpus, tmp_path, **extra), capsys)
    assert message in err, err
    assert list(tmp_path.iterdir()) == []
