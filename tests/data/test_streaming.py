"""Streaming readers, data errors that name the file and line, and a token cache that heals itself."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import readers
from data.corpus import EOT, DataError, load_stories, open_corpus, sample_stories
from data.tokenizer import eot_id
from data.tokens import prepare_tokens


def write_txt(path, stories):
    path.write_text("".join(f"{s}\n{EOT}\n" for s in stories), encoding="utf-8")


def test_txt_is_read_in_chunks_across_separators(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK", 64)  # many chunks, separators cut at every position
    stories = [f"Story {i}: " + "word " * (i % 7) + "end." for i in range(60)]
    write_txt(tmp_path / "train.txt", stories + ["last story, no separator after it"])
    batches = list(open_corpus(str(tmp_path)).batches("train"))
    assert len(batches) > 10 and [s for b, _ in batches for s in b] == stories + ["last story, no separator after it"]
    assert sum(step for _, step in batches) == (tmp_path / "train.txt").stat().st_size


def test_parquet_and_jsonl_stream_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BATCH", 7)
    texts = [f"Parquet story {i}." for i in range(30)] + ["  ", None]
    pq.write_table(pa.table({"text": texts}), tmp_path / "train.parquet", row_group_size=10)
    (tmp_path / "valid.jsonl").write_text("\n".join(json.dumps({"text": f"Json story {i}."}) for i in range(20)))
    (tmp_path / "more.json").write_text(json.dumps([{"text": "A listed story."}, "A bare string story."]))
    stories = load_stories(str(tmp_path))
    assert stories["train"] == ["A listed story.", "A bare string story."] + texts[:30]  # files in name order
    assert len(stories["validation"]) == 20


def test_reservoir_sample_is_seeded_uniform_and_counts():
    batches = [([f"s{i}" for i in range(j, j + 10)], 10) for j in range(0, 1000, 10)]
    sample, n = sample_stories(iter(batches), 50, seed=1)
    assert n == 1000 and len(set(sample)) == 50 and sample == sample_stories(iter(batches), 50, seed=1)[0]
    assert np.mean([int(s[1:]) for s in sample]) == pytest.approx(500, abs=120)  # not just the first stories
    assert sample_stories(iter(batches), 0, limit=35)[1] == 35


@pytest.mark.parametrize("name, content, message", [
    ("train.txt", "Good story.\n" + EOT + "\nBad \xff byte.\n" + EOT, r"train\.txt:3: not UTF-8"),
    ("train.txt", b"\x7fELF\x02\x01\x00\x00binary", r"train\.txt:1: NUL byte"),
    ("train.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": broken\n', r"train\.jsonl:3: bad JSON line"),
    ("train.jsonl", '{"text": "ok"}\n{"story": "no text key"}\n', r"train\.jsonl:2: expected a JSON object"),
    ("train.parquet", pa.table({"text": [1, 2, 3]}), r"train\.parquet: column 'text' holds int64"),
    ("train.parquet", b"PAR1 not really parquet", r"train\.parquet: not a readable parquet"),
    ("train.txt", "  \n\n", "no training stories"),
])
def test_data_errors_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    with pytest.raises(DataError, match=message):
        prepare_tokens(str(tmp_path), 260, str(tmp_path / "cache"))


def test_cli_prints_data_error_on_one_line(tmp_path, capsys):
    from train.__main__ import main
    from train.cli import run_cli

    (tmp_path / "train.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"--data.path={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "train.jsonl:2: bad JSON line" in err


def _cache_files(cache, suffix):
    return sorted(p for p in cache.iterdir() if p.name.endswith(suffix))


def test_warm_start_reads_no_story(tiny_corpus, tmp_path, monkeypatch):
    tok, tokens = prepare_tokens(str(tiny_corpus), 300, str(tmp_path))
    monkeypatch.setattr(readers.TxtReader, "batches", lambda self: pytest.fail("warm start read the corpus"))
    tok2, tokens2 = prepare_tokens(str(tiny_corpus), 300, str(tmp_path))
    assert isinstance(tokens2["train"], np.memmap) and tokens2["train"].dtype == np.uint16
    assert np.array_equal(tokens["validation"], tokens2["validation"]) and tok.to_str() == tok2.to_str()


def test_truncated_tokens_and_corrupt_tokenizer_are_rebuilt(tiny_corpus, tmp_path):
    tok, tokens = prepare_tokens(str(tiny_corpus), 300, str(tmp_path))
    train = np.array(tokens["train"])
    bin_file = [p for p in _cache_files(tmp_path, ".bin") if ".train." in p.name][0]
    with bin_file.open("r+b") as f:
        f.truncate(bin_file.stat().st_size // 2)
    tok_file = [p for p in _cache_files(tmp_path, ".json") if p.name.startswith("tokenizer-")
                and not p.name.endswith(".meta.json")][0]
    tok_file.write_text(tok_file.read_text()[:100])
    stale = tmp_path / f"{bin_file.name}.tmp-{os.uname().nodename}-999999999"  # a writer that died
    stale.write_bytes(b"partial")
    tok2, tokens2 = prepare_tokens(str(tiny_corpus), 300, str(tmp_path))
    assert tok2.to_str() == tok.to_str() and np.array_equal(np.array(tokens2["train"]), train)
    assert not stale.exists() and not list(tmp_path.glob("*.tmp-*"))


def test_held_out_split_and_max_stories_match_load_stories(tmp_path):
    stories = [f"Story number {i}. The end." for i in range(50)]
    write_txt(tmp_path / "all.txt", stories)
    tok, tokens = prepare_tokens(str(tmp_path), 270, str(tmp_path / "cache"), val_fraction=0.1, max_stories=20)
    expected = load_stories(str(tmp_path), val_fraction=0.1, max_stories=20)
    for split, texts in expected.items():
        ids = np.array(tokens[split])
        assert (ids == eot_id(tok)).sum() == len(texts)
        assert tok.decode(ids.tolist()) == "".join(t for t in texts)  # EOT is a special token: skipped


def test_hub_split_is_streamed_and_keyed_by_fingerprint(tmp_path, monkeypatch):
    import datasets

    hub = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [f"Hub story {i}." for i in range(40)]}),
                                "validation": datasets.Dataset.from_dict({"text": ["Val story.", ""]})})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: hub)
    tok, tokens = prepare_tokens("someone/stories", 270, str(tmp_path), max_stories=10)
    assert (np.array(tokens["train"]) == eot_id(tok)).sum() == 10
    assert (np.array(tokens["validation"]) == eot_id(tok)).sum() == 1


def test_error_while_encoding_leaves_no_temp_file(tmp_path):
    write_txt(tmp_path / "train.txt", [f"Story {i}." for i in range(20)])
    (tmp_path / "valid.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')  # read only by the encoding pass
    with pytest.raises(DataError, match=r"valid\.jsonl:2: expected a JSON object"):
        prepare_tokens(str(tmp_path), 270, str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("*.tmp-*")) and not list((tmp_path / "cache").glob("*.bin"))
