"""No command writes into another run's folder whatever --force says, folders are never replaced, and --force
replaces only a file of the command's own kind (train/rundir/paths.py `check_output`): every refusal is one line,
exit 2, before anything is computed, and leaves every byte of every run folder as it was."""

from __future__ import annotations

import pytest
from untouched import copy_run, refused, snapshot

from finetune.evaluate import main as finetune_evaluate_main
from finetune.merge import main as merge_main
from train.rundir.paths import FileKind, check_output, starts_with
from train.rundir.weights import CheckpointError


@pytest.fixture
def runs(tiny_sft_run, tmp_path):
    """Two copies of the base run side by side: the one a command reads, and "other", which it must not touch."""
    base = copy_run(tiny_sft_run[0], tmp_path / "base")
    other = copy_run(tiny_sft_run[0], tmp_path / "other")
    return base, other


@pytest.mark.parametrize("target", ["other", "other/model.safetensors", "other/config.yaml", "other/new.gguf",
                                    "other/checkpoints/x.gguf", "base/x.gguf"])
def test_gguf_never_lands_in_a_run_folder(runs, tmp_path, capsys, target):
    pytest.importorskip("gguf")
    from train.interop.export_gguf import main as gguf_main

    before = snapshot(*runs)
    err = refused(gguf_main, ["--run", runs[0], "--out", tmp_path / target, "--force"], capsys)
    assert "run folder" in err or "input" in err or "is a folder" in err, err
    assert snapshot(*runs) == before


def test_gguf_force_replaces_only_a_gguf_file(runs, tmp_path, capsys):
    pytest.importorskip("gguf")
    from train.interop.export_gguf import main as gguf_main

    notes = tmp_path / "notes.gguf"
    notes.write_text("my notes")
    assert "not a GGUF file" in refused(gguf_main, ["--run", runs[0], "--out", notes, "--force"], capsys)
    assert notes.read_text() == "my notes"
    gguf_main(["--run", str(runs[0]), "--out", str(tmp_path / "m.gguf")])
    gguf_main(["--run", str(runs[0]), "--out", str(tmp_path / "m.gguf"), "--force"])
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("target", ["other", "other/hf", "base/hf", "busy"])
def test_hf_export_never_lands_in_a_run_folder_or_a_used_folder(runs, tmp_path, capsys, target):
    pytest.importorskip("transformers")
    from train.interop.export_hf import main as hf_main

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    refused(hf_main, ["--run", runs[0], "--out", tmp_path / target], capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["other", "other/merged", "busy"])
def test_merge_never_lands_in_a_run_folder(tiny_sft_run, runs, tmp_path, capsys, target):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "model.bin").write_text("mine")
    before = snapshot(tmp_path, tiny_sft_run[0], tiny_sft_run[1])
    refused(merge_main, ["--run", tiny_sft_run[1], "--out", tmp_path / target], capsys)
    assert snapshot(tmp_path, tiny_sft_run[0], tiny_sft_run[1]) == before


def test_finetune_evaluate_out_is_checked_before_loading(tiny_sft_run, runs, tmp_path, capsys):
    before = snapshot(*runs)
    assert "run folder" in refused(finetune_evaluate_main, ["--run", tiny_sft_run[1], "--out", runs[1]], capsys)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "eval.md").write_text("my table")
    args = ["--run", tiny_sft_run[1], "--n", "2", "--max_new_tokens", "2", "--out", tmp_path / "report"]
    assert "--force" in refused(finetune_evaluate_main, args, capsys)
    assert "is not an evaluation table" in refused(finetune_evaluate_main, [*args, "--force"], capsys)
    assert (tmp_path / "report" / "eval.md").read_text() == "my table" and snapshot(*runs) == before


@pytest.mark.parametrize("target", ["other/finished.json", "other/lm_eval.json", "base/lm_eval.json"])
def test_lm_eval_out_never_lands_in_a_run_folder(runs, tmp_path, capsys, target):
    pytest.importorskip("lm_eval")
    from train.evals.evaluate import main as lm_eval_main

    (runs[1] / "finished.json").write_text('{"step": 8}')
    before = snapshot(*runs)
    args = ["--run", runs[0], "--tasks", "tinystories_next", "--out", tmp_path / target, "--force"]
    err = refused(lm_eval_main, args, capsys)
    assert ("run folder" in err or "input" in err) and snapshot(*runs) == before


def test_check_output_rules(runs, tmp_path):
    """The helper itself: inputs, run folders (own excepted), folders never replaced, --force by kind."""
    kind = FileKind("a test file", starts_with(b"TEST"))
    (tmp_path / "mine.txt").write_text("TEST: mine")
    (tmp_path / "theirs.txt").write_text("theirs")
    assert check_output(tmp_path / "mine.txt", kind, force=True) == tmp_path / "mine.txt"
    assert check_output(runs[0] / "reference", None, own=runs[0]) == runs[0] / "reference"
    for out, kind_, force, inputs, message in [
        (tmp_path / "mine.txt", kind, False, (), "already exists"),
        (tmp_path / "theirs.txt", kind, True, (), "is not a test file"),
        (tmp_path / "x.txt", kind, True, (tmp_path,), "input"),
        (runs[1] / "x.txt", kind, True, (), "run folder"),
        (runs[1] / "sub" / "x", None, False, (), "run folder"),
        (tmp_path / "mine.txt" / "x.txt", kind, True, (), "is a file, not a folder"),
        (tmp_path, None, True, (), "not an empty folder"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            check_output(out, kind_, force, inputs)
