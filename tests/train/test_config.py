"""Config contract: overrides, types, choices, and one-line errors with exit code 2 from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from train.config import ConfigError, load_config, parse_overrides

DEMO = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo.yaml"


def test_overrides_are_yaml_and_win():
    cfg = load_config(DEMO, ["--model.mixer=[mamba,softmax]", "--train.lr=3e-4", "--train.precision", "32"])
    assert cfg.model.mixer == ["mamba", "softmax"] and cfg.train.lr == 3e-4 and cfg.train.precision == "32"
    assert cfg.train.name == "demo"
    assert parse_overrides(["--a.b.c=1", "--a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("override, words", [
    ("--model.no_such_key=1", ["unknown config key 'model.no_such_key'", "d_model"]),
    ("--nosection.x=1", ["unknown config key 'nosection'"]),
    ("--model.mixer=nonsense", ["model.mixer", "softmax, linear, gau, mamba"]),
    ("--model.mixer=[mamba,nonsense]", ["invalid choice 'nonsense'"]),
    ("--model.ffn=big", ["swiglu", "moe", "none"]),
    ("--train.precision=fp8", ["bf16-mixed"]),
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
