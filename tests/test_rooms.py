"""The rooms of the code base import one way (GUIDE.md §1), read from the source: a wrong import fails here.

Three checks, all on the source text (ast), so a room that is absent or slow to import is checked too:
- each room imports only the rooms below it (RULES);
- no import cycle among the project's modules, counting every import statement (module level, inside functions,
  relative ones): a function-level import that only postpones a cycle is a cycle;
- the bottom rooms do not name a module above them in a string either (a dotted path that another room imports
  later is an import by another name).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ROOMS = ("inputs", "model", "data", "train", "finetune", "align", "benchmarks", "tinystack")
RULES = {  # room -> rooms it must not import
    "inputs": set(ROOMS) - {"inputs"},  # bottom: readers of user files, nothing from the project
    "model": set(ROOMS) - {"model", "inputs"},
    "data": set(ROOMS) - {"data", "inputs"},
    "train": {"finetune", "align", "benchmarks", "tinystack"},
    "finetune": {"align", "benchmarks", "tinystack"},
    "align": {"benchmarks", "tinystack"},
    "benchmarks": {"tinystack"},
    "tinystack": set(),  # top: the console script, may import anything
}
BOTTOM = ("inputs", "model", "data")  # rooms whose strings must not name a module above them


def module_files(root: Path, rooms) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the rooms under root (a package is its __init__.py)."""
    out = {}
    for room in rooms:
        for path in sorted((root / room).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Every name an import statement anywhere in the file imports, absolute (relative ones resolved): `import a.b`
    -> a.b; `from a import b` -> a.b (a submodule, or a name a's __init__ defines)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(root: Path, rooms) -> dict[str, set[str]]:
    """Module -> the project modules it needs executed: each imported name's module (its longest prefix that is a
    module), and the packages above that one whose __init__ runs first. A module's own packages are left out (they
    are being imported when it runs), but a package it imports by name is not: `from pkg import X` inside pkg/sub.py
    needs pkg's __init__ finished, a cycle when that __init__ imports pkg.sub."""
    modules = module_files(root, rooms)
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in imported_names(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                edges |= {target} | (ancestors(target) - ancestors(name))
        graph[name] = edges - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def dotted_paths(path: Path, rooms, modules) -> list[str]:
    """String literals in the file that name a module of one of `rooms`, or a name in it: a dotted path whose
    prefix is a submodule in `modules` (`"train.callbacks.expert_share.ExpertShare"`;
    a file name such as "train.txt" is not)."""
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, sorted(rooms)))})(?:\.\w+)+$")

    def names_module(text: str) -> bool:
        return bool(pattern.match(text)) and any(p in modules for p in [*ancestors(text), text] if "." in p)

    return sorted(node.value for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and names_module(node.value))


def present(rooms) -> list[str]:
    return [room for room in rooms if (ROOT / room).is_dir()]


def test_every_room_has_a_rule():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(RULES), f"a new room needs its line in RULES: {sorted(packages - set(RULES))}"


@pytest.mark.parametrize("room", present(RULES))
def test_dependencies_point_one_way(room):
    """GUIDE.md §1: each room imports only the rooms below it (function-level imports count too: they fail the
    same way when the room is absent)."""
    wrong = {}
    for name, path in module_files(ROOT, [room]).items():
        rooms = {target.split(".")[0] for target in imported_names(name, path)} & RULES[room]
        if rooms:
            wrong[str(path.relative_to(ROOT))] = sorted(rooms)
    assert wrong == {}


def test_no_import_cycles():
    assert import_cycles(import_graph(ROOT, present(RULES))) == []


@pytest.mark.parametrize("room", present(BOTTOM))
def test_bottom_rooms_name_no_module_above_them(room):
    """model/, data/ and inputs/ do not name a module of a room they must not import, not even as a string."""
    modules = module_files(ROOT, present(RULES))
    named = {str(path.relative_to(ROOT)): dotted_paths(path, RULES[room], modules)
             for path in module_files(ROOT, [room]).values()}
    assert {k: v for k, v in named.items() if v} == {}


FAKE_TREE = {  # a planted cycle of each kind, and a planted dotted path from the bottom room to the top one
    "low/__init__.py": "from low.registry import NAMES\n",
    "low/registry.py": "def names():\n    from low import NAMES  # needs low/__init__.py finished\n    return NAMES\n",
    "low/a.py": "from .b import B\nA = 1\n",
    "low/b.py": "B = 2\n\ndef later():\n    from low.a import A\n    return A\n",
    "low/fine.py": "from low.a import A\nfrom . import b\n",
    "low/named.py": "CALLBACK = 'high.stats.Share'\nNOTE = 'high.stats is imported by high'\nFILE = 'high.txt'\n",
    "high/__init__.py": "",
    "high/stats.py": "import low.fine\n",
}


def test_the_checks_find_planted_cycles_and_dotted_paths(tmp_path):
    for file, text in FAKE_TREE.items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(text)
    graph = import_graph(tmp_path, ["low", "high"])
    assert graph["high.stats"] == {"low", "low.fine"}
    assert graph["low.b"] == {"low.a"} and graph["low.a"] == {"low.b"}  # relative and function-level imports count
    assert import_cycles(graph) == [["low", "low.registry"], ["low.a", "low.b"]]
    modules = module_files(tmp_path, ["low", "high"])
    assert dotted_paths(tmp_path / "low" / "named.py", {"high"}, modules) == ["high.stats.Share"]
    assert dotted_paths(tmp_path / "low" / "named.py", {"low"}, modules) == []
