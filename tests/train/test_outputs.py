"""Where commands write: under runs/ (or beside the run they read) by default, never into tracked files or the
repository's root, and each command's last line says where its outputs are."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_train_overrides
from train_script import as_argv

from benchmarks.common import RESULTS
from benchmarks.seqlen import parse_args as seqlen_args
from benchmarks.throughput import parse_args as throughput_args
from train.__main__ import main as pretrain_main
from train.ablate.sweep import main as ablate_main
from train.cli import run_cli


def values(corpus: Path, out: Path, **extra) -> dict:
    return tiny_train_overrides(corpus, out, **{"train.max_steps": 2, "train.val_every": 2, "train.ckpt_every": 2,
                                                "train.num_samples": 0, **extra})


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "runs"
    run_cli(pretrain_main, as_argv(values(tiny_corpus, out)))
    return out / "tiny"


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_pretraining_ends_by_naming_its_run_folder(tiny_corpus, tmp_path, capsys):
    run_cli(pretrain_main, as_argv(values(tiny_corpus, tmp_path)))
    assert last_line(capsys.readouterr().out).startswith(f"run: {tmp_path / 'tiny'}  ")


def test_benchmarks_write_under_runs_by_default():
    assert RESULTS == Path("runs") / "benchmarks"
    assert Path(seqlen_args(["--device", "cpu"]).out) == RESULTS / "seqlen"
    assert Path(throughput_args(["--device", "cpu"]).out) == RESULTS / "throughput"
    assert Path(throughput_args(["--device", "cpu", "--loop"]).out) == RESULTS / "throughput_loop"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_export_without_out_writes_beside_the_run(run_dir, capsys):
    from train.interop.export_hf import main as export_hf

    export_hf(["--run", str(run_dir)])
    out = run_dir.parent / "tiny-hf"
    assert (out / "config.json").is_file() and last_line(capsys.readouterr().out).startswith(f"wrote {out} ")
    shutil.rmtree(out)


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs gguf")
def test_gguf_export_without_out_writes_beside_the_run(run_dir, capsys):
    from train.interop.export_gguf import main as export_gguf

    export_gguf(["--run", str(run_dir), "--dtype", "f32"])
    out = run_dir.parent / "tiny-f32.gguf"
    assert out.is_file() and last_line(capsys.readouterr().out).startswith(f"wrote {out} ")
    out.unlink()


def test_the_ablation_runner_ends_by_naming_its_results_folder(tiny_corpus, tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(values(tiny_corpus, tmp_path)))
    sweep = {"base": "base.yaml", "seeds": [0], "jobs": 1, "threads": 1, "variants": {"softmax": {}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    ablate_main(["--config", str(tmp_path / "sweep.yaml")])
    folder = tmp_path / "ablate-sweep"
    assert last_line(capsys.readouterr().out).startswith(f"results: {folder}/ ")
    assert (folder / "results.md").is_file()
