"""Hypothesis strategies that turn a valid input into a hostile one, the kinds a user's file takes in the wild:
types changed, keys deleted, added or repeated, nesting and alias expansion past any sane bound, NaN and infinity,
other encodings (UTF-16 with a BOM, a Latin-1 byte), escapes that are not text (NUL, a lone surrogate), truncation,
huge sizes, garbage bytes, Python tags, several documents.

    yaml_documents(valid)   -> (kind, bytes) of a YAML file
    json_lines(rows)        -> (kind, bytes) of a JSONL file
    override_args(valid)    -> (kind, [--key=value, ...]) of a command line
"""

from __future__ import annotations

import copy
import json
import math

import yaml
from hypothesis import strategies as st

HUGE = 300 << 10  # past inputs/files.py CONFIG_BYTES

HOSTILE_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 1e308, -1e-308, -0.0, math.nan,
                     math.inf, -math.inf, "", "0", "1e999", "0x1F", "~", "null", "2024-01-01", "a" * 5000,
                     [], {}, [[[]]], [1, "a", None], {"a": {"b": {"c": {}}}}, "${HOME}", "../../etc",
                     "\u202e\u0000\x7f", "x\ud800y"]),
    st.integers(), st.floats(), st.text(max_size=40), st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
TOP_VALUES = st.sampled_from([[], [1, 2], "a string", 42, 3.5, True, None, [{"model": {}}], "model: x"])


def leaf_paths(values, prefix=()) -> list[tuple]:
    """Every key path of a nested mapping (sections and their leaves)."""
    out = []
    for key, value in values.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += leaf_paths(value, (*prefix, key))
    return out


def _set(values: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(values)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()


def _dump(values) -> str:
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def billion_laughs(depth: int, width: int) -> str:
    lines = [f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    return "bomb:\n" + "\n".join(lines) + "\n"


@st.composite
def yaml_documents(draw, valid: dict, curated: dict | None = None) -> tuple[str, bytes]:
    """A YAML file made from `valid` by one mutation; a key path in `curated` (one naming a folder written or read)
    takes only its listed values, so no example writes or reads outside its own working directory."""
    curated = curated or {}
    kind = draw(st.sampled_from(["value", "delete", "unknown_key", "top", "duplicate", "alias_bomb", "self_alias",
                                 "deep", "encoding", "escape", "truncate", "huge", "garbage", "python_tag",
                                 "documents", "bom"]))
    text, paths = _dump(valid), leaf_paths(valid)
    path = draw(st.sampled_from(paths))
    if kind == "value":
        value = draw(st.sampled_from(curated[path]) if path in curated else HOSTILE_VALUES)
        return kind, _dump(_set(valid, path, value)).encode("utf-8", "surrogatepass")
    if kind == "delete":
        return kind, _dump(_set(valid, path, _DELETE)).encode()
    if kind == "unknown_key":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in valid))
        return kind, _dump({**valid, key: draw(HOSTILE_VALUES)}).encode("utf-8", "surrogatepass")
    if kind == "top":
        return kind, _dump(draw(TOP_VALUES)).encode()
    if kind == "duplicate":
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines) - 1))
        return kind, "".join(lines[: at + 1] + [lines[at]] + lines[at + 1:]).encode()
    if kind == "alias_bomb":
        return kind, (text + billion_laughs(draw(st.integers(2, 12)), draw(st.integers(2, 12)))).encode()
    if kind == "self_alias":
        return kind, (text + draw(st.sampled_from(["loop: &a [*a]\n", "loop: &a {x: *a}\n", "x: *nothing\n"]))
                      ).encode()
    if kind == "deep":
        depth = draw(st.integers(10, 5000))
        nested = draw(st.sampled_from(["[" * depth + "]" * depth, "{a: " * depth + "1" + "}" * depth]))
        return kind, (text + f"deep: {nested}\n").encode()
    if kind == "encoding":
        encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1-byte"]))
        if encoding == "latin-1-byte":
            at = draw(st.integers(0, len(text)))
            return kind, text[:at].encode() + bytes([draw(st.integers(0x80, 0xFF))]) + text[at:].encode()
        return kind, text.encode(encoding)
    if kind == "escape":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\0", "\\x00", "\\U0010FFFF", "\\x85", "\\e"]))
        return kind, _dump(_set(valid, path, "PLACEHOLDER")).replace("PLACEHOLDER", f'"a{escape}b"').encode()
    if kind == "truncate":
        data = text.encode()
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "huge":
        size = draw(st.sampled_from([HUGE, 2 * HUGE, 8 << 20]))
        filler = draw(st.sampled_from(["comment", "scalar"]))
        pad = f"# {'x' * size}\n" if filler == "comment" else f"pad: {'y' * size}\n"
        return kind, (text + pad).encode()
    if kind == "garbage":
        data = text.encode()
        at = draw(st.integers(0, len(data)))
        return kind, data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if kind == "python_tag":
        tag = draw(st.sampled_from(["!!python/object/apply:os.system ['touch pwned']",
                                    "!!python/name:os.system", "!!binary aGVsbG8=", "!!set {a, b}",
                                    "!!timestamp 2001-12-14", "!!omap [a: 1, b: 2]"]))
        return kind, _dump(_set(valid, path, "PLACEHOLDER")).replace("'PLACEHOLDER'", tag).replace(
            "PLACEHOLDER", tag).encode()
    if kind == "documents":
        return kind, (text + "---\n" + text).encode()
    return kind, b"\xef\xbb\xbf" + text.encode()  # "bom": a UTF-8 byte-order mark is valid


@st.composite
def json_lines(draw, rows: list[dict]) -> tuple[str, bytes]:
    """A JSONL file made from valid `rows` by one mutation of one line (or of the whole file), or unchanged."""
    kind = draw(st.sampled_from(["value", "row_type", "missing", "constant", "deep", "surrogate", "encoding",
                                 "truncate", "garbage", "huge_line", "blank", "number", "text", "unchanged"]))
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    at = draw(st.integers(0, len(lines) - 1))
    row = dict(rows[at])
    key = draw(st.sampled_from(sorted(row)))
    if kind == "value":
        row[key] = draw(HOSTILE_VALUES.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))))
        lines[at] = json.dumps(row, ensure_ascii=True)
    elif kind == "row_type":
        lines[at] = json.dumps(draw(st.sampled_from([[], [1], "text", 3, None, True])))
    elif kind == "missing":
        lines[at] = json.dumps({k: v for k, v in row.items() if k != key})
    elif kind == "constant":
        lines[at] = lines[at].replace(json.dumps(row[key]), draw(st.sampled_from(["NaN", "Infinity", "-Infinity",
                                                                                   "1e999", "-1e999"])), 1)
    elif kind == "deep":
        depth = draw(st.integers(10, 100_000))
        lines[at] = lines[at].replace(json.dumps(row[key]), "[" * depth + "]" * depth, 1)
    elif kind == "surrogate":
        lines[at] = lines[at].replace(json.dumps(row[key]), json.dumps(draw(st.sampled_from(
            ["\ud800", "a\udc80b", "\udfff", "x\u0000y"]))), 1)
    elif kind == "number":
        lines[at] = lines[at].replace(json.dumps(row[key]), "9" * draw(st.integers(10, 10_000)), 1)
    elif kind == "text":  # any text is a valid value
        row[key] = draw(st.text(max_size=60))
        lines[at] = json.dumps(row, ensure_ascii=draw(st.booleans()))
    elif kind == "blank":
        lines.insert(at, draw(st.sampled_from(["", "   ", "\t"])))
    text = "\n".join(lines) + "\n"
    if kind == "encoding":
        return kind, text.encode(draw(st.sampled_from(["utf-16", "utf-32", "latin-1"])), "replace")
    data = text.encode("utf-8", "surrogatepass")
    if kind == "truncate":
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "garbage":
        at = draw(st.integers(0, len(data)))
        return kind, data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if kind == "huge_line":
        return kind, data + b'{"prompt": "' + b"x" * (65 << 20) + b'"}\n'
    return kind, data


FLOW_VALUES = st.one_of(
    st.sampled_from(["[", "]", "{a: 1, a: 2}", "&a [*a]", "*undefined", "[" * 5000 + "]" * 5000, "{" * 100,
                     "{a: &a [x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b], "
                     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d]}",
                     ".nan", ".inf", "-.inf", "1e999", "9" * 5000, "\udcff\udcfe", "!!python/name:os.system",
                     "x" * 70_000, "a: b: c", "'unclosed", "\t", "null", "~", "[1, [2, [3]]]"]),
    st.text(max_size=30), st.integers().map(str), st.floats().map(str),
)


@st.composite
def override_args(draw, valid: dict, curated: dict | None = None) -> tuple[str, list[str]]:
    """Command-line overrides: a known key with a hostile value (a `curated` key: one of its listed values), an
    unknown or deeply dotted key, or a bad form."""
    curated = curated or {}
    kind = draw(st.sampled_from(["value", "key", "dotted", "form"]))
    paths = leaf_paths(valid)
    if kind == "value":
        path = draw(st.sampled_from(paths))
        value = draw(st.sampled_from(curated[path]).map(str) if path in curated else FLOW_VALUES)
        return kind, [f"--{'.'.join(path)}={value}"]
    if kind == "key":
        return kind, [f"--{draw(st.text(min_size=1, max_size=20).filter(lambda k: '=' not in k))}=1"]
    if kind == "dotted":
        return kind, ["--" + ".".join(["model"] * draw(st.integers(2, 3000))) + "=1"]
    return kind, draw(st.sampled_from([["--model.d_model"], ["positional"], ["--=1"], ["--model.=1"], ["--.x=1"],
                                       ["--model..d_model=1"], ["--train.lr", "--train.seed=1"]]))


@st.composite
def json_documents(draw, valid) -> tuple[str, bytes]:
    """A JSON file made from `valid` (an object) by one mutation."""
    kind = draw(st.sampled_from(["value", "delete", "top", "constant", "deep", "surrogate", "encoding", "truncate",
                                 "garbage", "number"]))
    text = json.dumps(valid)
    if kind in ("value", "delete", "constant", "deep", "surrogate", "number"):
        key = draw(st.sampled_from(sorted(valid)))
        if kind == "delete":
            return kind, json.dumps({k: v for k, v in valid.items() if k != key}).encode()
        if kind == "value":
            replacement = json.dumps(draw(HOSTILE_VALUES.filter(lambda v: not (isinstance(v, float)
                                                                                and not math.isfinite(v)))))
        elif kind == "constant":
            replacement = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        elif kind == "deep":
            depth = draw(st.integers(10, 100_000))
            replacement = "[" * depth + "]" * depth
        elif kind == "surrogate":
            replacement = json.dumps(draw(st.sampled_from(["\ud800", "a\udc80", "x\u0000"])))
        else:  # "number"
            replacement = "9" * draw(st.integers(10, 10_000))
        return kind, json.dumps({**valid, key: "PLACEHOLDER"}).replace('"PLACEHOLDER"', replacement).encode(
            "utf-8", "surrogatepass")
    if kind == "top":
        return kind, json.dumps(draw(st.sampled_from([[], [valid], "text", 3, None]))).encode()
    if kind == "encoding":
        return kind, text.encode(draw(st.sampled_from(["utf-16", "utf-32"])))
    data = text.encode()
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return kind, data[:at]
    return kind, data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


@st.composite
def safetensors_files(draw, valid: bytes) -> tuple[str, bytes]:
    """A safetensors file made from `valid` by one mutation of its header (length, dtype, shape, offsets, JSON) or
    of its bytes."""
    import struct

    kind = draw(st.sampled_from(["length", "dtype", "shape", "offsets", "header_json", "truncate", "garbage"]))
    (size,) = struct.unpack("<Q", valid[:8])
    header, body = json.loads(valid[8:8 + size]), valid[8 + size:]
    if kind in ("truncate", "garbage"):
        at = draw(st.integers(0, len(valid) - 1))
        tail = valid[at:] if kind == "garbage" else b""
        return kind, valid[:at] + (draw(st.binary(min_size=1, max_size=64)) if kind == "garbage" else b"") + tail
    if kind == "length":
        return kind, struct.pack("<Q", draw(st.sampled_from([0, 1, size - 1, size + 1, 2**40, 2**64 - 1]))) + \
            valid[8:]
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    if kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F64", "I8", "BOOL", "XX", "", 5]))
    elif kind == "shape":
        header[name]["shape"] = draw(st.sampled_from([[], [0], [-1], [2**40, 2**40], "x", [1] * 40]))
    elif kind == "offsets":
        header[name]["data_offsets"] = draw(st.sampled_from([[0, 2**50], [5, 1], [-1, 4], [0], "x"]))
    else:
        header = draw(st.sampled_from([[], "x", {name: header[name], name + "x": header[name]}, {}]))
    raw = json.dumps(header).encode()
    return kind, struct.pack("<Q", len(raw)) + raw + body
