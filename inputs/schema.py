"""Structure checks for a value loaded from a user's file (a checkpoint, a JSON document): a mapping where a mapping
is expected and fields of the expected types, before any of them is used.

    values = require_mapping(loaded, path, "checkpoint", fix)
    step = require_field(values, "global_step", int, path, fix, minimum=0)
"""

from __future__ import annotations

from collections.abc import Mapping

from inputs.errors import InputError, clip


def _name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({Mapping: "a mapping", dict: "a mapping", int: "an integer", float: "a number", str: "text",
                        list: "a list", bool: "true/false"}.get(k, k.__name__) for k in kinds)


def require_mapping(value, where: object, what: str, fix: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} holds {type(value).__name__}, not a mapping", where, fix=fix)
    return value


def require_field(values: Mapping, key: str, kind, where: object, fix: str, *, required: bool = True,
                  minimum: float | None = None):
    """values[key], checked: present (unless not `required`: then None when absent), of `kind` (a type or a tuple;
    bool is never an int here), and at least `minimum`."""
    if key not in values:
        if required:
            raise InputError(f"no '{key}'", where, key, fix=fix)
        return None
    value = values[key]
    wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if wrong_bool or not isinstance(value, kind):
        raise InputError(f"'{key}' is {clip(repr(value), 60)}, not {_name(kind)}", where, key, fix=fix)
    if minimum is not None and not value >= minimum:
        raise InputError(f"'{key}' is {clip(repr(value), 60)}, below {minimum}", where, key, fix=fix)
    return value
