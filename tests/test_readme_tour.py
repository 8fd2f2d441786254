"""The README's five-minute tour runs as printed, in a fresh clone, at toy sizes.

The commands are read from the README itself (every ```bash line of the tour that starts with `tinystack`), so a
tour step that stops working, or a README edit that breaks a command, fails here. Each command runs with the same
arguments through `python -m tinystack` in a `git clone` of the committed tree (no `../shared` beside it, no hub),
plus a few overrides that shrink the budget (TOY below); the clone's own files are imported, not this checkout's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TOY = {  # subcommand -> overrides appended to the README's command (budgets only, never what the step does)
    "pretrain": ["--train.max_steps=6", "--train.val_every=3", "--train.ckpt_every=3", "--train.val_batches=1",
                 "--train.batch_size=4"],
    "generate": ["--max_new_tokens", "12"],
    "ablate": ["--seeds=[0]", "--jobs=1", "--train.max_steps=2", "--train.val_every=2", "--train.val_batches=1",
               "--train.batch_size=4"],
    "finetune": ["--train.max_steps=2", "--train.val_every=2", "--train.val_batches=1", "--train.ckpt_every=2",
                 "--finetune.eval_prompts=2", "--finetune.eval_tokens=8"],
    "grpo": ["--train.max_steps=1", "--train.ckpt_every=1", "--align.prompts_per_step=1", "--align.group_size=2",
             "--align.max_new_tokens=8"],
    "dpo": ["--train.max_steps=1"],
    "export": [],
}


def tour_commands(readme: str) -> list[list[str]]:
    """The `tinystack ...` lines of the README's tour section, in order, as argument lists."""
    tour = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", tour, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("tinystack ")]


def test_the_tour_is_read_from_the_readme():
    commands = tour_commands((ROOT / "README.md").read_text())
    assert [c[1] for c in commands][:2] == ["pretrain", "generate"], "the tour starts by pretraining and sampling"
    assert {c[1] for c in commands} <= set(TOY), f"a tour step without toy sizes: {[c[1] for c in commands]}"


@pytest.mark.slow
def test_readme_tour_runs_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "tinystack"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TINYSTORIES_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TINYSTACK_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    for command in tour_commands((clone / "README.md").read_text()):
        argv = [sys.executable, "-m", "tinystack", *command[1:], *TOY[command[1]]]
        done = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (clone / "runs/demo/model.safetensors").is_file()
    assert (clone / "runs/demo-hf/config.json").is_file()
    assert not subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", ".",
                               ":!runs", ":!.cache"], cwd=clone, capture_output=True, text=True).stdout, \
        "the tour wrote outside runs/"
