"""Config fields that carry their valid values, checked when the config object is built.

    feature_map: str = option("elu", choices=("elu", "relu", "identity"))  # the field, its values, its "why"
    lr: float = option(1e-3, min=0.0)

`Options` is the base of every config dataclass: after construction it checks each field's `choices` (a tuple,
or a function returning a registry's current names) and its range (`min` / `max` inclusive, `above` / `below`
exclusive), then the class's own cross-field `check()`. Every float a field holds, also inside a list or a mapping
(`train.betas`, `align.rewards`), must be finite: a NaN or an infinity is refused whatever the field, since no range
or formula downstream catches it (NaN fails every comparison). A problem raises ValueError starting with the field
name; `train/config.py` prefixes the dotted section (`model.linear.`) and prints it as one line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar


def option(default=dataclasses.MISSING, *, choices=None, min=None, above=None, max=None, below=None, factory=None,
           runtime: bool = False):
    """A config field with its valid values. `runtime=True`: how the model runs, not what it is (a kernel backend,
    activation checkpointing): a checkpoint resumes under another value (`identity` leaves it out)."""
    meta = {k: v for k, v in dict(choices=choices, min=min, above=above, max=max, below=below).items()
            if v is not None}
    if runtime:
        meta["runtime"] = True
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_finite(name: str, value, _path: tuple = ()) -> None:
    """ValueError naming the first NaN or infinite float in `value` (a number, or lists and mappings of them; a
    container that holds itself, which YAML anchors can build, is refused too)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    if items and id(value) in _path:
        raise ValueError(f"{name}: a value that contains itself")
    for key, item in items:
        check_finite(f"{name}.{key}" if isinstance(value, dict) else f"{name}[{key}]", item, (*_path, id(value)))


def check_field(name: str, value, meta) -> None:
    check_finite(name, value)
    choices = meta.get("choices")
    if choices is not None:
        valid = list(choices() if callable(choices) else choices)
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            raise ValueError(f"{name}: an empty list; give at least one of {', '.join(map(str, valid))}")
        for item in items:
            if item not in valid:
                raise ValueError(f"{name}: invalid choice {item!r}; valid choices: {', '.join(map(str, valid))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if "min" in meta and value < meta["min"]:
        raise ValueError(f"{name}={value!r}: must be at least {meta['min']}")
    if "above" in meta and value <= meta["above"]:
        raise ValueError(f"{name}={value!r}: must be above {meta['above']}")
    if "max" in meta and value > meta["max"]:
        raise ValueError(f"{name}={value!r}: must be at most {meta['max']}")
    if "below" in meta and value >= meta["below"]:
        raise ValueError(f"{name}={value!r}: must be below {meta['below']}")


class Options:
    """Base of config dataclasses: validates every field's metadata, then `check()` (cross-field rules)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name), f.metadata)
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ValueError naming the fields and the fix."""


def compose(base: type, registries: list[dict], name: str, module: str) -> type:
    """`base` plus a field `<entry name>: Section` for every registered entry that declares a `section`, so a
    component's options live in its own file and appear in the config tree under its registry name. A section
    type belongs to one entry: the entry finds its options by their type (`section_name`)."""
    sections = {}
    for registry in registries:
        for entry, cls in registry.items():
            if getattr(cls, "section", None) is not None:
                if entry in sections or entry in base.__dataclass_fields__:
                    raise TypeError(f"config section {entry!r} is declared twice")
                owner = next((other for other, section in sections.items() if section is cls.section), None)
                if owner is not None:
                    raise TypeError(f"config section {cls.section.__name__} is declared by {owner!r} and {entry!r}")
                sections[entry] = cls.section
    fields = [(entry, section, dataclasses.field(default_factory=section)) for entry, section in sections.items()]
    composed = dataclasses.make_dataclass(name, fields, bases=(base,))
    composed.__module__, composed.__doc__ = module, f"{base.__doc__ or name}; plus the registered sections."
    return composed


def section_name(cfg, section: type) -> str:
    """The field of config `cfg` that holds the `section` dataclass, found by its type, so an entry reads its options
    under whatever name its registry gives it (`compose` keeps each section type under one name). LookupError when
    cfg has no such section."""
    names = [field for field, value in vars(cfg).items() if type(value) is section]
    if not names:
        raise LookupError(f"this config has no {section.__name__} section (registered after the config was composed?)")
    return names[0]


class Sectioned:
    """A registry entry that may declare its own config section (`compose` nests it under the entry's name)."""

    section: ClassVar[type | None] = None  # its options dataclass, or None

    @classmethod
    def options(cls, cfg):
        """Its options in config `cfg` (the model config for a component, train.* for an optimizer or schedule),
        found by the section's type (`section_name`), never by the name it is registered under."""
        return getattr(cfg, section_name(cfg, cls.section))


def identity(opts, prefix: str = "") -> dict[str, tuple]:
    """dotted field -> (value, default) of every field that defines the model (nested sections recursed, runtime
    fields left out): what a checkpoint must match to resume. A field without a default gets the value itself."""
    out = {}
    for f in dataclasses.fields(opts):
        if f.metadata.get("runtime"):
            continue
        value = getattr(opts, f.name)
        if dataclasses.is_dataclass(value):
            out.update(identity(value, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else value)
        out[f"{prefix}{f.name}"] = (value, default)
    return out
