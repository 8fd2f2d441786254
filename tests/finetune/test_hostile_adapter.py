"""Run and adapter folders from someone else: every way they can be broken or mismatched is refused in one line
(exit 2) before memory is spent, none hangs, and every run directory the stack writes can be sampled from
(train/rundir/load.py, train/rundir/adapter.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_finetune_values, tiny_train_overrides
from untouched import copy_run

from data.tokenizer import train_tokenizer
from finetune.config import finetune_config
from finetune.sft import finetune
from model.transformer import Transformer
from train.config import ConfigError, load_config, save_config
from train.generate.command import main as generate_main
from train.run import pretrain
from train.rundir.weights import CheckpointError, save_weights

ROOT = Path(__file__).resolve().parents[2]


def generate_fails(run: Path, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        generate_main(["--run", str(run), "--max_new_tokens", "3", "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_generate_samples_from_a_lora_run_directory(tiny_sft_run, capsys):
    generate_main(["--run", str(tiny_sft_run[1]), "--max_new_tokens", "4", "--device", "cpu"])
    assert capsys.readouterr().out.strip()


def test_a_lora_alignment_run_carries_its_base_in_reference(tiny_sft_run, tmp_path, capsys):
    """LoRA DPO/GRPO runs: adapter/ plus reference/ (their base), and a finetune.base path from another machine."""
    base, sft = tiny_sft_run
    run = copy_run(sft, tmp_path / "dpo")
    copy_run(base, run / "reference")
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["finetune"]["base"] = "/elsewhere/runs/sft/reference"
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    generate_main(["--run", str(run), "--max_new_tokens", "4", "--device", "cpu"])
    assert capsys.readouterr().out.strip()


def test_a_lora_run_without_its_base_names_the_adapter(tiny_sft_run, tmp_path, capsys):
    run = copy_run(tiny_sft_run[1], tmp_path / "lonely")
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["finetune"]["base"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    assert "--adapter" in generate_fails(run, capsys) and "weights not found" not in capsys.readouterr().err


def test_catastrophic_regex_in_adapter_config_does_not_hang(tiny_sft_run, tmp_path):
    run = copy_run(tiny_sft_run[1], tmp_path / "regex")
    path = run / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["target_modules"] = "(.|.|.|.)*z"  # 4^len(name) steps for Python's backtracking re
    path.write_text(json.dumps(config))
    script = ("import sys; from train.generate.command import main; from finetune.merge import merge_run; "
              f"main(['--run', {str(run)!r}, '--max_new_tokens', '2', '--device', 'cpu']); "
              f"merge_run({str(run)!r}, {str(tmp_path / 'merged')!r})")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.perf_counter() - start < 120 and (tmp_path / "merged" / "model.safetensors").is_file()


def test_a_huge_config_is_refused_before_allocating(tiny_sft_run, tmp_path, capsys):
    run = copy_run(tiny_sft_run[0], tmp_path / "huge")
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["model"]["d_model"] = 65536  # ~17 GB of float32 weights if built before looking at the file
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    start = time.perf_counter()
    err = generate_fails(run, capsys)  # this machine's memory first (train/estimate/memory.py), else the file's shapes
    assert "has shape" in err or "model.d_model=65536" in err and "available" in err
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("damage", ["tokenizer", "no_r", "truncated_adapter", "truncated_weights", "garbage_weights",
                                    "adapter_json"])
def test_damaged_files_are_one_line_errors(tiny_sft_run, tmp_path, capsys, damage):
    base = copy_run(tiny_sft_run[0], tmp_path / "base")
    run = copy_run(tiny_sft_run[1], tmp_path / "lora")
    adapter = run / "adapter"
    if damage == "tokenizer":
        (base / "tokenizer.json").write_text('{"model": ')
    elif damage == "no_r":
        config = json.loads((adapter / "adapter_config.json").read_text())
        del config["r"]
        (adapter / "adapter_config.json").write_text(json.dumps(config))
    elif damage == "adapter_json":
        (adapter / "adapter_config.json").write_text("[1, 2")
    elif damage == "truncated_adapter":
        data = (adapter / "adapter_model.safetensors").read_bytes()
        (adapter / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "truncated_weights":
        data = (base / "model.safetensors").read_bytes()
        (base / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (base / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    generate_fails(base, capsys, "--adapter", str(adapter))


def fake_base(src: Path, dst: Path, **model) -> Path:
    """A run directory with `src`'s tokenizer and fresh random weights (optionally other model sizes)."""
    cfg = load_config(src / "config.yaml")
    for key, value in model.items():
        setattr(cfg.model, key, value)
    dst.mkdir()
    save_config(cfg, dst / "config.yaml")
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    save_weights(Transformer(cfg.model), dst / "model.safetensors", tied=cfg.model.tie_embeddings)
    return dst


@pytest.mark.parametrize("model, message", [({"d_model": 48}, "shape mismatch"), ({}, "trained on")])
def test_an_adapter_on_another_base_is_refused(tiny_sft_run, tmp_path, capsys, model, message):
    base, sft = tiny_sft_run
    other = fake_base(base, tmp_path / "other", **model)
    assert message in generate_fails(other, capsys, "--adapter", str(sft / "adapter"))


def test_another_runs_tokenizer_in_a_lora_run_is_refused(tiny_sft_run, tmp_path, capsys):
    run = copy_run(tiny_sft_run[1], tmp_path / "lora")
    stories = ["Once upon a time there was a cat.", "The dog ran to the park and played."] * 20
    train_tokenizer(stories, 120).save(str(run / "tokenizer.json"))
    assert "differs from its base" in generate_fails(run, capsys)


def test_another_runs_tokenizer_in_a_plain_run_is_refused(tiny_sft_run, tmp_path, capsys):
    """Same vocabulary size, other merges: only the tokenizer hash in the weights' metadata can tell."""
    run = copy_run(tiny_sft_run[0], tmp_path / "plain")
    stories = ["Once upon a time there was a cat.", "The dog ran to the park and played."] * 20
    train_tokenizer(stories, 120).save(str(run / "tokenizer.json"))
    assert "is not the tokenizer" in generate_fails(run, capsys)
    copy_run(tiny_sft_run[0], tmp_path / "ok")  # the run's own tokenizer still loads
    generate_main(["--run", str(tmp_path / "ok"), "--max_new_tokens", "4"])


def test_pretraining_never_resumes_a_lora_checkpoint(tiny_sft_run, tiny_corpus, tmp_path):
    ckpt = tiny_sft_run[1] / "checkpoints" / "last.ckpt"
    values = tiny_train_overrides(tiny_corpus, tmp_path, **{"train.resume": str(ckpt), "train.name": "p",
                                                              "train.num_samples": 0})
    with pytest.raises(CheckpointError, match="LoRA adapters"):
        pretrain(load_config(None, values))
    assert not (tmp_path / "p").exists()


def test_fine_tuning_into_its_own_base_folder_is_refused(tiny_sft_run, tiny_corpus, tmp_path):
    base = copy_run(tiny_sft_run[0], tmp_path / "base")
    before = (base / "config.yaml").read_bytes()
    values = tiny_finetune_values(tiny_corpus, tmp_path, base, {"eval_prompts": 0, "method": "full"},
                                  **{"train.name": "base", "train.resume": "auto", "train.num_samples": 0})
    with pytest.raises(ConfigError, match="is the base run"):
        finetune(finetune_config(None, values))
    assert (base / "config.yaml").read_bytes() == before
