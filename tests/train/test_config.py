"""Config contract: overrides, types, choices, and one-line errors with exit code 2 from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.config import ffn_names
from model.mixers import MIXERS
from train.config import ConfigError, load_config, parse_overrides
from train.optimizers import OPTIMIZERS
from train.schedules import SCHEDULES

DEMO = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo.yaml"


def test_overrides_are_yaml_and_win():
    cfg = load_config(DEMO, ["--model.mixer=[mamba,softmax]", "--train.lr=3e-4", "--train.precision", "32"])
    assert cfg.model.mixer == ["mamba", "softmax"] and cfg.train.lr == 3e-4 and cfg.train.precision == "32"
    assert cfg.train.name == "demo"
    assert parse_overrides(["--a.b.c=1", "--a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("override, words", [
    ("--model.no_such_key=1", ["unknown config key 'model.no_such_key'", "d_model"]),
    ("--nosection.x=1", ["unknown config key 'nosection'"]),
    ("--model.mixer=nonsense", ["model.mixer", ", ".join(MIXERS)]),  # every valid name
    ("--model.mixer=[mamba,nonsense]", ["invalid choice 'nonsense'"]),
    ("--model.ffn=big", ["model.ffn", ", ".join(ffn_names())]),
    ("--train.precision=no-such-precision", ["bf16-mixed"]),
    ("--train.max_steps=many", ["train.max_steps: expected int"]),
    ("--train.lr=[1]", ["train.lr: expected float"]),
    ("--model.d_model=100", ["model.d_model=100 must be divisible by n_heads"]),
    ("--train.lr", ["has no value"]),
])
def test_bad_config_names_the_problem(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    for word in words:
        assert word in str(err.value)


def cli(*args: str, module: str = "train") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                          cwd=DEMO.parents[2])


def test_cli_errors_exit_2_with_one_line(tmp_path):
    bad_ckpt = tmp_path / "bad.ckpt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    cases = [
        (["--config", str(DEMO), "--model.no_such_key=1"], "no_such_key"),
        (["--config", str(DEMO), "--model.mixer=nonsense"], "softmax"),
        (["--config", str(DEMO), f"--data.path={tmp_path / 'missing'}"], "data.path"),
        (["--config", str(DEMO), f"--data.path={tmp_path}"], "no .txt, .jsonl or .parquet"),
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
    ]
    for args, expected in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr[-500:])
        assert "Traceback" not in result.stderr and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override, words", [
    ("--model.n_heads=0", ["model.n_heads=0", "at least 1"]),
    ("--model.n_kv_heads=-2", ["model.n_kv_heads=-2", "at least 0"]),
    ("--model.d_model=0", ["model.d_model=0"]),
    ("--model.dropout=1.0", ["model.dropout=1.0", "below 1"]),
    ("--model.dropout=-0.1", ["model.dropout"]),
    ("--train.lr=.nan", ["train.lr=nan", "finite"]),
    ("--train.lr=-1e-3", ["train.lr=-0.001", "above 0"]),
    ("--train.lr=0", ["train.lr=0.0"]),
    ("--train.max_steps=-5", ["train.max_steps=-5"]),
    ("--train.max_steps=0", ["train.max_steps=0", "at least 1"]),
    ("--train.betas=[0.9]", ["train.betas", "two numbers"]),
    ("--train.betas=[0.9,1.5]", ["train.betas"]),
    ("--train.val_every=0", ["train.val_every=0"]),
    ("--train.ckpt_every=0", ["train.ckpt_every=0"]),
    ("--train.log_every=0", ["train.log_every=0"]),
    ("--train.devices=abc", ["train.devices='abc'", "auto"]),
    ("--train.devices=0", ["train.devices=0"]),
    ("--train.optimizer=no-such-optimizer", ["train.optimizer", ", ".join(OPTIMIZERS)]),
    ("--train.schedule=no-such-schedule", ["train.schedule", ", ".join(SCHEDULES)]),
    ("--data.val_fraction=1.0", ["data.val_fraction=1.0"]),
    ("--model.moe.top_k=5", ["model.moe.top_k=5", "num_experts"]),
    ("--model.linear.chunk_size=0", ["model.linear.chunk_size=0"]),
    ("--model.linear.feature_map=identity", ["model.linear.feature_map=identity", "normalize=false"]),
    ("--model.mamba.d_state=0", ["model.mamba.d_state=0"]),
    ("--model.mixer=[]", ["model.mixer", "empty"]),
    ("--finetune.lora.r=0", ["finetune.lora.r=0"]),
    ("--align.temperature=0", ["align.temperature=0.0", "above 0"]),
    ("--align.max_new_tokens=0", ["align.max_new_tokens=0"]),
])
def test_out_of_range_values_name_the_key(override, words):
    from align.config import AlignTree  # the stages' own sections (finetune.*, align.*) extend the tree

    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override], tree=AlignTree)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_range_error_exits_2_before_anything_is_written(tmp_path):
    result = cli("--config", str(DEMO), "--train.lr=-1", f"--train.out_dir={tmp_path / 'runs'}")
    assert result.returncode == 2 and result.stderr.startswith("error: train.lr=-1.0")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
