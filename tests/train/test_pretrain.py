"""The pretraining pipeline end to end on a synthetic corpus: run directory contents, exact resume,
sampling from a run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import stop_at, tiny_train_overrides, train_losses

from train.config import ConfigError, load_config
from train.generate.command import main as generate_main
from train.run import pretrain


def run(corpus, out, callbacks=(), **extra) -> Path:
    return pretrain(load_config(None, tiny_train_overrides(corpus, out, **extra)), callbacks)


@pytest.fixture(scope="module")
def full_run(tiny_corpus, tmp_path_factory) -> Path:
    return run(tiny_corpus, tmp_path_factory.mktemp("full"))


def test_run_directory_is_self_contained(full_run, capsys):
    for name in ["config.yaml", "tokenizer.json", "model.safetensors", "metrics.csv", "loss.png", "samples.md"]:
        assert (full_run / name).is_file(), name
    assert (full_run / "checkpoints" / "last.ckpt").is_file()
    assert load_config(full_run / "config.yaml").model.vocab_size == 300
    generate_main(["--run", str(full_run), "--prompt", "Once upon a time", "--max_new_tokens", "10"])
    assert capsys.readouterr().out.startswith("Once upon a time")


def test_resume_gives_the_same_losses(tiny_corpus, full_run, tmp_path):
    first = run(tiny_corpus, tmp_path, callbacks=[stop_at(4)])
    assert sorted(train_losses(first)) == list(range(4))
    assert (first / "checkpoints" / "last.ckpt").is_file()
    resumed = run(tiny_corpus, tmp_path, **{"train.resume": True})
    assert resumed == first
    expected, got = train_losses(full_run), train_losses(resumed)
    assert sorted(got) == sorted(expected) == list(range(8))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step


def test_second_run_never_overwrites_the_first(tiny_corpus, full_run):
    weights = (full_run / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="is a finished run .*--train.name.*--train.resume=true"):
        run(tiny_corpus, full_run.parent, **{"train.max_steps": 1, "train.val_every": 1})
    assert (full_run / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in full_run.parent.iterdir()) == ["cache", "tiny"]  # no tiny-1 beside it
