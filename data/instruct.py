"""TinyStories-Instruct-style examples derived from plain stories (Eldan & Li 2023, arXiv:2305.07759, §2).

TinyStoriesInstruct prefixes each story with constraints the model must follow: a few words to use, story
features (Dialogue, Twist, BadEnding, ...), a summary and a sentence that must appear. Its records read

    Summary: ...            (fields in varying order)
    Features: Dialogue, Twist
    Words: quit, oak, gloomy
    Random sentence: ...
    Story:
    <the story>

We derive the same kind of header from a plain story (no model needed):

    Words: w1, w2, w3                       3 content words of the story, drawn by a seeded rng
    Features: Dialogue                      only when the story has quoted speech ("..." or “...”)
    Random sentence: <a sentence of the story>
    Story:
    <the story: the completion>

Prompt format (the contract with SFT, rewards and evaluation): the prompt is the header and ends with
``"Story:\\n"``, so the story starts on a fresh line as in the hub records; ``prompt + story`` is the
full training text (``InstructExample.text``). ``parse_header`` inverts ``format_header``.

Pure Python: no torch, no tokenizer, deterministic given a seed (``random.Random`` seeded by an int or
str is independent of hash randomisation; candidates keep first-occurrence order, never set order).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from data.corpus import EOT

STORY_PREFIX = "Story:\n"
FIELDS = ("Summary", "Features", "Words", "Random sentence", "Story")
N_WORDS = 3

STOPWORDS = frozenset(
    """
    the and but for nor yet not all any are was were been being has had have having does did doing done
    can could will would shall should may might must its his her hers him she they them their theirs you
    your yours our ours who whom whose what which that this these those there here then than when where
    why how with from into onto upon over under about after before again once off out too very just also
    some such each every both few more most other only own same said says say asked one two day time got
    get gets let lot lots back away down went going goes come came like liked likes want wanted wants saw
    see because while until still even much many little big really now yes okay always never ever soon
    around through something anything everything nothing someone everyone thing things named
    """.split()
)

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")
_DIALOGUE = re.compile(r"[\"“][^\"“”]+[\"”]")
_FIELD_LINE = re.compile(r"^(" + "|".join(FIELDS) + r"):[ \t]*(.*)$")


@dataclass
class InstructExample:
    prompt: str  # the header, ending with STORY_PREFIX ("Story:\n")
    story: str  # the completion
    words: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    sentence: str = ""
    summary: str = ""  # only from hub records; we cannot derive one without a model

    @property
    def text(self) -> str:
        return self.prompt + self.story


def has_dialogue(text: str) -> bool:
    """True when the text has quoted speech: a straight or curly quote pair around some text."""
    return _DIALOGUE.search(text) is not None


def content_words(story: str) -> list[str]:
    """Distinct candidate words in first-occurrence order: lowercase as written (so names and
    sentence-initial words are skipped), alphabetic, length >= 3, not a stopword."""
    words = (w for w in _WORD.findall(story) if w.isalpha() and w.islower() and len(w) >= 3)
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS))


def sentences(story: str) -> list[str]:
    """Split into sentences at . ! ? (plus closing quotes) followed by a capital or an opening quote (so
    ``"Oh no!" said Tom.`` stays whole); never inside a quotation or across lines."""
    out: list[str] = []
    for line in story.splitlines():
        start, in_quote = None, False
        spans = [m.span() for m in re.finditer(r"\S+", line)]
        tokens = [line[a:b] for a, b in spans]
        for i, token in enumerate(tokens):
            start = spans[i][0] if start is None else start
            for ch in token:
                if ch == '"':
                    in_quote = not in_quote
                elif ch == "“":
                    in_quote = True
                elif ch == "”":
                    in_quote = False
            next_starts = i + 1 == len(tokens) or tokens[i + 1][0].isupper() or tokens[i + 1][0] in '"“'
            if not in_quote and next_starts and re.search(r"[.!?][\"”’']*$", token):
                out.append(line[start : spans[i][1]])
                start = None
        if start is not None:
            out.append(line[start:].rstrip())
    return out


def format_header(words: list[str], features: list[str], sentence: str = "", summary: str = "") -> str:
    """Header lines (empty fields left out) ending with ``Story:\\n``."""
    lines = []
    if words:
        lines.append("Words: " + ", ".join(words))
    if features:
        lines.append("Features: " + ", ".join(features))
    if summary:
        lines.append("Summary: " + summary)
    if sentence:
        lines.append("Random sentence: " + sentence)
    return "\n".join(lines + [STORY_PREFIX])


def make_instruction(story: str, rng: random.Random) -> InstructExample:
    """Derive an instruction header for one story. Fewer than 3 words when the story has fewer candidates."""
    story = story.strip()
    if not story:
        raise ValueError("make_instruction needs a non-empty story")
    candidates = content_words(story)
    words = rng.sample(candidates, k=min(N_WORDS, len(candidates)))
    features = ["Dialogue"] if has_dialogue(story) else []
    sentence = rng.choice(sentences(story))
    return InstructExample(format_header(words, features, sentence), story, words, features, sentence)


def derive_examples(stories: list[str], seed: int) -> list[InstructExample]:
    """One example per non-empty story; story i uses its own rng seeded by (seed, i), so the result is
    deterministic and a story's header does not depend on the stories before it."""
    return [make_instruction(story, random.Random(f"{seed}:{i}")) for i, story in enumerate(stories) if story.strip()]


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_fields(text: str) -> dict[str, str]:
    """``Key: value`` lines for the keys in FIELDS, in any order (a field may also follow the story);
    unkeyed lines continue the previous field, so a multi-line story is kept whole."""
    fields: dict[str, list[str]] = {}
    key = None
    for line in text.replace(EOT, "").splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            key = match.group(1)
            fields[key] = [match.group(2)] if match.group(2).strip() else []
        elif key is not None:
            fields[key].append(line)
    return {k: "\n".join(v).strip() for k, v in fields.items()}


def parse_header(prompt: str) -> dict:
    """Invert ``format_header``: {"words": [...], "features": [...], "sentence": str, "summary": str}.
    Missing fields give empty values; text after ``Story:`` is ignored."""
    fields = _parse_fields(prompt)
    return {
        "words": _split_list(fields.get("Words", "")),
        "features": _split_list(fields.get("Features", "")),
        "sentence": fields.get("Random sentence", ""),
        "summary": fields.get("Summary", ""),
    }


def from_instruct_record(text: str) -> InstructExample:
    """Parse a roneneldan/TinyStoriesInstruct record (fields in any order, the story after ``Story:``)
    into an InstructExample whose prompt is rebuilt in our canonical header format."""
    fields = _parse_fields(text)
    story = fields.get("Story", "")
    if not story:
        raise ValueError("TinyStoriesInstruct record has no story after 'Story:'")
    info = parse_header(text)
    prompt = format_header(info["words"], info["features"], info["sentence"], info["summary"])
    return InstructExample(prompt, story, info["words"], info["features"], info["sentence"], info["summary"])
