"""Fuzzing sweep files (and a leftover run folder's config.yaml) through `python -m train.ablate`, in-process. The
sweep is read, every run's config built and parameter-matched, and each run folder checked against what is already
there (`check_existing`); `run_sweep` stops there, before any training. Every example: success, or exit 2 in one
line; no traceback, no hang, no byte changed in the session's finished runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fuzzing import Tally, check_outcome, fuzz_settings, run_entry, tree_digest
from hypothesis import given
from hypothesis import strategies as st
from mutations import yaml_documents
from toy_inputs import LONG, link_inputs, toy_config

VALID = {
    "base": "base.yaml",
    "overrides": {"train": {"max_steps": 4}},
    "seeds": [0, 1],
    "lrs": [1.0e-3, 3.0e-3],
    "match": "params",
    "jobs": 1,
    "threads": 1,
    "variants": {"softmax": {}, "linear": {"model.mixer": "linear"}},
}
CURATED = {("base",): ["base.yaml", "", "special/fifo.yaml", "special/dir.yaml", "special/zero.yaml", "missing.yaml"],
           ("name",): ["fuzz", "", "..", "a/b", LONG]}
WHERE = st.sampled_from(["file"] * 8 + ["special/fifo.yaml", "special/dir.yaml", "missing.yaml"])


@pytest.fixture
def checks_only(monkeypatch):
    """run_sweep reduced to its checks of the run folders (no training)."""
    import train.ablate.sweep as sweep

    def check_runs(sweep_values, configs, widths) -> str:
        for runs in configs.values():
            for cfg in runs.values():
                sweep.check_existing(cfg)
        return ""

    monkeypatch.setattr(sweep, "run_sweep", check_runs)


def test_fuzz_sweep_files(tiny_corpus, tiny_sft_run, checks_only, capsys):
    from train.ablate.sweep import main

    base = tiny_sft_run[0]
    base_config, _ = toy_config(base)
    tally, before = Tally("sweep files"), tree_digest(base)
    leftover = st.none() | yaml_documents(base_config)

    @fuzz_settings(examples=300)
    @given(doc=yaml_documents(VALID, CURATED), old=leftover, where=WHERE)
    def property_(doc, old, where):
        kind, data = doc

        def call(work: Path) -> None:
            link_inputs(work, tiny_corpus, base)
            (work / "base.yaml").write_text(yaml.safe_dump(base_config))
            (work / "sweep.yaml").write_bytes(data)
            if old is not None:  # a run folder left by an earlier sweep, whose config.yaml is damaged
                (work / "runs" / "ablate-sweep" / "softmax-lr0.001-s0").mkdir(parents=True)
                (work / "runs" / "ablate-sweep" / "softmax-lr0.001-s0" / "config.yaml").write_bytes(old[1])
            main(["--config", str(work / "sweep.yaml") if where == "file" else where])

        tally.add(check_outcome(*run_entry(call)), kind, data, old, where)
        assert tree_digest(base) == before

    property_()
    tally.report(capsys)
