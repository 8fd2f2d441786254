"""Seed bands and `python -m train.check`: the recorder builds a band from 3 tiny seed runs (two trained here, one
by the recorder's own process), a run reproducing a seed is inside it, broken runs are worse or diverged, the
nearest band names the keys that differ, no band and bad band files are said in one line, and the live callback
warns once per metric."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from conftest import tiny_train_overrides

from train.check.__main__ import main as check_main
from train.check.bands import differing, read_band, recipe_keys, run_tokenizer
from train.check.draw import main as draw_main
from train.check.live import BandWatch
from train.check.record import main as record_main
from train.check.record import stage_module
from train.check.verdict import judge
from train.config import load_config
from train.run import pretrain

RECIPE = {"train.max_steps": 20, "train.log_every": 2, "train.val_every": 10, "train.ckpt_every": 10,
          "train.num_samples": 0, "train.warmup_steps": 4, "train.lr": 1e-2}


def tiny_run(corpus: Path, out: Path, name: str, callbacks=(), **extra) -> Path:
    values = tiny_train_overrides(corpus, out, **{**RECIPE, "train.name": name, **extra})
    return pretrain(load_config(None, values), callbacks)


@pytest.fixture(scope="module")
def recorded(tiny_corpus, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(config file, band folder, runs folder): seeds 0 and 1 trained in this process, seed 2 by the recorder."""
    root = tmp_path_factory.mktemp("bands")
    values = tiny_train_overrides(tiny_corpus, root / "runs", **RECIPE)
    del values["train"]["name"]
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(values))
    for seed in (0, 1):
        tiny_run(tiny_corpus, root / "runs", f"bands-tiny-s{seed}", **{"train.seed": seed})
    (root / "bands").mkdir()
    record_main(["--config", str(config), "--seeds", "0", "1", "2", "--out", str(root / "bands" / "tiny.json"),
                 "--out_dir", str(root / "runs")])
    return config, root / "bands", root / "runs"


def check(capsys, run: Path, *args: str) -> str:
    check_main(["--run", str(run), *args])
    return capsys.readouterr().out


def test_the_recorder_writes_a_band_of_every_seed(recorded):
    _, bands, runs = recorded
    band = read_band(bands / "tiny.json")
    assert band["status"] == "measured" and band["seeds"] == [0, 1, 2]
    assert band["keys"]["stage"] == "pretrain" and band["keys"]["train.lr"] == 1e-2
    assert (runs / "bands-tiny-s2" / "finished.json").is_file()
    loss = band["metrics"]["train/loss"]
    assert loss["step"] == list(range(1, 20, 2)) and "val/loss" in band["metrics"]
    assert all(lo <= a <= m <= b <= hi for lo, a, m, b, hi in zip(loss["lo"], loss["min"], loss["mean"],
                                                                     loss["max"], loss["hi"]))
    assert not any(name.startswith(("perf/", "baseline/")) for name in band["metrics"])


def test_a_run_reproducing_a_seed_is_inside(recorded, tiny_corpus, tmp_path, capsys):
    run = tiny_run(tiny_corpus, tmp_path, "again", **{"train.seed": 1})
    capsys.readouterr()
    out = check(capsys, run, "--bands", str(recorded[1]))
    assert "matches this run exactly" in out
    assert out.count("inside the band") == out.count("\n  ") >= 2
    assert (run / "check.png").read_bytes().startswith(b"\x89PNG")


def test_a_broken_run_is_worse_and_the_live_callback_warns_once(recorded, tiny_corpus, tmp_path, capsys):
    watch = BandWatch(asdict(load_config(recorded[0])), recorded[1])  # same recipe keys: init_std is none of them
    run = tiny_run(tiny_corpus, tmp_path, "broken", [watch], **{"model.init_std": 3.0, "train.seed": 0})
    warnings = [line for line in capsys.readouterr().err.splitlines() if "left its band" in line]
    assert len(warnings) == len({line.split()[1] for line in warnings}) >= 1
    assert {line.split()[1] for line in warnings} >= {"train/loss", "val/loss"}
    out = check(capsys, run, "--bands", str(recorded[1]))
    loss = next(line for line in out.splitlines() if line.strip().startswith("train/loss"))
    assert "worse from step" in loss or "diverged" in loss


def test_a_huge_lr_gets_the_nearest_band_with_its_differing_keys(recorded, tiny_corpus, tmp_path, capsys):
    run = tiny_run(tiny_corpus, tmp_path, "hot", **{"train.lr": 5.0, "train.max_steps": 16})
    capsys.readouterr()
    out = check(capsys, run, "--bands", str(recorded[1]))
    assert "nearest is" in out and "train.lr (run 5.0, band 0.01)" in out and "train.max_steps (run 16" in out
    loss = next(line for line in out.splitlines() if line.strip().startswith("train/loss"))
    assert "worse from step" in loss or "diverged" in loss


def test_another_tokenizer_is_no_exact_match_and_its_nats_per_token_are_not_judged(recorded, tiny_corpus, tmp_path,
                                                                                   capsys):
    """The same config with a BPE learned from 10 stories: another tokenizer, so the band's keys differ in it and
    train/loss, val/loss (nats per token) are marked not comparable; val/bpb is judged as usual."""
    run = tiny_run(tiny_corpus, tmp_path, "retok", **{"train.seed": 1, "data.tokenizer_sample": 10})
    capsys.readouterr()
    band = read_band(recorded[1] / "tiny.json")
    assert band["keys"]["tokenizer"] == run_tokenizer(recorded[2] / "bands-tiny-s0") != run_tokenizer(run)
    out = check(capsys, run, "--bands", str(recorded[1]))
    assert "nearest is" in out and f"tokenizer (run {run_tokenizer(run)}, band" in out
    assert "another tokenizer than the band's" in out
    verdicts = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "/" in line.split()[0]}
    assert {"train/loss", "val/loss", "val/bpb"} <= set(verdicts)
    assert all("not comparable (another tokenizer)" in verdicts[name] for name in ("train/loss", "val/loss"))
    assert "not comparable" not in verdicts["val/bpb"]


def test_draw_writes_a_png_per_measured_band_and_refuses_a_file_that_is_no_band(recorded, tmp_path, capsys):
    draw_main([str(recorded[1] / "tiny.json"), "--out", str(tmp_path / "pngs")])
    assert (tmp_path / "pngs" / "tiny.png").read_bytes().startswith(b"\x89PNG")
    table = (tmp_path / "pngs" / "bands.md").read_text().splitlines()
    val = read_band(recorded[1] / "tiny.json")["metrics"]["val/loss"]
    row = next(line for line in table if line.startswith("| tiny | pretrain | 3 | val/loss |"))
    assert f"| {val['step'][-1]} | {val['mean'][-1]:.4f} | {val['sd'][-1]:.4f} |" in row
    (tmp_path / "bad.json").write_text('{"format": "tinystack-band/1"}')
    with pytest.raises(SystemExit) as exit_info:
        draw_main([str(tmp_path / "bad.json"), "--out", str(tmp_path / "pngs")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_band_without_a_tokenizer_matches_any():
    run = {"stage": "pretrain", "model.d_model": 32, "tokenizer": "abc"}
    assert differing(run, {"stage": "pretrain", "model.d_model": 32}) == []
    assert differing(run, {**run, "tokenizer": "abd"}) == ["tokenizer"]
    assert differing(run, {"stage": "pretrain", "model.d_model": 32, "train.schedule": "wsd"}) == ["train.schedule"]


def test_no_band_and_an_unmeasured_band_are_said_plainly(recorded, tmp_path, capsys):
    config, _, runs = recorded
    out = check(capsys, runs / "bands-tiny-s0", "--bands", str(tmp_path))
    assert "no band for this run: none of the same stage (pretrain)" in out and "python -m train.check.record" in out
    record_main(["--config", str(config), "--seeds", "0", "1", "--out", str(tmp_path / "gpu.json"), "--placeholder"])
    capsys.readouterr()
    assert read_band(tmp_path / "gpu.json")["status"] == "not measured yet"
    out = check(capsys, runs / "bands-tiny-s0", "--bands", str(tmp_path))
    assert "matches this run but is not measured yet; measure it with: python -m train.check.record" in out


@pytest.mark.parametrize("text", ["not json", '{"format": "tinystack-band/1", "status": NaN}',
                                  '{"format": "tinystack-band/1", "status": "measured", "keys": []}', "[1, 2]"])
def test_a_bad_band_file_is_one_line_and_exit_2(recorded, tmp_path, capsys, text):
    band = tmp_path / "bad.json"
    band.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        check_main(["--run", str(recorded[2] / "bands-tiny-s0"), "--band", str(band)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_a_folder_that_is_no_run_is_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_main([str(tmp_path)])
    assert exit_info.value.code == 2 and "not a run folder" in capsys.readouterr().err


def test_a_nonfinite_band_value_is_refused(recorded, tmp_path, capsys):
    band = json.loads((recorded[1] / "tiny.json").read_text())
    band["metrics"]["train/loss"]["mean"][0] = 12345.5
    (tmp_path / "inf.json").write_text(json.dumps(band).replace("12345.5", "1e999"))  # json reads it as inf
    with pytest.raises(SystemExit):
        check_main(["--run", str(recorded[2] / "bands-tiny-s0"), "--band", str(tmp_path / "inf.json")])
    assert "not a finite number" in capsys.readouterr().err


def test_the_verdicts_on_made_up_curves():
    stats = {"step": [0, 10, 20, 30], "mean": [8.0, 5.0, 4.0, 3.5], "sd": [0.05] * 4, "min": [7.9, 4.9, 3.9, 3.4],
             "max": [8.1, 5.1, 4.1, 3.6], "lo": [7.9, 4.9, 3.9, 3.4], "hi": [8.1, 5.1, 4.1, 3.6]}
    run = dict(zip(stats["step"], stats["mean"]))
    assert judge("val/loss", run, stats).startswith("inside the band")
    assert judge("val/loss", {**run, 20: 4.5, 30: 4.0}, stats).endswith("2 of 4 points outside, the last 2 in a row)")
    assert judge("val/loss", {**run, 10: 5.5, 20: 4.5, 30: 4.0}, stats).startswith("worse from step 10")
    low = {**run, 10: 4.5, 20: 3.5, 30: 3.0}
    assert judge("val/loss", low, stats).startswith("better from step 10")
    assert judge("train/rewards/margins", low, stats).startswith("worse from step 10")
    never_learned = {0: 8.0, 10: 7.9, 20: 7.8, 30: 7.7}  # far above the band, but never below the unigram line
    assert judge("val/loss", never_learned, stats, unigram=6.0).startswith("stuck at the unigram plateau")
    assert judge("val/loss", {0: 8.0, 10: 7.0, 20: 6.5, 30: 5.8}, stats, unigram=6.0).startswith("stuck at the")
    assert judge("val/loss", never_learned, stats).startswith("worse from step 10")  # no baseline logged
    assert judge("val/loss", {**run, 30: 9.0}, stats, unigram=6.0).startswith("diverged")  # went down, then up
    assert judge("val/loss", {**run, 20: float("nan")}, stats) == "diverged: nan at step 20"


def test_the_stage_and_its_keys_come_from_the_config_and_the_logged_names():
    values = {"model": {"d_model": 32}, "finetune": {"method": "lora", "lora": {"r": 8}}, "align": {"beta": 0.1}}
    assert recipe_keys(values, ["train/loss", "train/clip_fraction"])["stage"] == "rl"
    keys = recipe_keys(values, ["train/rewards/margins"])
    assert keys == {"stage": "preference", "model.d_model": 32, "finetune.method": "lora", "finetune.lora.r": 8,
                    "align.beta": 0.1}
    assert recipe_keys({"finetune": {"method": "full"}})["stage"] == "finetune"
    assert [stage_module(Path(f"configs/{c}.yaml"), None) for c in ("pretrain/demo", "finetune/full", "align/grpo",
                                                                      "align/kto")] == [
        "train", "finetune", "align.grpo", "align.dpo"]
