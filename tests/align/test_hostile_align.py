"""Alignment commands refuse destructive outputs and non-numbers in one line (exit 2) before they compute anything:
make_pairs and align.evaluate never write into a run folder and --force replaces only their own kind of file;
DPO and GRPO never write into the SFT run they start from; --rewards weights must be finite numbers."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_finetune_values
from untouched import copy_run, refused, snapshot

from align.dpo import main as dpo_main
from align.evaluate import main as evaluate_main
from align.grpo import main as grpo_main
from align.make_pairs import main as pairs_main
from align.policy import align_config
from train.cli import run_cli
from train.config import ConfigError


@pytest.fixture
def sft(tiny_sft_run, tmp_path):
    """A copy of the LoRA SFT run (its adapter applies to the session's base run)."""
    return copy_run(tiny_sft_run[1], tmp_path / "sft")


@pytest.mark.parametrize("target", ["sft/config.yaml", "sft/pairs.jsonl", "sft/adapter/pairs.jsonl", "sft"])
def test_make_pairs_never_writes_into_a_run_folder(sft, tiny_sft_run, tmp_path, capsys, target):
    before = snapshot(sft, tiny_sft_run[0])
    refused(pairs_main, ["--run", tiny_sft_run[1], "--n", "5", "--out", tmp_path / target, "--force"], capsys)
    assert snapshot(sft, tiny_sft_run[0]) == before


def test_make_pairs_force_replaces_only_a_pairs_file(tiny_sft_run, tmp_path, capsys):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"todo": "keep me"}\n')
    args = ["--run", tiny_sft_run[1], "--n", "20"]
    assert "pass --force" in refused(pairs_main, [*args, "--out", notes], capsys)
    assert "is not a JSONL file of preference pairs" in refused(pairs_main, [*args, "--out", notes, "--force"],
                                                                capsys)
    assert notes.read_text() == '{"todo": "keep me"}\n'
    out = tmp_path / "pairs.jsonl"
    pairs_main([*map(str, args), "--out", str(out)])
    first = out.read_text()
    pairs_main([*map(str, args), "--seed", "1", "--out", str(out), "--force"])
    assert out.read_text() != first and set(json.loads(out.read_text().splitlines()[0])) == {
        "prompt", "chosen", "rejected"}


@pytest.mark.parametrize("rewards", ["{word_inclusion: .nan}", "{length: .inf}", "{length: {weight: .nan}}"])
def test_reward_weights_that_are_not_numbers_are_refused(tiny_sft_run, tmp_path, capsys, rewards):
    for main, args in ((pairs_main, ["--run", tiny_sft_run[1], "--out", tmp_path / "p.jsonl"]),
                       (evaluate_main, [f"sft={tiny_sft_run[1]}"])):
        assert "finite" in refused(main, [*args, "--rewards", rewards], capsys)
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("target", ["sft/config.yaml", "sft/rewards.md", "other.json"])
def test_align_evaluate_never_writes_into_a_run_folder_or_over_json(sft, tiny_sft_run, tmp_path, capsys, target):
    before = snapshot(sft, tiny_sft_run[0])
    refused(evaluate_main, [f"sft={tiny_sft_run[1]}", "--n", "2", "--out", tmp_path / target, "--force"], capsys)
    assert snapshot(sft, tiny_sft_run[0]) == before


def test_align_evaluate_force_replaces_only_its_own_tables(tiny_sft_run, tmp_path, capsys):
    (tmp_path / "rewards.md").write_text("# My notes\n")
    args = [f"sft={tiny_sft_run[1]}", "--n", "2", "--max_new_tokens", "2", "--out", tmp_path / "rewards.md"]
    assert "pass --force" in refused(evaluate_main, args, capsys)
    assert "is not a reward table" in refused(evaluate_main, [*args, "--force"], capsys)
    (tmp_path / "rewards.md").unlink()
    evaluate_main([str(a) for a in args])
    evaluate_main([*map(str, args), "--force"])
    assert (tmp_path / "rewards.md").read_text().startswith("# Rewards on held-out prompts")


@pytest.mark.parametrize("resume", ["auto", "true", "false"])
def test_dpo_never_writes_into_its_own_sft_run(sft, tiny_corpus, tiny_sft_run, tmp_path, capsys, resume):
    values = tiny_finetune_values(tiny_corpus, tmp_path, sft, {"method": "lora"},
                                  **{"train.name": "sft", "train.resume": resume, "train.max_steps": 2})
    with pytest.raises(ConfigError, match="is the SFT run"):
        align_config(None, values)
    before = snapshot(sft, tiny_sft_run[0])
    argv = [f"--finetune.base={sft}", f"--train.out_dir={tmp_path}", "--train.name=sft", f"--train.resume={resume}",
            f"--data.path={tiny_corpus}"]
    assert "is the SFT run" in refused(lambda a: run_cli(dpo_main, a, load=align_config), argv, capsys)
    assert snapshot(sft, tiny_sft_run[0]) == before


@pytest.mark.parametrize("main, key", [(grpo_main, "align.group_size"), (grpo_main, "align.max_new_tokens"),
                                       (dpo_main, "train.batch_size")])
def test_alignment_sizes_are_refused_before_the_sft_run_is_read(tiny_corpus, tiny_sft_run, tmp_path, capsys, main, key):
    before = snapshot(*tiny_sft_run)
    argv = [f"--finetune.base={tiny_sft_run[1]}", f"--train.out_dir={tmp_path}", "--train.name=big",
            f"--data.path={tiny_corpus}", f"--{key}={10**9}"]
    err = refused(lambda a: run_cli(main, a, load=align_config), argv, capsys)
    assert "available" in err and not (tmp_path / "big").exists() and snapshot(*tiny_sft_run) == before
