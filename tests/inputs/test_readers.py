"""The readers of inputs/ one rule at a time: regular files only (without blocking on a FIFO), bounded size, strict
UTF-8, strict YAML (duplicate keys, nesting, alias expansion, a mapping at the top), strict JSON (no NaN, bounded
nesting, no lone surrogates), typed structures, the environment's refusals in one line."""

from __future__ import annotations

import errno
import os
import time
import tracemalloc

import pytest

from inputs.environment import refusal
from inputs.errors import InputError, clip
from inputs.files import CONFIG_BYTES, read_text, regular_file
from inputs.json import json_lines, parse_json, read_json
from inputs.schema import require_field
from inputs.yaml import MAX_VALUES, parse_value, parse_yaml, read_yaml

BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and len(message) <= 1000
    return message


@pytest.mark.parametrize("kind, make", [
    ("a FIFO (named pipe)", os.mkfifo),
    ("a folder", os.mkdir),
    ("a character device", lambda path: os.symlink("/dev/zero", path)),
])
def test_only_regular_files_are_opened_and_a_fifo_never_blocks(tmp_path, kind, make):
    path = tmp_path / "config.yaml"
    make(path)
    start = time.perf_counter()
    assert f"is {kind}, not a regular file" in refused(read_text, path, CONFIG_BYTES, "config file")
    assert f"is {kind}" in refused(regular_file, path, "checkpoint")
    assert time.perf_counter() - start < 5


def test_size_is_bounded_before_reading(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * CONFIG_BYTES)
    assert "larger than 256 KiB" in refused(read_yaml, path)


@pytest.mark.parametrize("data, words", [
    ("a: 1\n".encode("utf-16"), ["UTF-16 text, not UTF-8", "save it as UTF-8"]),
    (b"a: caf\xe9\n", ["byte 0xe9 at byte offset 6", "save it as UTF-8"]),
    (b"a: 1\x00\n", ["NUL character"]),
])
def test_text_is_strict_utf8_and_names_the_byte(tmp_path, data, words):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    message = refused(read_yaml, path)
    assert str(path) in message and all(w in message for w in words), message


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert read_yaml(tmp_path / "c.yaml") == {"a": 1}


def test_duplicate_keys_are_refused_by_name_and_lines():
    assert "duplicate key 'lr' (lines 2 and 4)" in refused(parse_yaml, "train:\n  lr: 1\n  seed: 2\n  lr: 3\n", "f")
    assert "duplicate key 'a' (line 1)" in refused(parse_yaml, "{a: 1, a: 2}", "f")
    # keys next to a merge key override the merged ones: that is what merge keys are for
    assert parse_yaml("d: &d {a: 1, b: 2}\ne: {<<: *d, b: 3}\n", "f")["e"] == {"a": 1, "b": 3}


def test_nesting_is_bounded_before_the_recursion_limit():
    assert "nested deeper than 32 levels" in refused(parse_yaml, "a: " + "[" * 100_000, "f")
    assert parse_yaml("a: " + "[" * 31 + "]" * 31, "f")  # 32 levels with the mapping: fine
    assert "nested deeper than 32 levels" in refused(parse_value, "{a: " * 40 + "1" + "}" * 40, "--x")


def test_a_billion_laughs_is_refused_fast_in_bounded_memory_with_a_short_message():
    assert len(BOMB.encode()) < 400
    tracemalloc.start()
    start = time.perf_counter()
    message = refused(parse_yaml, BOMB, "bomb.yaml")
    elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"expand to more than {MAX_VALUES} values" in message and len(message) < 300
    assert elapsed < 1 and peak < 8 << 20, (elapsed, peak)
    assert parse_yaml("base: &b {lr: 1}\nx: *b\ny: *b\n", "f")["y"] == {"lr": 1}  # a few aliases: fine


def test_an_alias_inside_its_own_anchor_is_refused():
    assert "refers to the value it is part of" in refused(parse_yaml, "a: &x [1, *x]", "f")


@pytest.mark.parametrize("text, word", [("[1, 2]", "a list"), ("just text", "a string"), ("3", "a number")])
def test_a_file_must_hold_a_mapping(tmp_path, text, word):
    (tmp_path / "c.yaml").write_text(text)
    assert f"holds {word}, not a mapping of keys" in refused(read_yaml, tmp_path / "c.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert read_yaml(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize("text", ['a: "\\ud800"', 'a: "x\\0"', "{? \"\\udfff\" : 1}"])
def test_escapes_that_are_not_text_are_refused(text):
    assert "character" in refused(parse_yaml, text, "f")


def test_command_line_values_are_yaml_or_their_text():
    assert parse_value("[mamba, softmax]", "--m") == ["mamba", "softmax"]
    assert parse_value("[1", "--m") == "[1"  # not YAML: the text itself, as a shell user expects
    assert "byte 0xff, which is not UTF-8" in refused(parse_value, "a\udcffb", "--prompt")
    assert "characters" in refused(parse_value, "x" * 70_000, "--m")


@pytest.mark.parametrize("text, words", [
    ('{"a": NaN}', ["NaN is not a JSON number"]),
    ('{"a": 1e999}', ["inf is not a finite number", "a"]),
    ('{"a": "\\ud800"}', ["lone surrogate (U+D800)"]),
    ("[" * 100_000 + "]" * 100_000, ["nested deeper than 32 levels"]),
    ('{"a": 1', ["not valid JSON", "line 1, column 8"]),
])
def test_json_is_strict(text, words):
    message = refused(parse_json, text, "config.json")
    assert all(w in message for w in words), message


def test_json_files_and_lines(tmp_path):
    (tmp_path / "c.json").write_text("[1, 2]")
    assert "holds list, not an object" in refused(read_json, tmp_path / "c.json", "config.json")
    (tmp_path / "p.jsonl").write_bytes(b'{"a": 1}\n\n{"a": "\xff"}\n')
    with (tmp_path / "p.jsonl").open("rb") as f:
        lines = json_lines(f, tmp_path / "p.jsonl")
        assert [next(lines)[2], next(lines)[2]] == [{"a": 1}, None]  # a blank line reads as None
        with pytest.raises(InputError, match=r"byte 0xff at byte offset 17 \(.*p\.jsonl:3\)"):
            next(lines)


def test_fields_are_typed():
    assert require_field({"global_step": 4}, "global_step", int, "x.ckpt", "fix", minimum=0) == 4
    assert "'global_step' is '4', not an integer" in refused(require_field, {"global_step": "4"}, "global_step", int,
                                                             "x.ckpt", "fix")
    assert "not an integer" in refused(require_field, {"global_step": True}, "global_step", int, "x.ckpt", "fix")
    assert "below 0" in refused(require_field, {"global_step": -1}, "global_step", int, "x.ckpt", "fix", minimum=0)


@pytest.mark.parametrize("err, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/runs/x"), ["permission denied (/runs/x)"]),
    (OSError(errno.EROFS, "Read-only file system", "/runs"), ["read-only file system (/runs)", "--train.out_dir"]),
    (OSError(errno.ENOSPC, "No space left on device"), ["no space left on device", "free some space"]),
    (OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300), ["file name too long", "255 bytes"]),
    (FileNotFoundError("no adapter_config.json in runs/x"), ["no adapter_config.json in runs/x: check the path"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "runs"), ["is a folder (runs)"]),
    (UnicodeDecodeError("utf-8", b"a\xff", 1, 2, "invalid start byte"), ["byte 0xff at byte offset 1"]),
    (RecursionError("maximum recursion depth exceeded"), ["nested too deeply"]),
])
def test_the_environments_refusals_are_one_line(err, words):
    message = refusal(err)
    assert message is not None and "\n" not in message and len(message) <= 1000
    assert all(w in message for w in words), message


def test_other_errors_are_not_refusals():
    assert refusal(ConnectionError("hub unreachable")) is None
    assert refusal(OSError(errno.EIO, "I/O error")) is None
    assert refusal(ValueError("a bug")) is None


def test_messages_stay_one_short_line():
    assert clip("a\nb\x1ec\x1b[31m" + "x" * 500) == "a b c\\x1b[31m" + "x" * 224 + "..."
    assert str(InputError("what", "f.yaml", "train.lr", "fix it")) == "what (f.yaml, train.lr): fix it"
