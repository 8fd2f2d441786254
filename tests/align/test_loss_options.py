"""Each preference loss owns its options (`align.<loss>.*`); conflicting or moved options are refused when the
config is built: one line, exit 2, no run folder. KTO's unpaired rows: written by make_pairs --unpaired, read by
the DPO data module, refused for a paired loss before the run folder exists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_finetune_values
from untouched import refused

from align.dpo import PairDataModule, main, train_dpo
from align.losses import LOSSES
from align.make_pairs import load_pairs, save_pairs
from align.policy import align_config
from train.cli import run_cli
from train.config import ConfigError
from train.report import read_metrics
from train.rundir.load import load_run

PAIRS = [{"prompt": "Words: cat\nStory:\n", "chosen": f"A cat {i}.", "rejected": "No."} for i in range(8)]


def argv(tiny_corpus, tiny_sft_run, tmp_path, *extra):
    return [f"--finetune.base={tiny_sft_run[1]}", f"--train.out_dir={tmp_path}", "--train.name=refused",
            f"--data.path={tiny_corpus}", *extra]


@pytest.mark.parametrize("extra, says", [
    (["--align.loss_type=ipo", "--align.sigmoid.label_smoothing=0.1"], "align.sigmoid.label_smoothing=0.1 is an "
                                                                       "option of loss_type=sigmoid"),
    (["--align.loss_type=sigmoid", "--align.kto.undesirable_weight=2"], "loss_type=kto, not of loss_type=sigmoid"),
    (["--align.label_smoothing=0.1"], "align.label_smoothing is now align.sigmoid.label_smoothing"),
    (["--align.simpo_gamma=1"], "align.simpo_gamma is now align.simpo.gamma"),
    (["--align.sigmoid.label_smoothing=0.5"], "align.sigmoid.label_smoothing=0.5: must be below 0.5"),
    (["--align.kto.desirable_weight=0", "--align.loss_type=kto"], "align.kto.desirable_weight=0.0: must be above"),
    (["--align.baseline=leave_one_out"], "align.baseline=leave_one_out (RLOO) with scale=group"),
    (["--align.objective=ppo"], "align.objective: invalid choice 'ppo'; valid choices: clip, gspo, cispo"),
])
def test_conflicting_options_are_refused_in_one_line_before_the_run_folder(tiny_corpus, tiny_sft_run, tmp_path,
                                                                           capsys, extra, says):
    err = refused(lambda a: run_cli(main, a, load=align_config), argv(tiny_corpus, tiny_sft_run, tmp_path, *extra),
                  capsys)
    assert says in err and not (tmp_path / "refused").exists()


def test_a_loss_reads_its_own_section(tiny_sft_run):
    base = {"finetune": {"base": str(tiny_sft_run[1])}}
    cfg = align_config(None, {**base, "align": {"loss_type": "orpo", "orpo": {"ratio_weight": 0.25}}})
    assert LOSSES["orpo"].options(cfg.align).ratio_weight == 0.25
    cfg = align_config(None, {**base, "align": {"baseline": "leave_one_out", "scale": "none", "objective": "gspo"}})
    assert (cfg.align.baseline, cfg.align.objective) == ("leave_one_out", "gspo")
    with pytest.raises(ConfigError, match="align.orpo.ratio_weight"):  # a section's keys are checked like any other
        align_config(None, {**base, "align": {"loss_type": "orpo", "orpo": {"ratio_weight": "much"}}})


def test_unpaired_rows_round_trip(tmp_path):
    path = save_pairs(PAIRS[:2], tmp_path / "kto.jsonl", unpaired=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[:2] == [{"prompt": PAIRS[0]["prompt"], "completion": "A cat 0.", "label": True},
                        {"prompt": PAIRS[0]["prompt"], "completion": "No.", "label": False}]
    assert load_pairs(path) == rows
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "label": "yes"}) + "\n")
    with pytest.raises(Exception, match="row 0 lacks string fields prompt/completion and a true/false label"):
        load_pairs(tmp_path / "bad.jsonl")


def test_unpaired_batches_carry_their_labels(tiny_sft_run, tmp_path):
    _, tokenizer, _ = load_run(tiny_sft_run[1])
    rows = load_pairs(save_pairs(PAIRS, tmp_path / "kto.jsonl", unpaired=True))
    dm = PairDataModule(tokenizer, {"train": rows, "validation": rows[:4]}, 32, batch_size=4, grad_accum=1,
                        max_steps=2, seed=0, val_batches=1)
    inputs, targets, desirable = next(iter(dm.val_dataloader()))
    assert inputs.shape[0] == 4 and desirable.tolist() == [True, False, True, False]


def test_kto_trains_on_unpaired_rows_and_a_paired_loss_refuses_them(tiny_corpus, tiny_sft_run, tmp_path, capsys):
    path = save_pairs(PAIRS * 4, tmp_path / "kto.jsonl", unpaired=True)
    values = tiny_finetune_values(tiny_corpus, tmp_path, tiny_sft_run[1], {"method": "lora"},
                                  **{"train.name": "kto", "train.max_steps": 2, "train.val_every": 2,
                                     "align.pairs": str(path), "align.loss_type": "kto"})
    run_dir = train_dpo(align_config(None, values))
    rows = [r for r in read_metrics(run_dir) if r.get("train/loss")]
    assert rows and all(math.isfinite(float(r["train/loss"])) for r in rows) and "train/kl" in rows[0]
    err = refused(lambda a: run_cli(main, a, load=align_config),
                  argv(tiny_corpus, tiny_sft_run, tmp_path, f"--align.pairs={path}"), capsys)
    assert "align.loss_type=sigmoid needs pairs" in err and not (tmp_path / "refused").exists()


@pytest.mark.parametrize("name", ["dpo", "grpo", "orpo", "kto"])
def test_the_example_configs_build(tiny_sft_run, name):
    path = Path(__file__).parents[2] / "configs" / "align" / f"{name}.yaml"
    cfg = align_config(path, [f"--finetune.base={tiny_sft_run[1]}"])
    entry = LOSSES[cfg.align.loss_type]
    assert entry.section is None or entry.options(cfg.align) is not None
