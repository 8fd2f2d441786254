"""benchmarks/ngram.py's --tiled mode: the tiled token files are the splits repeated, and bad flags are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.ngram import parse_args, tile  # noqa: E402


def test_tile_repeats_each_split_its_own_number_of_times(tmp_path):
    tokens = {"train": np.arange(7, dtype=np.uint16), "validation": np.array([3, 1, 2], dtype=np.uint16)}
    tiled = tile(tokens, {"train": 5, "validation": 2}, tmp_path)
    assert np.array_equal(tiled["train"], np.tile(tokens["train"], 5)) and tiled["train"].dtype == np.uint16
    assert np.array_equal(tiled["validation"], np.tile(tokens["validation"], 2))
    again = tile(tokens, {"train": 5, "validation": 2}, tmp_path)  # an existing file of the right size is reused
    assert np.array_equal(again["train"], tiled["train"])


def test_relabelled_copies_add_new_trigrams_and_keep_end_of_text(tmp_path):
    from data.ngram import count_trigrams

    story = np.array([0, 5, 6, 7, 5, 6, 8, 0, 9, 5, 6, 0], dtype=np.uint16)
    tokens = {"train": story, "validation": story[:4]}
    plain = tile(tokens, {"train": 4, "validation": 1}, tmp_path)["train"]
    relabelled = tile(tokens, {"train": 4, "validation": 1}, tmp_path, distinct=3, eot=0)["train"]
    n = len(story)
    assert np.array_equal(relabelled[:n], story) and np.array_equal(relabelled[3 * n:], story)  # copies 0 and 3
    for copy in (1, 2):  # relabelled: EOT where it was, the other ids a bijection of the original's
        part = relabelled[copy * n:(copy + 1) * n]
        assert np.array_equal(part == 0, story == 0) and len(set(zip(story, part))) == len(set(story))
    assert len(count_trigrams(relabelled, 16, 0)[0]) > 2 * len(count_trigrams(plain, 16, 0)[0]) - 2


@pytest.mark.parametrize("argv", [["--val_copies", "3"], ["--tiled", "--val_copies", "0"], ["--scales", "0"],
                                  ["--distinct_copies", "4"], ["--tiled", "--distinct_copies", "0"]])
def test_bad_flags_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
