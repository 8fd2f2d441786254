"""Checks over a parsed YAML or JSON value, without recursion (a value may be nested as deep as its parser let it):
bounded nesting, every string (keys included) valid text, and, unless allowed, only finite numbers."""

from __future__ import annotations

import math

from inputs.errors import InputError
from inputs.files import check_text

MAX_DEPTH = 32  # levels of nested mappings and lists; configs use 3 or 4


def check_tree(value: object, where: object, *, finite: bool = True, max_depth: int = MAX_DEPTH) -> object:
    """`value`, refused (InputError) if deeper than `max_depth`, if a string holds a NUL or a lone surrogate, or,
    with `finite`, if a number is NaN or infinite. Shared containers (YAML aliases) are visited once."""
    stack, seen = [(value, 0, "")], set()
    while stack:
        node, depth, key = stack.pop()
        if isinstance(node, str):
            check_text(node, where, key or None)
        elif isinstance(node, float):
            if finite and not math.isfinite(node):
                raise InputError(f"{node} is not a finite number", where, key or None, fix="write a finite number")
        elif isinstance(node, (dict, list, tuple)):
            if depth >= max_depth:
                raise InputError(f"nested deeper than {max_depth} levels", where, key or None,
                                 fix="flatten the value")
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, dict):
                for k, v in node.items():
                    child = f"{key}.{k}" if key else str(k)
                    stack += [(k, depth + 1, key), (v, depth + 1, child)]
            else:
                stack += [(v, depth + 1, f"{key}[{i}]") for i, v in enumerate(node)]
    return value
