import random
import re

import pytest

from data.corpus import split_stories
from data.instruct import (
    STORY_PREFIX,
    InstructExample,
    derive_examples,
    from_instruct_record,
    has_dialogue,
    make_instruction,
    parse_header,
    sentences,
)

DIALOGUE_STORY = (
    'Tom had a red ball. He kicked the ball over the fence. "Oh no!" said Tom. '
    "His friend Sue found the ball in the garden.\nShe gave it back and they played until dinner."
)
PLAIN_STORY = "Once upon a time, a small dog lived near a quiet river. The dog loved chasing yellow butterflies."


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def test_split_stories():
    text = "First story.\n<|endoftext|>\n\n  Second story.\n<|endoftext|>\n  \n<|endoftext|>\n"
    assert split_stories(text) == ["First story.", "Second story."]


def test_make_instruction_is_deterministic_with_a_seed():
    a = make_instruction(DIALOGUE_STORY, random.Random(3))
    b = make_instruction(DIALOGUE_STORY, random.Random(3))
    assert a == b
    stories = [DIALOGUE_STORY, PLAIN_STORY] * 5
    assert derive_examples(stories, seed=7) == derive_examples(stories, seed=7)
    assert derive_examples(stories, seed=7) != derive_examples(stories, seed=8)


def test_header_format():
    ex = make_instruction(DIALOGUE_STORY, random.Random(0))
    lines = ex.prompt.split("\n")
    assert lines[0] == "Words: " + ", ".join(ex.words)
    assert lines[1] == "Features: Dialogue"
    assert lines[2] == "Random sentence: " + ex.sentence
    assert ex.prompt.endswith(STORY_PREFIX) and lines[3] == "Story:"
    assert ex.text == ex.prompt + ex.story and ex.story == DIALOGUE_STORY


def test_words_occur_in_the_story_and_are_content_words():
    for seed in range(10):
        ex = make_instruction(DIALOGUE_STORY, random.Random(seed))
        assert len(ex.words) == 3 and len(set(ex.words)) == 3
        for w in ex.words:
            assert w in _words(ex.story) and w.isalpha() and w.islower() and len(w) >= 3
            assert w not in {"tom", "the", "and", "said", "his"}


def test_sentence_is_a_sentence_of_the_story():
    ex = make_instruction(DIALOGUE_STORY, random.Random(1))
    assert ex.sentence in ex.story
    assert sentences(DIALOGUE_STORY)[2] == '"Oh no!" said Tom.'


def test_dialogue_feature_only_with_quotes():
    assert make_instruction(PLAIN_STORY, random.Random(0)).features == []
    assert "Features" not in make_instruction(PLAIN_STORY, random.Random(0)).prompt
    curly = PLAIN_STORY + " “Look!” said the dog."
    assert make_instruction(curly, random.Random(0)).features == ["Dialogue"]
    assert not has_dialogue("Tom’s dog didn’t bark.")


def test_parse_header_round_trip():
    for story in (DIALOGUE_STORY, PLAIN_STORY):
        ex = make_instruction(story, random.Random(5))
        info = parse_header(ex.prompt)
        assert info["words"] == ex.words
        assert info["features"] == ex.features
        assert info["sentence"] == ex.sentence


def test_parse_header_tolerates_missing_fields():
    assert parse_header("Story:\n") == {"words": [], "features": [], "sentence": "", "summary": ""}


def test_from_instruct_record():
    record = (
        "Summary: Sara and Ben play in the park and go home for hot cocoa.\n"
        "Features: Dialogue, Twist\n"
        "Words: quit, oak, gloomy\n"
        "Random sentence: They sat under the oak.\n"
        "Story: \n"
        'Sara and Ben liked to play in the park. "I want to quit," said Sara.\n'
        "They sat under the oak. It was gloomy, so they went home.\n"
        "<|endoftext|>"
    )
    ex = from_instruct_record(record)
    assert isinstance(ex, InstructExample)
    assert ex.words == ["quit", "oak", "gloomy"]
    assert ex.features == ["Dialogue", "Twist"]
    assert ex.sentence == "They sat under the oak."
    assert ex.summary.startswith("Sara and Ben play")
    assert ex.story.startswith("Sara and Ben liked") and ex.story.endswith("went home.")
    assert ex.prompt.endswith(STORY_PREFIX) and parse_header(ex.prompt)["words"] == ex.words


def test_from_instruct_record_tolerant():
    ex = from_instruct_record("Words: cat, hat\nStory: The cat sat on a hat.")
    assert ex.words == ["cat", "hat"] and ex.features == [] and ex.story == "The cat sat on a hat."
    with pytest.raises(ValueError, match="Story"):
        from_instruct_record("Words: cat, hat\n")


@pytest.mark.slow
def test_real_stories_sanity(tinystories_dir):
    text = (tinystories_dir / "train.txt").read_text(encoding="utf-8")
    stories = split_stories(text)[:200]
    assert len(stories) == 200
    examples = derive_examples(stories, seed=0)
    assert len(examples) == 200
    n_dialogue = 0
    for ex in examples:
        info = parse_header(ex.prompt)
        assert info["words"] == ex.words and info["sentence"] == ex.sentence
        assert len(ex.words) == 3 and all(w in _words(ex.story) for w in ex.words)
        assert ex.sentence in ex.story and "\n" not in ex.sentence
        n_dialogue += ex.features == ["Dialogue"]
    assert 0.2 < n_dialogue / 200 < 0.95  # about 60% of TinyStories have dialogue
