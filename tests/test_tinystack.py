"""The `tinystack` command: every subcommand names an importable entry point and shows its own help, an unknown
command is one line and exit code 2, and importing the package loads nothing of the stack."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinystack.commands import COMMANDS, VARIANTS, resolve

ROOT = Path(__file__).resolve().parents[1]


def tinystack(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tinystack", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_every_command_runs_a_module_with_an_entry_point():
    modules = [module for module, _ in COMMANDS.values()]
    modules += [module for variants in VARIANTS.values() for module in variants.values()]
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations is not None:  # a package: `python -m` runs its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module
        else:
            assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(), module


def test_a_variant_flag_picks_its_module_and_is_removed():
    assert resolve("export", ["--run", "runs/a", "--out", "x"]) == ("train.interop.export_hf",
                                                                   ["--run", "runs/a", "--out", "x"])
    assert resolve("export", ["--gguf", "--run", "runs/a"]) == ("train.interop.export_gguf", ["--run", "runs/a"])


def test_importing_tinystack_loads_nothing_of_the_stack():
    code = "import sys, tinystack.__main__; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('torch', 'lightning', 'train', 'model', 'data', 'finetune', 'align')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command_and_an_unknown_one_exits_2():
    listing, unknown = tinystack("--help"), tinystack("pretrian")
    out, _ = listing.communicate(timeout=60)
    assert listing.returncode == 0 and all(f"\n  {name} " in out for name in COMMANDS)
    out, err = unknown.communicate(timeout=60)
    assert unknown.returncode == 2 and out == "" and err.count("\n") == 1 and "'pretrian'" in err


@pytest.mark.slow
def test_every_command_shows_its_own_help():
    commands = [[name, "--help"] for name in COMMANDS] + [["export", "--gguf", "--help"]]
    procs = [(args, tinystack(*args)) for args in commands]  # at once: each pays its own imports
    helps = {}
    for args, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (args, err[-2000:])
        helps[" ".join(args)] = out
    assert "--gguf" not in helps["export --help"] and "--dtype" in helps["export --gguf --help"]
    assert "--config" in helps["pretrain --help"] and "--tasks" in helps["evaluate --help"]
    assert len(set(helps.values())) == len(helps)  # each its own
