"""Alignment sweeps (align/ablate): one SFT run and its pairs prepared once, DPO-family and GRPO variants x seeds
trained and scored by reward and KL, the paired table with the right direction, reruns reusing runs, and a
missing SFT run refused before anything is written."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import tiny_finetune_values, tiny_train_overrides

from align.ablate.report import aggregate, reward_verdict
from align.ablate.sweep import main
from train.ablate.stats import paired

STEPS = {"train.max_steps": 2, "train.warmup_steps": 1, "train.val_every": 2, "train.val_batches": 1,
         "train.ckpt_every": 2, "train.num_samples": 0}


def write_files(tmp_path, corpus, **top) -> tuple:
    """pretrain.yaml, sft.yaml, dpo.yaml, grpo.yaml and the ablation file in tmp_path -> its path."""
    pre = tiny_train_overrides(corpus, tmp_path, **{"train.num_samples": 0})
    sft = tiny_finetune_values(corpus, tmp_path, tmp_path / "unused", {"eval_prompts": 0}, **STEPS)
    dpo = {**tiny_finetune_values(corpus, tmp_path, tmp_path / "unused", {}, **STEPS),
           "align": {"beta": 0.1, "loss_type": "sigmoid"}}
    grpo = {**tiny_finetune_values(corpus, tmp_path, tmp_path / "unused", {}, **STEPS),
            "align": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 8}}
    for name, values in (("pretrain", pre), ("sft", sft), ("dpo", dpo), ("grpo", grpo)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(values))
    sweep = {"base": "dpo.yaml", "pretrain": {"config": "pretrain.yaml"}, "sft": {"config": "sft.yaml"},
             "pairs": {"n": 40, "k": 2, "max_new_tokens": 8}, "seeds": [0, 1], "jobs": 2, "threads": 1,
             "eval": {"prompts": 4, "samples": 2, "max_new_tokens": 8},
             "stages": {"grpo": {"train.batch_size": 2}},
             "variants": {"dpo": {}, "ipo": {"align.loss_type": "ipo"}, "grpo": {"base": "grpo.yaml"}}, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_a_tiny_align_sweep_end_to_end_then_reused(tiny_corpus, tmp_path, capsys):
    path = write_files(tmp_path, tiny_corpus)
    main(["--config", str(path)])
    sweep_dir = tmp_path / "ablate-sweep"
    assert (sweep_dir / "sft" / "config.yaml").is_file() and (sweep_dir / "pairs.jsonl").is_file()
    with (sweep_dir / "results.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["dpo", "ipo", "grpo"] and rows["grpo"]["stage"] == "grpo"
    for name, row in rows.items():
        for key in ("reward_mean", "word_inclusion_mean", "kl_mean", "kl_per_token_mean"):
            assert math.isfinite(float(row[key])), (name, key)
        runs = [json.loads((sweep_dir / f"{name}-s{seed}" / "ablate.json").read_text()) for seed in (0, 1)]
        means = [r["scores"]["reward"] for r in runs]
        if name != "dpo":  # Δ = variant − reference, seed by seed
            ref = [json.loads((sweep_dir / f"dpo-s{s}" / "ablate.json").read_text())["scores"]["reward"]
                   for s in (0, 1)]
            diff = sum(m - r for m, r in zip(means, ref)) / 2
            assert float(row["reward_diff_mean"]) == pytest.approx(diff)
    table = (sweep_dir / "results.md").read_text()
    assert "| variant | stage | reward | Δ reward [95% CI]" in table and "word_inclusion" in table
    start = json.loads((sweep_dir / "start-scores.json").read_text())  # the SFT run, scored like every run
    assert f"| start (SFT) | - | {start['reward']:.4f} |" in table and start["prompts"] > 0
    info = (sweep_dir / "dpo-s0" / "ablate.json").stat().st_mtime_ns
    capsys.readouterr()
    main(["--config", str(path)])  # everything is reused: no run trains or is scored again
    assert "6 runs (6 finished before)" in capsys.readouterr().out
    assert (sweep_dir / "dpo-s0" / "ablate.json").stat().st_mtime_ns == info


def test_a_missing_sft_run_is_refused_before_anything_is_written(tiny_corpus, tmp_path, capsys):
    path = write_files(tmp_path, tiny_corpus, sft=str(tmp_path / "runs" / "lora"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python -m finetune --config" in err and "--train.name=lora" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_higher_reward_is_better():
    up = paired({0: 0.50, 1: 0.52, 2: 0.51}, {0: 0.60, 1: 0.61, 2: 0.63})
    assert up.mean > 0 and reward_verdict(up).endswith("better")
    assert reward_verdict(paired({0: 0.60, 1: 0.61, 2: 0.63}, {0: 0.50, 1: 0.52, 2: 0.51})).endswith("worse")
    assert reward_verdict(paired({0: 0.5, 1: 0.6}, {0: 0.6, 1: 0.5})) == "no detectable difference"
    scores = {"ref": {s: {"reward": r, "wall_s": 1.0} for s, r in enumerate([0.5, 0.52, 0.51])},
              "up": {s: {"reward": r, "wall_s": 2.0} for s, r in enumerate([0.6, 0.61, 0.63])}}
    rows = aggregate(scores, {"ref": "dpo", "up": "grpo"}, [])
    assert rows[0]["verdict"] == "reference" and rows[1]["verdict"].endswith("better")
    assert rows[1]["reward_diff_ci_low"] > 0


def test_the_pretraining_runner_names_the_alignment_one(tiny_corpus, tmp_path, capsys):
    from train.ablate.sweep import main as pretraining_sweep

    path = write_files(tmp_path, tiny_corpus)
    with pytest.raises(SystemExit) as exit_info:
        pretraining_sweep(["--config", str(path)])
    assert exit_info.value.code == 2
    assert f"run python -m align.ablate --config {path}" in capsys.readouterr().err


def test_the_shipped_align_sweep_validates_without_writing(tmp_path):
    from align.ablate.sweep import load

    shipped = str(Path(__file__).parents[2] / "configs" / "ablations" / "align.yaml")
    sweep, plans, checked, *_, sweep_dir = load(shipped, [f"--train.out_dir={tmp_path}"])
    stages = {name: stage for name, (stage, _) in checked.items()}
    assert len(sweep["seeds"]) >= 3 and next(iter(stages)) == "dpo" and set(stages.values()) == {"dpo", "grpo", "ppo"}
    assert checked["kto"][1].align.loss_type == "kto" and checked["gspo"][1].align.objective == "gspo"
    assert checked["drgrpo"][1].align.scale == "none" and checked["rloo"][1].align.baseline == "leave_one_out"
    assert not sweep_dir.exists()
