"""A benchmark's --out is checked before it runs (benchmarks/common.py `check_out`): never into a run folder, an
existing file is replaced only if it is a benchmark's own result, and a rerun replaces its own result."""

from __future__ import annotations

import json

import pytest

from benchmarks.common import check_out


def test_a_new_place_and_a_previous_result_are_accepted(tmp_path):
    out = tmp_path / "bench" / "throughput"
    assert check_out(out) == out
    out.parent.mkdir()
    (tmp_path / "bench" / "throughput.json").write_text(json.dumps({"settings": {}, "results": []}))
    (tmp_path / "bench" / "throughput.md").write_text("| table |\n")
    assert check_out(out) == out


@pytest.mark.parametrize("plant", ["run-folder", "foreign-json", "foreign-md"])
def test_other_files_are_refused_in_one_line(tmp_path, capsys, plant):
    folder = tmp_path / "place"
    folder.mkdir()
    if plant == "run-folder":
        (folder / "config.yaml").write_text("model: {}\n")
        (folder / "model.safetensors").write_bytes(b"weights")
    elif plant == "foreign-json":
        (folder / "throughput.json").write_text(json.dumps({"model_type": "llama"}))
    else:
        (folder / "throughput.md").write_text("# my notes\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(SystemExit) as exit_:
        check_out(folder / "throughput")
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
