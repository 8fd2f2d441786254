"""The one YAML reader: config, sweep and stage files, a run directory's config.yaml, and command-line values.

PyYAML's SafeLoader (plain data only, never a Python object), made strict where it is lenient:

- a key twice in one mapping is refused, naming the key and both lines (SafeLoader keeps the last silently);
- nesting deeper than MAX_DEPTH levels is refused while composing, before Python's recursion limit is reached;
- anchors and aliases may not expand to more than MAX_VALUES values: the size of every node, counting each alias
  at its full size, is known once its children are composed, so a "billion laughs" document (nine aliases of
  nine aliases of ...) is refused after a few thousand steps in a few KiB, and a self-referencing alias is refused;
- a file must hold a mapping at the top (`read_yaml`); empty means {};
- strings may hold no NUL or lone surrogate (the escapes "\\0" and "\\ud800"), and a problem is reported in one
  clipped line (the document itself is never echoed).

Numbers are left to the schema: train/config.py's options refuse a NaN or infinite value where a range is declared.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from inputs.errors import InputError, clip
from inputs.files import CONFIG_BYTES, check_text, read_text
from inputs.tree import MAX_DEPTH, check_tree

MAX_VALUES = 20_000  # values (scalars, lists, mappings) a document may expand to; configs hold a few hundred
VALUE_CHARS = 64 << 10  # the longest value given on a command line
FIX_SYNTAX = "fix the YAML syntax there (`key: value`, a space after each colon)"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _line(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with bounded nesting and alias expansion, and no duplicate keys; `where` names the source."""

    def __init__(self, text: str, where: object):
        super().__init__(text)
        self.where, self.depth, self.sizes = where, 0, {}

    def refuse(self, problem: str, mark, fix: str) -> InputError:
        return InputError(f"{problem} ({_line(mark)})", self.where, fix=fix)

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.depth >= MAX_DEPTH:
            raise self.refuse(f"nested deeper than {MAX_DEPTH} levels", mark, "flatten the value")
        alias = self.check_event(yaml.AliasEvent)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if alias and id(node) not in self.sizes:  # its anchor is still being composed: the value contains itself
            raise self.refuse("an alias refers to the value it is part of", mark, "remove the alias")
        size = self.sizes[id(node)] if alias else 1 + sum(self.sizes[id(child)] for child in _children(node))
        if size > MAX_VALUES:
            raise self.refuse(f"anchors and aliases expand to more than {MAX_VALUES} values", mark,
                              "write the values out, or use fewer aliases")
        self.sizes[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: keys given next to it override the merged ones, as intended
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader refuses it itself
                if first is not None:
                    lines = f"line {line}" if first == line else f"lines {first} and {line}"
                    raise InputError(f"duplicate key {clip(repr(key), 80)} ({lines})", self.where,
                                     fix="keep one of them")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load(text: str, where: object):
    """Parse `text` with StrictLoader; YAML syntax errors propagate as yaml.YAMLError, limits as InputError."""
    loader = StrictLoader(text, where)
    try:
        value = loader.get_single_data()
    except (ValueError, OverflowError) as err:  # InputError, or a scalar YAML resolves but Python cannot hold
        if isinstance(err, InputError):
            raise
        raise InputError(f"a value that cannot be read ({clip(str(err).split(';')[0], 120)})", where,
                         fix="write a plainer value") from None
    finally:
        loader.dispose()
    return check_tree(value, where, finite=False)


def _syntax(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        return f"{err.problem or err.context} ({_line(mark)})"
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def parse_yaml(text: str, where: object):
    """Any YAML value from `text` (`where`: a file or a flag, for messages); InputError for anything wrong."""
    try:
        return _load(text, where)
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {clip(_syntax(err), 160)}", where, fix=FIX_SYNTAX) from None


def parse_value(raw: str, where: object):
    """A command-line value read as YAML (`3e-4`, `[mamba, softmax]`, `true`); text that is not YAML stays the
    string it is, as a shell user expects. The limits and the duplicate-key rule hold either way."""
    if len(raw) > VALUE_CHARS:
        raise InputError(f"a value of {len(raw)} characters", where, fix=f"give at most {VALUE_CHARS} characters")
    check_text(raw, where)
    try:
        return _load(raw, where)
    except yaml.YAMLError:
        return raw


def _kind(value) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__)


def read_yaml(path: str | Path, what: str = "config file", fix: str = "see configs/ for examples") -> dict:
    """A YAML file that holds a mapping of keys (empty: {}); InputError naming the file for anything else:
    missing (`fix` says where to look), not a regular file, too large, not UTF-8, invalid, or not a mapping."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", path, fix=fix)
    value = parse_yaml(read_text(path, CONFIG_BYTES, what), path)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{what} holds {_kind(value)}, not a mapping of keys", path,
                         fix="write `key: value` lines at the top level, as in configs/")
    return value
