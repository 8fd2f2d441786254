"""One test per kind of hostile input seen in the wild, each through an entry point in-process: refused in one
line with exit code 2 (or handled), never a traceback or a hang."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch
import yaml
from fuzzing import check_outcome, error_lines, run_entry
from test_readers import BOMB
from toy_inputs import entry, link_inputs, stop_before_training, toy_config


def refused(call) -> str:
    """The error line of `call(work)` (fuzzing.run_entry), which must be refused (fuzzing.check_outcome)."""
    code, stderr = run_entry(call)
    assert check_outcome(code, stderr) == "refused", stderr[-1500:]
    return error_lines(stderr)[-1]


@pytest.fixture
def toy(tiny_corpus, tiny_sft_run, monkeypatch):
    """(valid toy config, a function writing it with `changes` into the example's folder -> argv for python -m
    train); training stops before its first step."""
    base = tiny_sft_run[0]
    valid, _ = toy_config(base)
    stop_before_training(monkeypatch)

    def argv(work: Path, text: str | bytes | None = None, *overrides: str) -> list[str]:
        link_inputs(work, tiny_corpus, base)
        data = yaml.safe_dump(valid) if text is None else text
        (work / "c.yaml").write_bytes(data if isinstance(data, bytes) else data.encode())
        return ["--config", str(work / "c.yaml"), *overrides]

    return valid, argv


def run_train(argv: list[str]) -> None:
    entry("train")(argv)


@pytest.mark.parametrize("text, word", [("- model\n- train\n", "a list"), ("just a sentence\n", "a string")])
def test_a_config_that_is_a_list_or_a_string(toy, text, word):
    assert f"holds {word}, not a mapping of keys" in refused(lambda work: run_train(toy[1](work, text)))


def test_a_sweep_file_that_is_a_string():
    from train.ablate.sweep import main

    def call(work: Path) -> None:
        (work / "s.yaml").write_text("variants softmax linear\n")
        main(["--config", str(work / "s.yaml")])

    assert "ablation file holds a string, not a mapping of keys" in refused(call)


@pytest.mark.parametrize("stage", ["finetune", "align.dpo"])
def test_a_stage_file_that_is_a_list(stage):
    from align.dpo import main as dpo
    from align.policy import align_config
    from finetune.__main__ import main as finetune
    from finetune.config import finetune_config
    from train.cli import run_cli

    main, load = (finetune, finetune_config) if stage == "finetune" else (dpo, align_config)

    def call(work: Path) -> None:
        (work / "stage.yaml").write_text("[finetune, {base: runs/x}]\n")
        run_cli(main, ["--config", str(work / "stage.yaml")], load=load)

    assert "config file holds a list, not a mapping of keys" in refused(call)


def test_a_utf16_config(toy):
    line = refused(lambda work: run_train(toy[1](work, yaml.safe_dump(toy[0]).encode("utf-16"))))
    assert "c.yaml" in line and "UTF-16 text, not UTF-8" in line and "save it as UTF-8" in line


def test_a_latin1_byte_in_a_sweep_file():
    from train.ablate.sweep import main

    def call(work: Path) -> None:
        (work / "s.yaml").write_bytes(b"base: base.yaml\nname: caf\xe9\nseeds: [0]\n")
        main(["--config", str(work / "s.yaml")])

    line = refused(call)
    assert "s.yaml" in line and "byte 0xe9 at byte offset 25" in line and "save it as UTF-8" in line


def _checkpoint(tiny_sft_run, **changes) -> bytes:
    checkpoint = torch.load(tiny_sft_run[0] / "checkpoints" / "last.ckpt", weights_only=True)
    buffer = io.BytesIO()
    torch.save(changes.pop("whole", None) or {**checkpoint, **changes}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("changes, words", [
    ({"whole": [1, 2, 3]}, ["checkpoint holds list, not a mapping"]),
    ({"global_step": "8"}, ["'global_step' is '8', not an integer"]),
])
def test_a_checkpoint_that_loads_safely_but_is_not_one(toy, tiny_sft_run, changes, words):
    data = _checkpoint(tiny_sft_run, **changes)

    def call(work: Path) -> None:
        (work / "x.ckpt").write_bytes(data)
        run_train(toy[1](work, None, f"--train.resume={work / 'x.ckpt'}"))

    line = refused(call)
    assert all(w in line for w in words), line


def test_resume_auto_skips_a_checkpoint_whose_step_is_a_string(tiny_sft_run, tmp_path, capsys):
    from train.rundir.checkpoint import newest_checkpoint

    (tmp_path / "step=9.ckpt").write_bytes(_checkpoint(tiny_sft_run, global_step="9"))
    (tmp_path / "step=8.ckpt").write_bytes(_checkpoint(tiny_sft_run))
    assert newest_checkpoint(tmp_path) == tmp_path / "step=8.ckpt"
    assert "skipping unreadable checkpoint" in capsys.readouterr().out


def test_a_deeply_nested_yaml_value_and_override(toy):
    deep = "train:\n  betas: " + "[" * 5000 + "]" * 5000 + "\n"
    assert "nested deeper than 32 levels" in refused(lambda work: run_train(toy[1](work, deep)))
    assert "nested deeper than 32 levels" in refused(lambda work: run_train(toy[1](work, None, "--train.betas="
                                                                                + "[" * 5000 + "]" * 5000)))
    assert "nested deeper than 32 levels" in refused(lambda work: run_train(toy[1](work, None, "--train" + ".x" * 3000
                                                                                + "=1")))


def test_a_397_byte_alias_bomb(toy):
    line = refused(lambda work: run_train(toy[1](work, BOMB)))
    assert "expand to more than" in line and len(line) < 300


def test_duplicate_keys(toy):
    line = refused(lambda work: run_train(toy[1](work, "train:\n  lr: 0.001\n  lr: 0.1\n")))
    assert "duplicate key 'lr' (lines 2 and 3)" in line


def test_a_lone_surrogate_in_jsonl_data(toy):
    def call(work: Path) -> None:
        (work / "data").mkdir()
        (work / "data" / "train.jsonl").write_text('{"text": "Once upon a time."}\n{"text": "bad \\ud800"}\n')
        run_train(toy[1](work, None, f"--data.path={work / 'data'}", "--data.cache_dir=fresh"))

    line = refused(call)
    assert "train.jsonl:2: bad JSON line (a lone surrogate (U+D800)" in line


def test_a_lone_surrogate_in_a_prompt(tiny_sft_run):
    from train.generate.command import main

    line = refused(lambda work: main(["--run", str(tiny_sft_run[0]), "--prompt", "Once \udcff upon"]))
    assert "the byte 0xff, which is not UTF-8" in line and "--prompt" in line


@pytest.mark.parametrize("where", ["data", "checkpoint"])
def test_a_fifo_as_data_path_or_checkpoint_is_refused_without_hanging(toy, where):
    def call(work: Path) -> None:
        fifo = work / "special" / ("fifo.txt" if where == "data" else "fifo.ckpt")
        flag = f"--data.path={fifo}" if where == "data" else f"--train.resume={fifo}"
        run_train(toy[1](work, None, flag))

    assert "is a FIFO (named pipe), not a regular file" in refused(call)  # run_entry's deadline: no hang


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
@pytest.mark.parametrize("folder", ["out_dir", "cache_dir"])
def test_a_read_only_output_or_cache_folder(toy, monkeypatch, code, words, folder):
    """The file system refuses every folder made under `ro/` (root ignores permissions, so the refusal is made
    where the kernel would make it: os.mkdir)."""
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if "/ro/" in f"/{os.fspath(path)}":
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    line = refused(lambda work: run_train(toy[1](work, None, f"--{'train' if folder == 'out_dir' else 'data'}.{folder}="
                                                        "ro/sub")))
    assert words in line and "ro/sub" in line and "\n" not in line


def test_a_full_disk(toy, monkeypatch):
    import train.run

    def full(cfg, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train.run, "save_config", full)
    line = refused(lambda work: run_train(toy[1](work)))
    assert "no space left on device" in line and "config.yaml" in line


@pytest.mark.parametrize("flag", ["--config", "--train.out_dir"])
def test_a_name_too_long(toy, flag):
    long = "x" * 300

    def call(work: Path) -> None:
        argv = toy[1](work)
        run_train(["--config", long + ".yaml"] if flag == "--config" else [*argv, f"--train.out_dir={long}"])

    assert "file name too long" in refused(call)
