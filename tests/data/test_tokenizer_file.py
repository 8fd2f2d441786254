"""A run's tokenizer.json is read through inputs/ (data/tokenizer.py `load_tokenizer`): a FIFO, a huge file or a
non-UTF-8 file is refused in one line without blocking, a valid file loads as before."""

from __future__ import annotations

import os
import signal

import pytest

from data.corpus import DataError
from data.tokenizer import load_tokenizer, train_tokenizer
from inputs.errors import InputError


@pytest.fixture
def tokenizer_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    train_tokenizer(["Once upon a time there was a cat."] * 20, vocab_size=300).save(str(path))
    return path


def test_a_valid_tokenizer_file_loads(tokenizer_file):
    assert load_tokenizer(tokenizer_file).encode("a cat").ids


@pytest.mark.parametrize("plant", ["fifo", "utf16", "not-json", "folder"])
def test_a_bad_tokenizer_file_is_one_line(tokenizer_file, plant):
    text = tokenizer_file.read_text()
    tokenizer_file.unlink()
    if plant == "fifo":
        os.mkfifo(tokenizer_file)
    elif plant == "utf16":
        tokenizer_file.write_bytes(text.encode("utf-16"))
    elif plant == "not-json":
        tokenizer_file.write_text(text[: len(text) // 2])
    else:
        tokenizer_file.mkdir()
    signal.alarm(10)  # opening a FIFO for reading would wait for a writer forever
    try:
        with pytest.raises((InputError, DataError)) as err:
            load_tokenizer(tokenizer_file)
    finally:
        signal.alarm(0)
    assert "\n" not in str(err.value) and "tokenizer" in str(err.value)
