"""Numbers that are not numbers, and values that name what does not exist, are refused in one line before anything
runs: every float of every config section (found by walking the config tree, so a new field is covered by being
declared), weights read from a folder (floating point and finite), an adapter's lora_alpha, sweep learning rates
that would share a run, variants that share a name, and an end-of-text token the tokenizer lacks."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
import torch
import yaml
from conftest import tiny_finetune_values, tiny_train_overrides
from safetensors.torch import load_file, save_file
from untouched import copy_run, refused, snapshot

from align.config import AlignTree
from finetune.config import finetune_config
from finetune.merge import main as merge_main
from finetune.sft import finetune
from train.ablate.sweep import main as sweep_main
from train.config import ConfigError, load_config
from train.generate.command import main as generate_main
from train.run import pretrain
from train.rundir.weights import read_metadata


def float_keys(tree: type, prefix: str = "") -> list[str]:
    """Dotted keys of every float field (a float, or a list of floats) in the config dataclass `tree`."""
    keys = []
    for f in dataclasses.fields(tree):
        hint = typing.get_type_hints(tree)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += float_keys(hint, f"{prefix}{f.name}.")
        elif float in (hint, *typing.get_args(hint)):
            keys.append(f"{prefix}{f.name}")
    return keys


def nested(dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    tree = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


FLOATS = float_keys(AlignTree)


def test_the_walk_finds_the_floats_of_every_stage():
    assert {"train.lr", "train.betas", "model.rope_theta", "finetune.lora.alpha", "align.beta",
            "data.val_fraction"} <= set(FLOATS) and len(FLOATS) > 20


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_config_float_must_be_finite(key, bad):
    value = [bad, 0.95] if key == "train.betas" else bad
    with pytest.raises(ConfigError, match="must be a finite number") as err:
        load_config(None, nested(key, value), tree=AlignTree)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("rewards", [{"word_inclusion": math.nan}, {"length": {"weight": math.inf}}])
def test_reward_weights_must_be_finite(rewards):
    with pytest.raises(ConfigError, match="align.rewards"):
        load_config(None, {"align": {"rewards": rewards}}, tree=AlignTree)


def rewrite_weights(run, change) -> None:
    path = run / "model.safetensors"
    state, metadata = load_file(str(path)), read_metadata(path)
    save_file({k: change(k, v) for k, v in state.items()}, str(path), metadata=metadata)


@pytest.mark.parametrize("change, message", [
    (lambda k, v: v.to(torch.int8), "holds int8 values"),
    (lambda k, v: v.clone().fill_(math.nan) if k == "norm.weight" else v, "NaN or infinite"),
    (lambda k, v: v.clone().fill_(math.inf) if k.endswith("q_proj.weight") else v, "NaN or infinite"),
])
def test_weights_read_from_a_run_folder_are_floating_point_and_finite(tiny_sft_run, tmp_path, capsys, change, message):
    run = copy_run(tiny_sft_run[0], tmp_path / "run")
    rewrite_weights(run, change)
    before = snapshot(tiny_sft_run[0])
    err = refused(generate_main, ["--run", run, "--max_new_tokens", 2, "--device", "cpu"], capsys)
    assert message in err and "model.safetensors" in err, err
    assert snapshot(tiny_sft_run[0]) == before


@pytest.mark.parametrize("alpha, message", [(math.nan, "NaN"), ("nan", "alpha"), ("inf", "alpha")])
def test_an_adapter_with_a_nan_alpha_is_neither_loaded_nor_merged(tiny_sft_run, tmp_path, capsys, alpha, message):
    base, sft = tiny_sft_run
    run = copy_run(sft, tmp_path / "lora")
    config = run / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lora_alpha": alpha}))
    before = snapshot(base)
    assert message in refused(generate_main, ["--run", run, "--max_new_tokens", 2, "--device", "cpu"], capsys)
    assert message in refused(merge_main, ["--run", run, "--out", tmp_path / "merged"], capsys)
    assert not (tmp_path / "merged").exists() and snapshot(base) == before


def test_an_adapter_with_nan_weights_is_refused(tiny_sft_run, tmp_path, capsys):
    run = copy_run(tiny_sft_run[1], tmp_path / "lora")
    path = run / "adapter" / "adapter_model.safetensors"
    state = load_file(str(path))
    save_file({k: v.clone().fill_(math.nan) if "lora_B" in k else v for k, v in state.items()}, str(path))
    assert "NaN" in refused(generate_main, ["--run", run, "--max_new_tokens", 2, "--device", "cpu"], capsys)


def test_imported_weights_must_be_finite(tiny_sft_run, tmp_path, capsys):
    pytest.importorskip("transformers")
    from train.interop.export_hf import export
    from train.interop.import_hf import main as import_main

    hf = export(tiny_sft_run[0], tmp_path / "hf")
    state = load_file(str(hf / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    state[key] = state[key].clone().fill_(math.nan)
    save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    err = refused(import_main, ["--model", hf, "--out", tmp_path / "runs" / "imported"], capsys)
    assert key in err and "NaN" in err and not (tmp_path / "runs" / "imported").exists()


def sweep_file(tmp_path, body: str):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"train": {"out_dir": str(tmp_path / "runs")}}))
    (tmp_path / "sweep.yaml").write_text(f"base: {base}\nseeds: [0]\n{body}")
    return ["--config", tmp_path / "sweep.yaml"]


@pytest.mark.parametrize("body, extra, message", [
    ("lrs: [1.0e-3, 0.001]\nvariants: {a: {}}\n", [], "both name runs '-lr0.001-'"),
    ("lrs: [1e-3, 0.001]\nvariants: {a: {}}\n", [], "both name runs '-lr0.001-'"),  # YAML 1.1: 1e-3 is text
    ("lrs: [0.001, 0.0010000001]\nvariants: {a: {}}\n", [], "both name runs '-lr0.001-'"),
    ("variants: {a: {}}\n", ["--lrs=[1e-3,0.001]"], "both name runs '-lr0.001-'"),
    ("lrs: [.nan]\nvariants: {a: {}}\n", [], "lrs: expected a list of learning rates"),
    ("variants:\n  a: {}\n  a: {model.mixer: linear}\n", [], "duplicate key 'a'"),
    ("variants:\n  1: {}\n  '1': {model.mixer: linear}\n", [], "two variants are named '1'"),
    ("variants: {a: {}}\n", ["--seeds=[4294967296]"], "seeds: expected a list of integers in [0, 4294967295]"),
])
def test_a_sweep_whose_runs_would_collide_is_refused(tmp_path, capsys, body, extra, message):
    assert message in refused(sweep_main, [*sweep_file(tmp_path, body), *extra], capsys)
    assert not (tmp_path / "runs").exists()


def test_an_eos_token_the_tokenizer_lacks_is_refused_before_the_run_folder(tiny_sft_run, tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="data.eos_token='<|nope|>' is not a token of the tokenizer"):
        pretrain(load_config(None, tiny_train_overrides(tiny_corpus, tmp_path, **{"data.eos_token": "<|nope|>"})))
    assert not (tmp_path / "tiny").exists()
    base = tiny_sft_run[0]
    before = snapshot(base)
    values = tiny_finetune_values(tiny_corpus, tmp_path, base, {"eval_prompts": 0}, **{"data.eos_token": "<|nope|>"})
    with pytest.raises(ConfigError, match="data.eos_token"):
        finetune(finetune_config(None, values))
    assert not (tmp_path / "tiny").exists() and snapshot(base) == before
