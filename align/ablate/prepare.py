"""What an alignment sweep's runs share, prepared once in the sweep folder (align/ablate/sweep.py), resumably:

    pretrain/            the pretraining run, from `pretrain: {config, overrides}` (or the run given)
    sft/                 the SFT run on it, from `sft: {config, overrides}` (or the run given)
    pairs.jsonl          on-policy pairs from the SFT run (python -m align.make_pairs --kind on_policy, `pairs:`
                         its flags; or the file given), written under another name and renamed when complete
    pairs-unpaired.jsonl the same pairs as KTO's unpaired rows, when a variant trains kto

A finished run is reused (a folder from a different config is an error), an unfinished one resumed.
"""

from __future__ import annotations

from pathlib import Path

from inputs.yaml import read_yaml
from train.ablate.sweep import check_existing
from train.config import Config, ConfigError, load_config, merge, to_dict
from train.rundir.claim import config_difference, is_finished, runtime_keys


def prepare(source, sft, pairs, needs: set[str], sweep_dir: Path) -> tuple[Path, dict[str, str]]:
    """Train the pretraining and SFT runs and make the pairs (each once, in the sweep folder; finished ones are
    reused) -> (the SFT run, {"pairs": file, "unpaired": file} as needed)."""
    from align.make_pairs import load_pairs, save_pairs
    from align.make_pairs import main as make_pairs
    from finetune.config import finetune_config
    from finetune.sft import finetune
    from train.run import pretrain

    own = {"train": {"out_dir": str(sweep_dir), "resume": "auto"}}
    if isinstance(source, dict):
        cfg = load_config(source["config"], merge(source["overrides"], merge(own, {"train": {"name": "pretrain"}})))
        source = _train_once(cfg, pretrain)
    if isinstance(sft, dict):
        values = merge(merge(read_yaml(sft["config"]), sft["overrides"]), merge(own, {"train": {"name": "sft"}}))
        sft = _train_once(finetune_config(None, merge(values, {"finetune": {"base": str(source)}})), finetune)
    files = {}
    if needs & {"pairs", "unpaired"}:
        files["pairs"] = str(pairs) if isinstance(pairs, Path) else str(sweep_dir / "pairs.jsonl")
        if not Path(files["pairs"]).is_file():
            tmp = sweep_dir / "pairs.tmp.jsonl"
            tmp.unlink(missing_ok=True)
            make_pairs(["--run", str(sft), "--kind", "on_policy", "--out", str(tmp),
                        *(f"--{k}={v}" for k, v in pairs.items())])
            tmp.replace(files["pairs"])
    if "unpaired" in needs:
        files["unpaired"] = str(sweep_dir / "pairs-unpaired.jsonl")
        if not Path(files["unpaired"]).is_file():
            save_pairs(load_pairs(files["pairs"]), sweep_dir / "pairs-unpaired.tmp.jsonl", unpaired=True).replace(
                files["unpaired"])
    return sft, files


def _train_once(cfg: Config, train) -> Path:
    run_dir = check_existing(cfg)  # a folder from another config is an error
    if not is_finished(run_dir):
        print(f"training {run_dir}", flush=True)
        train(cfg)
    return run_dir


def check_run(cfg: Config, run_dir: Path) -> None:
    """A run folder from a different config is an error (reusing or resuming it would mix two runs); an aligned
    LoRA run records its merged reference as finetune.base, which is left out."""
    if (run_dir / "config.yaml").is_file():
        diff = config_difference(read_yaml(run_dir / "config.yaml", "run config"), to_dict(cfg),
                                 runtime_keys(cfg) | {"finetune.base"})
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({diff[0]}: {diff[1]!r} there, "
                              f"{diff[2]!r} now); remove it or pick another --train.out_dir")
