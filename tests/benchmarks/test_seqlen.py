"""The sequence-length benchmark end to end at toy sizes: every mixer measured, JSON + Markdown + PNG written."""

from __future__ import annotations

import json

from benchmarks.seqlen import main
from model.mixers import MIXERS


def test_seqlen_benchmark_writes_results(tmp_path):
    out = tmp_path / "seqlen"
    main(["--device", "cpu", "--seq", "16,32", "--tokens", "64", "--d_model", "32", "--n_heads", "2",
          "--warmup", "0", "--repeats", "1", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert {r["seq_len"] for r in rows} == {16, 32} and {r["batch"] for r in rows} == {4, 2}
    labels = {r["mixer"] for r in rows}
    assert {"softmax (SDPA)", "gau (quadratic)", "gau (chunked)"} <= labels
    assert {name for name in MIXERS} <= {label.split(" ")[0] for label in labels}
    assert all(r["us_per_token"] > 0 and r["bytes_per_token"] > 0 for r in rows)
    table = out.with_suffix(".md").read_text()
    assert "| softmax (SDPA) | 1.00× | 1.00× |" in table
    assert out.with_suffix(".png").stat().st_size > 0
