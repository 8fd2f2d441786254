"""`benchmarks/throughput.py --loop` end to end at a toy shape: the stack's Lightning step and the plain loop are
both measured, alternating, and the JSON + Markdown carry the fields (no timing assertions)."""

from __future__ import annotations

import json

from benchmarks.throughput import main


def test_loop_benchmark_writes_results(tmp_path):
    out = tmp_path / "loop"
    main(["--loop", "--device", "cpu", "--shape", "custom", "--d_model", "32", "--n_layers", "1", "--n_heads", "2",
          "--seq", "16", "--vocab", "64", "--batch", "2", "--steps", "3", "--warmup", "1", "--threads", "1",
          "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    settings, rows = data["settings"], data["results"]
    assert settings["mode"] == "loop" and settings["steps"] == 3 and settings["cpu_threads"] == 1
    assert [r["model"] for r in rows] == ["stack", "plain"]
    for r in rows:
        assert r["batch"] == 2 and r["seq"] == 16 and r["vocab"] == 64 and r["precision"] == "32"
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["step_ms_median"] > 0
        assert len(r["step_ms_all"]) == 3 and r["first_loss"] > 0
    assert rows[0]["params"] == rows[1]["params"]
    assert rows[0]["ratio_vs_plain"] > 0 and rows[0]["ratio_vs_plain_median"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| stack |" in table and "| plain |" in table


def test_loop_benchmark_reads_a_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {d_model: 32, n_layers: 1, n_heads: 2}\ndata: {vocab_size: 64, seq_len: 16}\n"
                      "train: {batch_size: 2, log_every: 2}\nlog: {wandb: false}\n")
    out = tmp_path / "loop"
    main(["--loop", "--device", "cpu", "--config", str(config), "--steps", "2", "--warmup", "0", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert rows[0]["shape"] == str(config) and rows[0]["batch"] == 2 and rows[0]["seq"] == 16
