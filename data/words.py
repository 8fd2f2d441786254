"""Required-word matching for instruction prompts ("Words: ball, run, happy"): which words a text uses.

A required word counts as used when the text contains it, or one of its simple inflections, as a whole word
(case-insensitive). Shared by SFT evaluation (finetune/evaluate.py), the word-inclusion reward
(align/rewards.py) and the swapped preference pairs (align/make_pairs.py), so they agree on what "used" means.

    inclusion(words, text) = |{w in words : some form of w occurs in text}| / |words|   (1 if no words)
"""

from __future__ import annotations

import re


def word_forms(word: str) -> list[str]:
    """The word and its simple inflections: +s, +es, +ed, +d, +ing; e-drop (dance -> dancing);
    y -> ies/ied (carry -> carries). Irregular forms and consonant doubling (run -> running) are not covered."""
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing"}
    if w.endswith("e"):
        forms.add(w[:-1] + "ing")
    if len(w) > 1 and w.endswith("y") and w[-2] not in "aeiou":
        forms |= {w[:-1] + "ies", w[:-1] + "ied"}
    return sorted(forms)


def word_pattern(word: str, inflections: bool = True) -> str:
    """A regular expression matching `word` (and its forms) as a whole word; use with re.IGNORECASE."""
    forms = word_forms(word) if inflections else [word.lower()]
    return r"\b(?:" + "|".join(map(re.escape, forms)) + r")\b"


def word_inclusion(words: list[str], text: str, inflections: bool = True) -> float:
    """Share of `words` that occur in `text` as whole words (1 if none are required)."""
    if not words:
        return 1.0
    found = sum(re.search(word_pattern(w, inflections), text, flags=re.IGNORECASE) is not None for w in words)
    return found / len(words)
