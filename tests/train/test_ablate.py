"""The ablation runner: a sweep end to end (2 variants x 2 seeds, plus one that halts), parameter matching, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import tiny_train_overrides

import train.run
from train.ablate.param_match import count_non_embedding, match_params
from train.ablate.sweep import build_configs, load_sweep, main
from train.errors import TrainingHalted


def write_sweep(tmp_path: Path, corpus: Path, variants: dict, **top) -> Path:
    base = tiny_train_overrides(corpus, tmp_path, **{"train.max_steps": 2, "train.val_every": 1,
                                                     "train.val_batches": 1, "train.num_samples": 0})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": "base.yaml", "seeds": [0, 1], "jobs": 1, "variants": variants, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_sweep_writes_results_for_every_variant(tiny_corpus, tmp_path, capsys, monkeypatch):
    variants = {"softmax": {"model.mixer": "softmax"}, "linear": {"model.mixer": "linear"},
                "diverged": {"model.dropout": 0.5}}
    path = write_sweep(tmp_path, tiny_corpus, variants)

    def pretrain(cfg, real=train.run.pretrain):  # "diverged" halts on NaN losses without training
        if cfg.train.name.startswith("diverged"):
            raise TrainingHalted("loss was nan for 5 steps in a row")
        return real(cfg)

    monkeypatch.setattr(train.run, "pretrain", pretrain)
    main(["--config", str(path)])
    sweep_dir = tmp_path / "ablate-sweep"
    assert sorted(p.name for p in sweep_dir.glob("[ls]*-s*")) == ["linear-s0", "linear-s1", "softmax-s0", "softmax-s1"]
    with (sweep_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["softmax", "linear", "diverged"]
    out, err = capsys.readouterr()
    assert math.isnan(float(rows[2]["test_loss_mean"])) and "diverged-s0 halted" in err
    for row in rows[:2]:
        assert row["seeds"] == "2" and float(row["test_loss_mean"]) > 0 and float(row["test_loss_std"]) > 0
        assert float(row["tokens_per_s"]) > 0 and int(row["params"]) > 0
    assert (sweep_dir / "val_loss.png").stat().st_size > 0
    splits = json.loads((sweep_dir / "softmax-s0" / "ablate.json").read_text())["splits"]
    assert set(splits) == {"test"}  # no lr to choose: the selection half is not scored
    table = (sweep_dir / "results.md").read_text()
    assert "| softmax |" in table and "| linear |" in table and table in out
    main(["--config", str(path)])  # a second call reuses the finished runs
    assert len(list(sweep_dir.glob("*-s*"))) == 6
    saved = sweep_dir / "softmax-s0" / "config.yaml"  # a run made before an option existed: it had the default
    values = yaml.safe_load(saved.read_text())
    assert values["model"].pop("fox")["gate_bias"] == 0.0
    saved.write_text(yaml.safe_dump(values))
    main(["--config", str(path)])
    with pytest.raises(SystemExit) as exc:  # ... but a new non-default value of that option is another config
        main(["--config", str(path), "--model.fox.gate_bias=1.0"])
    assert exc.value.code == 2 and "different config (model.fox.gate_bias: None there" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # ... but never mixes them with runs of another config
        main(["--config", str(path), "--train.lr=0.01"])
    assert exc.value.code == 2 and "different config (train.lr" in capsys.readouterr().err


def test_match_params_lands_within_two_percent(tiny_corpus, tmp_path):
    variants = {"swiglu": {"model.ffn": "swiglu"}, "gelu": {"model.ffn": "gelu"},
                "gau": {"model.mixer": "gau", "model.ffn": "none"},
                "mamba": {"model.mixer": "mamba", "model.ffn": "none"},
                "moe": {"model.ffn": "moe"}, "hybrid": {"model.mixer": ["mamba", "softmax"]}}
    configs = build_configs(*load_sweep(str(write_sweep(tmp_path, tiny_corpus, variants)), []))
    before = {name: count_non_embedding(next(iter(runs.values()))) for name, runs in configs.items()}
    widths = match_params(configs)
    target = before["swiglu"]
    assert widths["gau"].startswith("gau.hidden=") and widths["mamba"].startswith("mamba.d_inner=")
    assert widths["gelu"].startswith("d_ff=") and widths["swiglu"] == ""
    for name, runs in configs.items():
        assert abs(before[name] - target) > 0.02 * target or name in ("swiglu", "gelu")
        for run in runs.values():
            assert count_non_embedding(run) == pytest.approx(target, rel=0.02), name


@pytest.mark.parametrize("variant, cli, message", [
    ({"model.mixr": "linear"}, [], "model.mixr"),
    ({"model.mixer": "sofmax"}, [], "valid choices"),
    ({"train.max_steps": 3}, [], "token budget"),
    ({"model.mixer": "linear"}, ["--model.mixer=gau"], "command line"),
    ({"train.seed": 3}, [], "set by the sweep"),
])
def test_bad_variant_exits_2_before_training(tiny_corpus, tmp_path, capsys, variant, cli, message):
    path = write_sweep(tmp_path, tiny_corpus, {"reference": {}, "bad": variant})
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(path), *cli])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "'bad'" in err
    assert not (tmp_path / "ablate-sweep").exists()


def test_match_flops_equalises_training_flops_per_token(tiny_corpus, tmp_path):
    """Matching by compute: FLOPs per token (6 N + each mixer's own term) land within 2% of the reference's,
    and they differ from matching by parameters (softmax's attention FLOPs grow with T, Mamba's scan does not)."""
    from train.ablate.param_match import count_flops

    variants = {"softmax": {"model.mixer": "softmax"}, "mamba": {"model.mixer": "mamba", "model.ffn": "none"},
                "linear": {"model.mixer": "linear"}}
    by_flops = build_configs(*load_sweep(str(write_sweep(tmp_path, tiny_corpus, variants, match="flops")), []))
    by_params = build_configs(*load_sweep(str(write_sweep(tmp_path, tiny_corpus, variants)), []))
    flops_widths, param_widths = match_params(by_flops, by="flops"), match_params(by_params)
    target = count_flops(next(iter(by_flops["softmax"].values())))
    for name in variants:
        assert count_flops(next(iter(by_flops[name].values()))) == pytest.approx(target, rel=0.02), name
    assert flops_widths["mamba"] != param_widths["mamba"]


def test_results_table_shows_flops_per_token(tiny_corpus, tmp_path):
    path = write_sweep(tmp_path, tiny_corpus, {"softmax": {}, "gelu": {"model.ffn": "gelu"}}, match="flops",
                       seeds=[0])
    main(["--config", str(path)])
    table = (tmp_path / "ablate-sweep" / "results.md").read_text()
    assert "MFLOPs/token" in table and "match: flops" in table
    with (tmp_path / "ablate-sweep" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["flops_per_token"]) == pytest.approx(float(rows[0]["flops_per_token"]), rel=0.02)


@pytest.mark.parametrize("path", sorted(p for p in (Path(__file__).parents[2] / "configs" / "ablations").glob("*.yaml")
                                        if p.stem != "align"),  # alignment: tests/align/test_ablate_align.py
                         ids=lambda p: p.stem)
def test_shipped_ablation_files_build_and_match(path):
    """Every shipped sweep validates, has >= 3 seeds, and its variants match (what `match:` asks) up front."""
    sweep, cli = load_sweep(str(path), [])
    configs = build_configs(sweep, cli)
    assert len(sweep["seeds"]) >= 3 and len(configs) >= 2
    if sweep["match"] != "none":
        match_params(configs, by=sweep["match"])
