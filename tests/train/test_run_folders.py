"""What counts as a run folder (train/rundir/paths.py `is_run_dir`): outputs never land in one, but a folder that
merely holds a config.yaml (a project, a folder of configs) is not a run and may receive outputs."""

from __future__ import annotations

import pytest

from train.rundir.paths import FileKind, check_output, is_run_dir
from train.rundir.weights import CheckpointError

REPORT = FileKind("a report", lambda path: path.read_text().startswith("# report"))


@pytest.mark.parametrize("files, run", [
    ((), False),
    (("config.yaml",), False),  # a project folder with its own config
    (("config.yaml", "notes.md"), False),
    (("model.safetensors",), True),  # weights alone: an export or a run
    (("config.yaml", "tokenizer.json"), True),
    (("config.yaml", "metrics.csv"), True),
    (("config.yaml", "finished.json"), True),
    (("config.yaml", ".lock"), True),
])
def test_is_run_dir(tmp_path, files, run):
    for name in files:
        (tmp_path / name).write_text("x")
    assert is_run_dir(tmp_path) is run


def test_a_config_folder_takes_outputs_but_a_run_folder_does_not(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("model: {}\n")
    assert check_output(project / "report.md", REPORT) == project / "report.md"
    (project / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="run folder"):
        check_output(project / "report.md", REPORT)
    with pytest.raises(CheckpointError, match="run folder"):
        check_output(project / "sub" / "report.md", REPORT, force=True)


def test_save_config_replaces_a_planted_fifo_instead_of_blocking(tmp_path):
    """config.yaml is written atomically: a FIFO planted at its path is replaced (writing into it would block)."""
    import os
    import signal

    from train.config import Config, load_config, save_config

    path = tmp_path / "config.yaml"
    os.mkfifo(path)
    signal.alarm(10)  # a write through the FIFO would wait for a reader forever
    try:
        save_config(Config(), path)
    finally:
        signal.alarm(0)
    assert path.is_file() and load_config(str(path), []).model == Config().model
