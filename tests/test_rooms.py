"""The rooms of the code base import one way (GUIDE.md §1), read from the source: a wrong import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RULES = {  # room -> rooms it must not import
    "inputs": {"model", "data", "train", "finetune", "align", "benchmarks"},  # the input boundary: the bottom room
    "model": {"data", "train", "finetune", "align"},
    "data": {"model", "train", "finetune", "align"},
    "train": {"finetune", "align"},
    "finetune": {"align"},
}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            rooms |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            rooms.add(node.module.split(".")[0])
    return rooms


@pytest.mark.parametrize("room", sorted(RULES))
def test_dependencies_point_one_way(room):
    """GUIDE.md §1: model/ and data/ import no other room; train/ neither finetune/ nor align/; finetune/ not align/
    (function-level imports count too: they fail the same way when the room is absent)."""
    wrong = {str(p.relative_to(ROOT)): sorted(imported_rooms(p) & RULES[room]) for p in (ROOT / room).rglob("*.py")}
    assert {k: v for k, v in wrong.items() if v} == {}
