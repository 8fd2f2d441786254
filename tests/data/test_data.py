"""Corpus loading, tokenizer, token cache, packing and the resumable sharded order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.blocks import PackedBlocks, ResumableSampler
from data.corpus import EOT, DataError, load_stories
from data.tokenizer import eot_id, token_byte_lengths, train_tokenizer
from data.tokens import prepare_tokens


def test_local_txt_splits_on_separator(tiny_corpus):
    stories = load_stories(str(tiny_corpus))
    assert len(stories["train"]) == 400 and len(stories["validation"]) == 40
    assert stories["train"][0].startswith("Once upon a time") and EOT not in stories["train"][0]


def test_jsonl_and_held_out_fraction(tmp_path):
    rows = [{"text": f"Story number {i}. The end."} for i in range(50)]
    (tmp_path / "stories.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    stories = load_stories(str(tmp_path), val_fraction=0.1)
    assert len(stories["train"]) == 45 and stories["validation"][0] == "Story number 45. The end."


def test_missing_or_empty_corpus_says_how_to_fix(tmp_path):
    for path in [str(tmp_path / "nowhere"), str(tmp_path)]:
        with pytest.raises(DataError, match="data.path"):
            load_stories(path)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="no training stories"):
        load_stories(str(tmp_path))


def test_tokenizer_round_trip_and_special_token(tiny_corpus):
    stories = load_stories(str(tiny_corpus))["train"]
    tok = train_tokenizer(stories, 300)
    text = 'Lily said, "Hi!" — café 😀\n' + EOT
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids[-1] == eot_id(tok) == 0 and tok.get_vocab_size() == 300
    lengths = token_byte_lengths(tok)
    assert sum(lengths[i] for i in tok.encode("Lily had a ball.").ids) == len(b"Lily had a ball.")


def test_token_cache_is_reused(tiny_corpus, tmp_path):
    tok, tokens = prepare_tokens(str(tiny_corpus), 300, str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    tok2, tokens2 = prepare_tokens(str(tiny_corpus), 300, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # nothing rebuilt
    assert sum(f.endswith(".bin") for f in files) == 2 and sum(f.endswith(".meta.json") for f in files) == 3
    assert np.array_equal(tokens["train"], tokens2["train"]) and tok.to_str() == tok2.to_str()
    assert int(tokens["train"][-1]) == eot_id(tok)
    with pytest.raises(DataError, match="data.vocab_size"):
        prepare_tokens(str(tiny_corpus), 256, str(tmp_path), tokenizer=tok)


def test_packed_blocks_shift_targets():
    blocks = PackedBlocks(np.arange(21, dtype=np.uint16), seq_len=5)
    assert len(blocks) == 4
    x, y = blocks[1]
    assert x.tolist() == [5, 6, 7, 8, 9] and y.tolist() == [6, 7, 8, 9, 10]


def test_order_is_seeded_resumable_and_sharded():
    full = list(ResumableSampler(10, seed=3, start=0, total=25))
    assert sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]
    assert list(ResumableSampler(10, seed=3, start=0, total=25)) == full
    assert list(ResumableSampler(10, seed=4, start=0, total=25)) != full
    assert list(ResumableSampler(10, seed=3, start=7, total=25)) == full[7:]
    ranks = [list(ResumableSampler(10, 3, 0, 20, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0][:5] + ranks[1][:5]) == list(range(10))  # one epoch, no block twice
