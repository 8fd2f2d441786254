"""Preference pairs: offline and on-policy construction, TRL-format JSONL, loading (JSONL and a datasets folder)."""

from __future__ import annotations

import json
import re

import pytest

from align.make_pairs import (
    COLUMNS,
    load_pairs,
    main,
    offline_pairs,
    on_policy_pairs,
    save_pairs,
    score,
    swap_words,
    unpair,
)
from align.rewards import word_inclusion
from data.corpus import DataError
from data.instruct import parse_header
from data.sft import instruct_examples
from data.words import word_forms
from train.rundir.load import load_run

WEIGHTS = {"word_inclusion": 2.0, "dialogue": 0.5, "finished": 0.25}


@pytest.fixture(scope="module")
def examples(tiny_corpus):
    return instruct_examples(str(tiny_corpus), seed=0)["train"][:60]


def test_offline_pairs_prefer_the_story_that_meets_the_header(examples):
    pairs = offline_pairs(examples, WEIGHTS, seed=0)
    assert len(pairs) > len(examples) // 2
    by_prompt = {ex.prompt: ex.story for ex in examples}
    for pair in pairs:
        assert pair["chosen"] == by_prompt[pair["prompt"]] and pair["rejected"] != pair["chosen"]
        assert score(pair["prompt"], pair["chosen"], WEIGHTS) > score(pair["prompt"], pair["rejected"], WEIGHTS)
    assert offline_pairs(examples, WEIGHTS, seed=0) == pairs  # deterministic given the seed


def test_swapped_pairs_differ_only_where_the_header_words_are(examples):
    assert swap_words("Tom played. Play now!", ["play"], ["jump"]) == "Tom jump. Jump now!"
    pairs = offline_pairs(examples, WEIGHTS, seed=0, rejected="swapped")
    assert len(pairs) > len(examples) // 2
    for pair in pairs:
        info = parse_header(pair["prompt"])
        assert word_inclusion(info, pair["rejected"]) < word_inclusion(info, pair["chosen"])
        assert len(pair["rejected"].split()) == len(pair["chosen"].split())  # one word for one word
    with pytest.raises(ValueError, match="unknown rejected kind"):
        offline_pairs(examples, WEIGHTS, rejected="nope")


def test_every_swapped_pair_is_a_minimal_pair_for_stories_of_varied_length(varied_corpus):
    examples = instruct_examples(str(varied_corpus), seed=0)["train"][:60]
    assert len({len(ex.story.split()) for ex in examples}) > 3  # the stories' lengths differ
    pairs = offline_pairs(examples, WEIGHTS, seed=0, rejected="swapped")
    assert len(pairs) > len(examples) // 2
    for pair in pairs:  # not another story (of another length) after the first example
        chosen, rejected = pair["chosen"].split(), pair["rejected"].split()
        assert len(rejected) == len(chosen)
        forms = {f for word in parse_header(pair["prompt"])["words"] for f in word_forms(word)}
        changed = [a for a, b in zip(chosen, rejected) if a != b]
        assert changed and all(re.sub(r"\W", "", a).lower() in forms for a in changed)


def test_jsonl_round_trip_and_datasets_folder(examples, tmp_path):
    pairs = offline_pairs(examples, WEIGHTS, seed=1)
    path = save_pairs(pairs, tmp_path / "pairs" / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(pairs) and all(list(row) == list(COLUMNS) for row in rows)
    assert all(isinstance(row[c], str) for row in rows for c in COLUMNS)
    assert load_pairs(path) == pairs
    assert load_pairs(tmp_path / "pairs") == pairs  # datasets.load_dataset on a local folder (the hub's code path)


@pytest.mark.parametrize("unpaired", [False, True])
def test_a_sampled_nul_character_is_dropped_so_the_file_reads_back(tmp_path, unpaired):
    """A byte-level model can sample the token of byte 0; the text readers refuse NUL, so the writer drops it."""
    pairs = [{"prompt": "Words: a\n", "chosen": "Once upon\0 a time.", "rejected": "\0Then the end."}]
    path = save_pairs(pairs, tmp_path / "pairs.jsonl", unpaired=unpaired)
    rows = load_pairs(path)
    texts = [row[c] for row in rows for c in row if isinstance(row[c], str)]
    assert "Once upon a time." in texts and "Then the end." in texts and not any("\0" in t for t in texts)


def test_bad_pairs_raise_data_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match="lacks string fields"):
        load_pairs(path)
    with pytest.raises(DataError, match="could not load preference pairs"):
        load_pairs(tmp_path / "missing-folder")
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    path.write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a JSON object"):
        load_pairs(path)
    path.write_text(good + "\n[1, 2]\n")
    with pytest.raises(DataError, match="row 1 lacks string fields"):
        load_pairs(path)
    path.write_text(good + "\n" + json.dumps({"prompt": " ", "chosen": "c", "rejected": "r"}) + "\n")
    with pytest.raises(DataError, match="row 1 has an empty prompt"):  # would train on one token
        load_pairs(path)


def test_on_policy_pairs_best_vs_worst_and_ties_skipped(tiny_sft_run, examples):
    _, tokenizer, model = load_run(tiny_sft_run[1])
    prompts = [ex.prompt for ex in examples[:6]]
    pairs = on_policy_pairs(model, tokenizer, prompts, WEIGHTS, k=4, max_new_tokens=12, seed=0)
    assert {p["prompt"] for p in pairs} <= set(prompts)
    for pair in pairs:
        assert score(pair["prompt"], pair["chosen"], WEIGHTS) > score(pair["prompt"], pair["rejected"], WEIGHTS)
    no_dialogue = [ex.prompt for ex in examples if "Dialogue" not in ex.features][:3]
    assert on_policy_pairs(model, tokenizer, no_dialogue, {"dialogue": 1.0}, k=3, max_new_tokens=4) == []  # all tie


def test_make_pairs_command_writes_jsonl(tiny_sft_run, tmp_path, capsys):
    out = tmp_path / "on_policy.jsonl"
    main(["--run", str(tiny_sft_run[1]), "--kind", "on_policy", "--n", "4", "--k", "3", "--max_new_tokens", "8",
          "--out", str(out)])
    assert "on_policy pairs from 4 prompts" in capsys.readouterr().out
    main(["--run", str(tiny_sft_run[1]), "--n", "30", "--out", str(tmp_path / "offline.jsonl")])
    assert len(load_pairs(tmp_path / "offline.jsonl")) > 10
    main(["--run", str(tiny_sft_run[1]), "--n", "30", "--rejected", "swapped", "--out", str(tmp_path / "s.jsonl")])
    assert len(load_pairs(tmp_path / "s.jsonl")) > 10
    main(["--run", str(tiny_sft_run[1]), "--n", "30", "--unpaired", "--out", str(tmp_path / "kto.jsonl")])
    rows = load_pairs(tmp_path / "kto.jsonl")  # KTO's format: each pair's chosen desirable, its rejected not
    assert rows == unpair(load_pairs(tmp_path / "offline.jsonl")) and [r["label"] for r in rows[:2]] == [True, False]
    main(["--run", str(tiny_sft_run[1]), "--n", "30", "--force", "--out", str(tmp_path / "kto.jsonl")])  # its kind
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path), "--out", str(out)])
    assert exit_info.value.code == 2


def test_a_bad_rewards_spec_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path), "--out", str(tmp_path / "p.jsonl"), "--rewards", "{length: {target: 3}}"])
    assert exit_info.value.code == 2
    assert "error: --rewards: length: unknown parameter(s) ['target']" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--rewards", "{length: [1"], "--rewards is not valid YAML"),
    (["--n", "0"], "--n=0: must be at least 1"),
])
def test_bad_arguments_exit_2_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path), "--out", str(tmp_path / "p.jsonl"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n=0: must be at least 1"),
    (["--rewards", "{a: [1"], "--rewards is not valid YAML"),
    (["--out", "."], "is a folder"),
])
def test_evaluate_refuses_bad_arguments_before_loading(tmp_path, capsys, args, message):
    from align.evaluate import main as evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate([f"model={tmp_path}", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
